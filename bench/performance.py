"""The performance report: run the benches (or read their JSON), write docs/performance.md.

    flock /work/heavy.lock .venv/bin/python bench/performance.py --out DIR      # run all
    .venv/bin/python bench/performance.py --from DIR                           # reread
    .venv/bin/python bench/performance.py --out DIR --skip lab --skip dbus     # a subset

Every figure of issue 18 ("Faster than the script") is a row: the baseline
the issue measured before the work, the figure now, its goal, and the ratio;
where a bench measures its own baseline in the same run (the udev + virsh
script, a bare libvirt call, the old linear match), that is beside it. The
figures come only from the benches' ``--json`` files (every sample, so the
plot and the medians are the same run's), never typed in: a bench not run
is a row saying so. The plot (docs/performance-latency.svg) is drawn here,
by hand, in SVG: no plotting library is needed for dots and medians.

Run the benches under the heavy lock, not this script's children: a child
taking the lock the parent holds would wait forever.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "performance.md"
PLOT = ROOT / "docs" / "performance-latency.svg"
sys.path.insert(0, str(Path(__file__).parent))

from performance_plot import latency_svg  # noqa: E402

#: name → (command line after the interpreter, runs under umockdev-wrapper). Each
#: takes ``--json FILE``, but memory_bench prints its JSON list (``--json``) to stdout.
STDOUT_JSON = frozenset({"memory"})
BENCHES: dict[str, tuple[list[str], bool]] = {
    "core": (["bench/core_bench.py"], False),
    "dbus": (["bench/dbus_bench.py"], True),
    "share": (["bench/share_bench.py"], True),
    "memory": (["bench/memory_bench.py"], True),
    "lab": (["bench/lab_latency.py", "--plugs", "10"], False),
}

#: What issue 18 measured before the work (its text), by row.
ISSUE = {
    "plug": "2218 / 1445 ms = 1.53x", "unplug": "1625 / 1069 ms = 1.52x",
    "lab_share": "845 ms of 2218 (38%)", "share": "845 ms in the lab (none in this tier)",
    "event": "32 ms (a full reconcile)", "match": "39k decisions/s",
    "gmo": "50 ms", "idle": "0 /s (test driver)", "memory": "anonymous 20.6 MiB idle",
}


def run(names: list[str], out: Path) -> dict[str, int]:
    """Run each bench with ``--json OUT/NAME.json``; its exit code by name."""
    codes = {}
    wrapper = shutil.which("umockdev-wrapper")
    for name in names:
        argv, wrapped = BENCHES[name]
        if not (ROOT / argv[0]).exists():
            print(f"performance: {argv[0]} is not in this checkout; its rows say so")
            continue
        target = out / f"{name}.json"
        cmd = [sys.executable, *argv, "--json"]
        if name not in STDOUT_JSON:
            cmd.append(str(target))
        if wrapped and wrapper:
            cmd = [wrapper, *cmd]
        print(f"performance: running {' '.join(argv)}", flush=True)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p))
        if name in STDOUT_JSON:
            done = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
            if done.returncode == 0:
                target.write_text(done.stdout)
        else:
            done = subprocess.run(cmd, cwd=ROOT, env=env)
        codes[name] = done.returncode
    return codes


def load(out: Path) -> dict[str, dict]:
    found = {}
    for name in BENCHES:
        path = out / f"{name}.json"
        if path.exists():
            found[name] = json.loads(path.read_text())
    return found


def machine(shared: bool) -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "?")
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal:")), 0)
    load_avg = os.getloadavg()[0]
    note = (" The machine was shared with other work during the run (load average "
            f"{load_avg:.2f} when the report was written), so absolute figures carry that "
            "noise; the ratios were taken in one run, interleaved, where both sides bore it."
            if shared else "")
    return (f"{cpu}, {os.cpu_count()} CPUs, {mem / 1024 / 1024:.1f} GiB, Linux "
            f"{platform.release()}, Python {platform.python_version()}.{note}")


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip()
    head = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{head}{' (with uncommitted changes)' if dirty else ''}"


def med(values: list[float]) -> float:
    return statistics.median(values)


def verdict(ok: bool | None) -> str:
    return {True: "met", False: "**not met**", None: "-"}[ok]


def lab_rows(lab: dict | None) -> list[list[str]]:
    if lab is None:
        return [[f, ISSUE[k], "not run", g, "-", "-"] for f, k, g in (
            ("Plug → live in L2, phyllod / script", "plug", "≤ 0.7x"),
            ("Unplug → released, phyllod / script", "unplug", "≤ 0.5x"),
            ("phyllod's share of the plug, lab", "lab_share", "≤ 5%"))]
    s = lab["samples"]
    rows = []
    for label, key, kind, goal in (("Plug → live in L2", "plug", "add_s", 0.7),
                                   ("Unplug → released", "unplug", "del_s", 0.5)):
        p, b = med(s[kind]["phyllod"]), med(s[kind]["baseline"])
        rows.append([f"{label}, phyllod / script (medians, {lab['plugs']} plugs each)",
                     ISSUE[key], f"{p * 1e3:.0f} / {b * 1e3:.0f} ms = {p / b:.2f}x",
                     f"≤ {goal}x", f"{(p / b) / 1.53:.2f}x" if key == "plug"
                     else f"{(p / b) / 1.52:.2f}x", verdict(p / b <= goal)])
    issued, add = s["phyllod_received_to_issued_s"], s["add_s"]["phyllod"]
    if issued:
        share = med(issued) / med(add)
        rows.append(["phyllod's share of the plug, lab (journal: plug taken → call issued)",
                     ISSUE["lab_share"], f"{med(issued) * 1e3:.0f} ms of {med(add) * 1e3:.0f}"
                     f" ({share:.1%})", "≤ 5%", f"{med(issued) / 0.845:.2f}x",
                     verdict(share <= 0.05)])
    return rows


def share_rows(share: dict | None) -> list[list[str]]:
    if share is None:
        return [["phyllod's share at desk scale, integration tier (p50)", ISSUE["share"],
                 "not run", "≤ 2 ms", "-", "-"],
                ["Idle wake-ups, real libvirtd", ISSUE["idle"], "not run", "measured",
                 "-", "-"]]
    m = share["summary"]
    p50, floor = m["share"]["median_ms"], m["floor"]["median_ms"]
    idle = share["idle"]
    threads = ", ".join(f"{k}: {v}" for k, v in idle["wakeups_by_thread"].items())
    return [
        [f"phyllod's share at desk scale ({share['desk_devices'] + 1} devices, "
         f"{share['rules']} rules, {share['plugs']} plugs): udev received → "
         "attachDeviceFlags issued, p50 (p90)", ISSUE["share"],
         f"{p50:.2f} ms ({m['share']['p90_ms']:.2f})", "≤ 2 ms", "-", verdict(p50 <= 2.0)],
        ["  of which the loop's own (received → step handed to libvirt's worker)", "",
         f"{m['step']['median_ms']:.2f} ms ({m['step']['p90_ms']:.2f})", "", "", ""],
        ["  the floor: a bare attachDeviceFlags on an open connection, same run", "",
         f"{floor:.2f} ms ({m['floor']['p90_ms']:.2f})", "", f"share = {p50 / floor:.1f}x "
         "the floor", ""],
        ["  phyllod's own attachDeviceFlags, issued → returned", "",
         f"{m['call']['median_ms']:.2f} ms ({m['call']['p90_ms']:.2f})", "", "", ""],
        ["  host facts reads per plug; loop turns up to the call", "at most 1 (the issue's guard)",
         f"{sorted(set(share['facts_reads_per_plug']))}; "
         f"{sorted(set(share['turns_before_issue']))}", "≤ 1 read", "",
         verdict(max(share["facts_reads_per_plug"], default=0) <= 1)],
        [f"Idle wake-ups against a real libvirtd ({idle['seconds']:.0f} s, by thread)",
         ISSUE["idle"], f"{idle['per_second']:.2f} /s ({threads}; {idle.get('cpu_ticks', '?')} CPU "
         "ticks)", "measured (keepalive)", "-", "-"],
        *[[f"  the same run, the tree {b['tree']} (from its {b['source']}"
            + (", at the log's ms resolution, without the udev translation)" if b["source"] ==
               "log" else ")"), "", f"{b['summary']['share']['median_ms']:.2f} ms "
            f"({b['summary']['share']['p90_ms']:.2f}); idle {b['idle']['per_second']:.2f} /s",
            "≤ 2 ms", "", verdict(b["summary"]["share"]["median_ms"] <= 2.0)]
          for b in share.get("baselines", []) if b["summary"].get("share")],
        ["Idle wake-ups on the test driver", ISSUE["idle"], "0 (tests/integration/"
         "test_idle.py asserts it, every run)", "0 /s", "-", "met while that test passes"],
        ["trace.point with PHYLLOD_TRACE unset, ns a call (an empty function beside it)", "",
         f"{share['trace_unset_ns_per_call']['trace_point']:.0f} "
         f"({share['trace_unset_ns_per_call']['empty_function']:.0f})", "no extra work", "",
         ""],
    ]


def core_rows(core: dict | None) -> list[list[str]]:
    if core is None:
        return [["One event at 1,000 devices x 200 rules x 20 guests", ISSUE["event"],
                 "not run", "≤ 1 ms", "-", "-"],
                ["Policy matching at that scale", ISSUE["match"], "not run", "≥ 100k/s",
                 "-", "-"]]
    m, d = core["median_s"], core["decisions_per_s"]
    plugged = m["replan_plugged"] * 1e3
    return [
        ["One event at 1,000 devices x 200 rules x 20 guests (replan, a plug; unplug)",
         ISSUE["event"], f"{plugged:.3f} ms; {m['replan_unplugged'] * 1e3:.3f} ms "
         f"(full reconcile in this run: {m['full_reconcile'] * 1e3:.1f} ms)", "≤ 1 ms",
         f"{plugged / 32:.3f}x", verdict(plugged <= 1.0)],
        ["Policy matching at that scale (old linear match in this run)", ISSUE["match"],
         f"{d['indexed'] / 1e3:.0f}k/s ({d['linear'] / 1e3:.0f}k/s)", "≥ 100k/s",
         f"{d['indexed'] / 39e3:.1f}x", verdict(d["indexed"] >= 100e3)],
    ]


def dbus_rows(dbus: dict | None) -> list[list[str]]:
    """GetManagedObjects as a dbus-fast client gets it (the issue's measure), then at the
    socket (the bus and phyllod, nothing unmarshalled: the goal's figure, since what
    a client adds is its own parsing) and as GLib's GDBus gets it."""
    if dbus is None:
        return [["GetManagedObjects, 500 devices (median)", ISSUE["gmo"], "not run", "≤ 10 ms",
                 "-", "-"]]
    n = dbus["devices"]
    results = dbus["in_process_s"]
    gmo = next(v for k, v in results.items() if "GetManagedObjects" in k and f"{n} devices" in k)
    base = results["in-process: bus GetId (baseline)"]
    now = med(gmo) * 1e3
    rows = [[f"GetManagedObjects, {n} devices, median, dbus-fast client (bus GetId in this run)",
             ISSUE["gmo"], f"{now:.1f} ms ({med(base) * 1e3:.2f} ms)", "",
             f"{now / 50:.2f}x", ""]]
    raw = dbus.get("raw_s")
    if raw:
        at_socket = med(raw[f"raw socket: phyllod GetManagedObjects, {n} devices"]) * 1e3
        rows.append(["  the same at the socket: the bus and phyllod, reply read, not "
                     "unmarshalled (bus GetId)", "", f"{at_socket:.1f} ms "
                     f"({med(raw['raw socket: bus GetId (baseline)']) * 1e3:.2f} ms)",
                     "≤ 10 ms", f"{at_socket / 50:.2f}x", verdict(at_socket <= 10)])
        rows.append(["  so the dbus-fast client's own unmarshalling", "",
                     f"{now - at_socket:.1f} ms", "", "", ""])
    gio = dbus.get("gio_s")
    if gio:
        glib = med(gio[f"GLib GDBus (C): phyllod GetManagedObjects, {n} devices"]) * 1e3
        rows.append(["  GLib GDBus (C) client, for comparison (bus GetId)", "",
                     f"{glib:.1f} ms ({med(gio['GLib GDBus (C): bus GetId (baseline)']) * 1e3:.2f}"
                     " ms)", "", "", ""])
    return rows


def memory_rows(memory: list[dict] | None) -> list[list[str]]:
    """bench/memory_bench.py's figures (a list: tree, case, devices, guests, events,
    rss/pss/anon kB) for this tree: idle, loaded, and the growth over the churn."""
    goal = "anon ≤ 16 MiB at 500 devices, 50 guests; no growth over 10k events"
    mine = [f for f in memory or [] if str(f.get("tree", "")).endswith("(this)")]
    if not mine:
        return [["Memory", ISSUE["memory"], "not run (bench/memory_bench.py)", goal, "-", "-"]]
    by_case = {f["case"]: f for f in mine}
    rows = []
    for case in ("idle, nothing", "idle, loaded"):
        f = by_case.get(case)
        if f is not None:
            anon = f["anon_kib"] / 1024
            loaded = case == "idle, loaded"
            rows.append([f"Memory, {case} ({f['devices']} device objects, {f['guests']} guests):"
                         " anonymous (PSS, RSS) MiB", ISSUE["memory"],
                         f"{anon:.1f} ({f['pss_kib'] / 1024:.1f}, {f['rss_kib'] / 1024:.1f})",
                         "≤ 16 MiB anonymous" if loaded else "", f"{anon / 20.6:.2f}x",
                         verdict(anon <= 16) if loaded else ""])
    floors = {("preload" in str(f.get("tree", ""))): f for f in memory or []
              if f.get("case") == "floor"}
    loaded = by_case.get("idle, loaded")
    if False in floors and True in floors and loaded is not None:
        floor, preloaded = floors[False], floors[True]
        own = (loaded["anon_kib"] - preloaded["anon_kib"]) / 1024
        rows.append(["  the floor: the libraries alone (imports, a libvirt connection, an idle "
                     "asyncio loop): anonymous (PSS, RSS) MiB", "",
                     f"{floor['anon_kib'] / 1024:.1f} ({floor['pss_kib'] / 1024:.1f}, "
                     f"{floor['rss_kib'] / 1024:.1f})", "≤ 16 MiB is below it"
                     if floor["anon_kib"] / 1024 > 16 else "", "", ""])
        rows.append(["  so phyllod's own, loaded (the daemon less the floor under umockdev's "
                     f"preload, {preloaded['anon_kib'] / 1024:.1f} MiB)", "", f"{own:.1f} MiB",
                     "", "", ""])
    steps = [("after warm-up", "after churn", "a warm-up"),
             ("after churn", "after a second churn", "the first churn")]
    for before, after, what in steps:
        a, b = by_case.get(before), by_case.get(after)
        if a and b:
            growth = b["anon_kib"] - a["anon_kib"]
            rows.append([f"Memory growth over {b['events'] - a['events']:,} uevents after "
                         f"{what} (anonymous)", "", f"{growth:+d} kB", "no growth", "", ""])
    return rows


def render(results: dict[str, dict], codes: dict[str, int], shared: bool) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Performance: faster than the script, close to libvirt's floor",
        "",
        f"Generated by `bench/performance.py` on {when} at commit {commit()}; do not edit by "
        "hand. Each row is issue 18's figure: its baseline as the issue measured it before "
        "the work, the figure in this run (a bench's own in-run baseline in brackets), the "
        "goal, and now / issue baseline.",
        "",
        f"Machine: {machine(shared)}",
        "",
        "| figure | issue's baseline | now | goal | now / baseline | met? |",
        "|---|---|---|---|---:|---|",
    ]
    for rows in (lab_rows(results.get("lab")), share_rows(results.get("share")),
                 core_rows(results.get("core")), dbus_rows(results.get("dbus")),
                 memory_rows(results.get("memory"))):
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
                  for row in rows]
    failed = [f"`{n}` (exit {c})" for n, c in sorted(codes.items()) if c != 0]
    if failed:
        lines += ["", f"Benches that failed in this run: {', '.join(failed)}; their rows show "
                  "an earlier JSON or say \"not run\"."]
    lines += ["", "How each is measured:", "",
              "- Lab rows: `bench/lab_latency.py` (tests/lab/support/latency.py): one L1 "
              "under TCG, QMP plugs, phyllod and a udev rule + `virsh attach-device` script "
              "interleaved plug by plug; live/released is libvirt's DEVICE_ADDED/REMOVED "
              "for L2.",
              "- The share: `bench/share_bench.py`, integration tier (private libvirtd with "
              "a QEMU guest, umockdev, the daemon as a subprocess), from the daemon's trace "
              "(`PHYLLOD_TRACE`, phyllod/host/trace.py). This machine kind has no USB, so "
              "libvirt answers both calls with an error; the call is issued and returns, "
              "which is what is timed.",
              "- Idle: context switches of the daemon's threads from /proc "
              "(tests/integration/support/wakeups.py).",
              "- Core and bus: `bench/core_bench.py`, `bench/dbus_bench.py`; memory: "
              "`bench/memory_bench.py`.", ""]
    if results.get("lab"):
        lines += ["![plug → live and unplug → released, every sample, both tools]"
                  "(performance-latency.svg)", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="run the benches, keep their JSON here")
    where.add_argument("--from", dest="source", type=Path, help="only read JSON from here")
    parser.add_argument("--skip", action="append", default=[], choices=sorted(BENCHES),
                        help="a bench not to run (repeatable); an earlier JSON is still read")
    parser.add_argument("--shared", action="store_true",
                        help="say the machine was shared with other work during the run")
    parser.add_argument("--doc", type=Path, default=DOC)
    args = parser.parse_args()
    codes: dict[str, int] = {}
    directory = args.out or args.source
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        codes = run([n for n in BENCHES if n not in args.skip], args.out)
    results = load(directory)
    args.doc.write_text(render(results, codes, args.shared), encoding="utf-8")
    if "lab" in results:
        (args.doc.parent / PLOT.name).write_text(latency_svg(results["lab"]), encoding="utf-8")
    print(f"performance: {len(results)} benches' JSON read from {directory}; wrote {args.doc}")
    return max(codes.values(), default=0)


if __name__ == "__main__":
    sys.exit(main())
