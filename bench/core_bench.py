"""Benchmark of the pure core: policy matching and reconcile at scale.

A report, never an assertion: run ``.venv/bin/python bench/core_bench.py [--json FILE]``
(the JSON feeds bench/performance.py).
Figures are medians over repeated runs, with ratios against a baseline
measured in the same run (a typical desk: 10 devices, 10 rules).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from phyllod.core.model import Device, Guest, GuestState, Hostdev, Subsystem
from phyllod.core.plan import World
from phyllod.core.policy import Policy, Rule
from phyllod.core.policy_parser import parse_policy_text
from phyllod.core.reconcile import reconcile
from phyllod.core.replan import replan


def devices(n: int, rng: random.Random) -> list[Device]:
    out = []
    for i in range(n):
        bus, port = 1 + i // 100, f"{1 + (i % 100) // 10}.{1 + i % 10}"
        out.append(Device(subsystem=Subsystem.USB, sys_path=f"/sys/x/{i}", port=f"{bus}-{port}",
                          busnum=bus,
                          devnum=2 + i % 100, vendor=f"{rng.randrange(0x10000):04x}",
                          product=f"{rng.randrange(0x10000):04x}", serial=f"S{i:06d}",
                          interface_classes=(rng.choice(["030101", "e00101", "080650"]),)))
    return out


def policy(n_rules: int, devs: list[Device], guests: int, rng: random.Random) -> Policy:
    """Rules that mostly miss (the costly case), a few per-serial hits at the end."""
    text = []
    for i in range(n_rules):
        if i < n_rules * 0.9:
            vendor, product = rng.randrange(0x10000), rng.randrange(0x10000)
            key = f'vendor = "{vendor:04x}", product = "{product:04x}"'
        else:
            key = f'serial = "{rng.choice(devs).serial}"'
        text.append(f'[[rule]]\nname = "r{i}"\nmatch = {{ {key} }}\n'
                    f'guest = "g{i % guests}"\n')
    content, problems = parse_policy_text("\n".join(text), "bench.toml")
    assert not problems
    return Policy(content.rules)


def linear_match(p: Policy, device: Device) -> Rule | None:
    """Policy.match as it was before the rule index: every rule in turn (the baseline)."""
    return next((rule for rule in p.rules if rule.match.matches(device)), None)


def world(devs: list[Device], n_guests: int, held_every: int) -> World:
    guests = {}
    for g in range(n_guests):
        hostdevs = tuple(Hostdev(alias=d.alias, vendor=d.vendor, product=d.product, bus=d.busnum,
                                 device=d.devnum)
                         for i, d in enumerate(devs) if i % held_every == 0 and i % n_guests == g)
        guests[f"g{g}"] = Guest(name=f"g{g}", uuid=f"uuid-{g}", state=GuestState.RUNNING,
                                hostdevs=hostdevs)
    return World(devices={d.id: d for d in devs}, guests=guests)


def median_seconds(fn: Callable[[], object], repeat: int = 21) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the figures here (seconds)")
    args = parser.parse_args()
    rng = random.Random(7)
    big_devs = devices(1000, rng)
    big_policy = policy(200, big_devs, 20, rng)
    big_world = world(big_devs, 20, held_every=10)
    desk_devs = devices(10, rng)
    desk_policy = policy(10, desk_devs, 3, rng)
    desk_world = world(desk_devs, 3, held_every=3)

    desk = median_seconds(lambda: reconcile(desk_policy, desk_world), repeat=201)
    match = median_seconds(lambda: [big_policy.match(d) for d in big_devs])
    linear = median_seconds(lambda: [linear_match(big_policy, d) for d in big_devs])
    build = median_seconds(lambda: Policy(big_policy.rules))
    full = median_seconds(lambda: reconcile(big_policy, big_world))
    print("phyllod core benchmark (medians; one event = one full reconcile, level-triggered)")
    print(f"  baseline, desk reconcile (10 devices x 10 rules): {desk * 1e6:9.1f} us")
    print(f"  policy match only, 1,000 devices x 200 rules:     {match * 1e3:9.2f} ms"
          f"  = {1000 / match:,.0f} decisions/s")
    print(f"  the same, trying every rule in turn (the old way): {linear * 1e3:9.2f} ms"
          f"  = {1000 / linear:,.0f} decisions/s; indexed is {linear / match:,.1f}x faster")
    print(f"  building a 200-rule policy's index (once a load):  {build * 1e6:9.1f} us")
    print(f"  reconcile, 1,000 devices x 200 rules, 20 guests:  {full * 1e3:9.2f} ms"
          f"  = {1000 / full:,.0f} decisions/s")
    print(f"  one event's reconcile at that scale / desk baseline: {full / desk:,.0f}x;"
          f" reconcile / match: {full / match:.2f}x")
    plugged, unplugged = incremental(big_policy, big_world, big_devs, rng)
    print(f"  one plug event, incremental, 1,000 x 200 x 20:  {plugged * 1e3:9.3f} ms plugged,"
          f" {unplugged * 1e3:.3f} ms unplugged = {plugged / full:.4f}x, {unplugged / full:.4f}x"
          " the full reconcile")
    if args.json:
        args.json.write_text(json.dumps({
            "bench": "core", "scale": {"devices": 1000, "rules": 200, "guests": 20},
            "median_s": {"desk_reconcile": desk, "match_1000": match,
                         "linear_match_1000": linear, "index_build": build,
                         "full_reconcile": full, "replan_plugged": plugged,
                         "replan_unplugged": unplugged},
            "decisions_per_s": {"indexed": 1000 / match, "linear": 1000 / linear}}, indent=1))


def incremental(p: Policy, big: World, devs: list[Device], rng: random.Random
                ) -> tuple[float, float]:
    """One event as the daemon's loop takes it (core/replan after the last turn's plan):
    a device no rule matches plugged into a port in the middle of the id order, and a
    device a guest holds unplugged (its hostdev is then stale: one detach)."""
    last = replan(None, p, big)
    new = replace(devices(1, rng)[0], sys_path="/sys/x/new", port="5-11.1", busnum=5,
                  devnum=120)
    plugged = replace(big, devices={**big.devices, new.id: new}, now=1.0,
                      inserted=frozenset({new.id}))
    held = devs[500]
    assert any(h.alias == held.alias for g in (big.guests or {}).values() for h in g.hostdevs)
    unplugged = replace(big, devices={i: d for i, d in big.devices.items() if i != held.id},
                        now=1.0)
    for w in (plugged, unplugged):
        assert replan(last, p, w).plan == reconcile(p, w), "replan must agree with reconcile"
    return (median_seconds(lambda: replan(last, p, plugged), repeat=201),
            median_seconds(lambda: replan(last, p, unplugged), repeat=201))


if __name__ == "__main__":
    main()
