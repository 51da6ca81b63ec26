"""core/metrics: the snapshot's text, as node_exporter's textfile collector parses it.

The text format is 0.0.4 (Prometheus' own, what expfmt's TextParser reads):
the real node_exporter and promtool read it in tests/integration/test_metrics.py.
"""

from __future__ import annotations

import re

import pytest

from phyllod.core.metrics import (
    BUCKETS,
    MAX_GUEST_LABEL,
    OTHER_GUESTS,
    Calls,
    Histogram,
    Snapshot,
    device_counts,
    escape,
    exposition,
)
from phyllod.core.model import State, Subsystem
from phyllod.core.plan import OpKind

USB, PCI = Subsystem.USB, Subsystem.PCI


def snapshot(**changes: object) -> Snapshot:
    values: dict[str, object] = dict(
        version="0.1.0", start_time=1796000000.0, devices=device_counts([]), calls={},
        policy_loaded=True, policy_errors=0, libvirt_connected=True, requests_open=0)
    values.update(changes)
    return Snapshot(**values)  # type: ignore[arg-type]


def samples(text: str) -> dict[str, float]:
    """Every sample line, ``name{labels}`` -> value."""
    out = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            out[series] = float(value)
    return out


@pytest.mark.parametrize(("seconds", "bucket"), [
    (0.0, 0), (0.01, 0),  # a value on a bound counts in it ("le")
    (0.0101, 1), (0.3, 5), (2.7, 8), (30.0, 10),
    (31.0, len(BUCKETS)),  # past every bound: only in +Inf
])
def test_an_observation_lands_in_its_bucket(seconds: float, bucket: int) -> None:
    h = Histogram().observed(seconds)
    assert h.buckets.index(1) == bucket
    assert (h.count, h.total) == (1, seconds)


@pytest.mark.parametrize(("rows", "max_guests", "expected"), [
    # nothing: every (subsystem, state) still has its guest-less row, at 0
    ([], 2, {}),
    # a device on the host, one in a guest, one pending for it
    ([(USB, State.HOST, ""), (USB, State.ATTACHED, "work"), (USB, State.PENDING, "work")], 2,
     {(USB, State.HOST, ""): 1, (USB, State.ATTACHED, "work"): 1,
      (USB, State.PENDING, "work"): 1}),
    # three guests, two named: the one with fewer devices is folded (ties by name)
    ([(USB, State.ATTACHED, "a"), (USB, State.ATTACHED, "b"), (USB, State.ATTACHED, "b"),
      (PCI, State.ATTACHED, "c")], 2,
     {(USB, State.ATTACHED, "a"): 1, (USB, State.ATTACHED, "b"): 2,
      (PCI, State.ATTACHED, OTHER_GUESTS): 1}),
    # a name too long for a label, and a guest named like the fold: both folded
    ([(USB, State.FAILED, "x" * (MAX_GUEST_LABEL + 1)), (USB, State.FAILED, OTHER_GUESTS)], 5,
     {(USB, State.FAILED, OTHER_GUESTS): 2}),
])
def test_devices_are_counted_with_guests_bounded(rows, max_guests, expected) -> None:
    counts = device_counts(rows, max_guests)
    assert {k: n for k, n in counts.items() if n} == expected
    assert all((s, st, "") in counts for s in Subsystem for st in State)


def test_many_guests_make_at_most_max_guests_labels() -> None:
    rows = [(USB, State.ATTACHED, f"guest-{i}") for i in range(500)]
    counts = device_counts(rows, 20)
    guests = {g for (_s, _st, g) in counts if g}
    assert len(guests) == 21 and OTHER_GUESTS in guests
    assert counts[(USB, State.ATTACHED, OTHER_GUESTS)] == 480


@pytest.mark.parametrize(("value", "escaped"), [
    ("work", "work"), ('a"b', 'a\\"b'), ("a\\b", "a\\\\b"), ("a\nb", "a\\nb"),
    ("ünï €", "ünï €"),  # UTF-8 is valid in a label value
])
def test_label_values_are_escaped(value: str, escaped: str) -> None:
    assert escape(value) == escaped


def test_a_hostile_guest_name_stays_in_its_label() -> None:
    name = 'evil"} 1\nphyllod_fake 2\\'
    text = exposition(snapshot(devices=device_counts([(USB, State.ATTACHED, name)])))
    assert "phyllod_fake" not in samples(text)
    line = next(ln for ln in text.splitlines() if "evil" in ln)
    assert line == ('phyllod_devices{subsystem="usb",state="attached",'
                    'guest="evil\\"} 1\\nphyllod_fake 2\\\\"} 1')


@pytest.mark.parametrize(("changes", "series", "value"), [
    ({}, 'phyllod_info{version="0.1.0"}', 1),
    ({}, "phyllod_start_time_seconds", 1796000000),
    ({"policy_loaded": False}, "phyllod_policy_loaded", 0),
    ({"policy_errors": 3}, "phyllod_policy_errors", 3),
    ({"libvirt_connected": False}, "phyllod_libvirt_connected", 0),
    ({"requests_open": 2}, "phyllod_requests_open", 2),
    ({}, 'phyllod_devices{subsystem="pci",state="host",guest=""}', 0),
    ({"devices": device_counts([(USB, State.ATTACHED, "work")])},
     'phyllod_devices{subsystem="usb",state="attached",guest="work"}', 1),
    # counters and histograms exist at 0 before any call: a rate needs the series
    ({}, 'phyllod_attaches_total{subsystem="usb"}', 0),
    ({}, 'phyllod_detach_failures_total{subsystem="pci"}', 0),
    ({}, 'phyllod_attach_duration_seconds_bucket{subsystem="pci",result="ok",le="+Inf"}', 0),
])
def test_each_gauge_and_counter(changes: dict, series: str, value: float) -> None:
    assert samples(exposition(snapshot(**changes)))[series] == value


def test_calls_make_counters_and_cumulative_histograms() -> None:
    usb = Calls().observed(False, 0.02).observed(False, 0.03).observed(True, 0.2)
    pci = Calls().observed(True, 3.0)
    s = samples(exposition(snapshot(calls={(OpKind.ATTACH, USB): usb,
                                           (OpKind.DETACH, PCI): pci})))
    assert s['phyllod_attaches_total{subsystem="usb"}'] == 3
    assert s['phyllod_attach_failures_total{subsystem="usb"}'] == 2
    assert s['phyllod_detaches_total{subsystem="pci"}'] == 1
    assert s['phyllod_detach_failures_total{subsystem="pci"}'] == 0
    failed = 'phyllod_attach_duration_seconds_bucket{subsystem="usb",result="failed",le="%s"}'
    assert [s[failed % le] for le in ("0.01", "0.025", "0.05", "30", "+Inf")] == [0, 1, 2, 2, 2]
    assert s['phyllod_attach_duration_seconds_count{subsystem="usb",result="failed"}'] == 2
    assert s['phyllod_attach_duration_seconds_sum{subsystem="usb",result="failed"}'] == \
        pytest.approx(0.05)
    assert s['phyllod_detach_duration_seconds_bucket{subsystem="pci",result="ok",le="2.5"}'] == 0
    assert s['phyllod_detach_duration_seconds_bucket{subsystem="pci",result="ok",le="5"}'] == 1


def test_the_text_follows_the_conventions() -> None:
    """HELP and TYPE before each family, once; counters end in _total, durations are
    seconds; no OpenMetrics-only lines (node_exporter 1.5 would mistype them)."""
    text = exposition(snapshot())
    assert text.endswith("\n") and "# EOF" not in text and "_created" not in text
    lines = text.splitlines()
    families = [ln.split()[2] for ln in lines if ln.startswith("# TYPE ")]
    assert len(families) == len(set(families))
    for i, line in enumerate(lines):
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert lines[i - 1].startswith(f"# HELP {name} ")
            assert name.startswith("phyllod_")
            assert (kind == "counter") == name.endswith("_total")
            if kind == "histogram":
                assert name.endswith("_seconds")
    names = {re.match(r"[a-z_]+", ln).group() for ln in lines if not ln.startswith("#")}
    assert all(any(n == f or n.startswith(f + "_") for f in families) for n in names)
