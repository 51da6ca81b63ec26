"""The metrics a fleet's Prometheus reads: a frozen snapshot of counts, and its text.

A host is one of many; people watch fleets with Prometheus through
node_exporter's textfile collector, which parses the Prometheus text format
0.0.4 (expfmt's TextParser), not OpenMetrics: a family's TYPE line must name
the sample itself (``phyllod_attaches_total``: OpenMetrics' ``phyllod_attaches``
leaves the counter untyped and its HELP lost), a ``_created`` line becomes a
series of its own, and timestamps make it drop the whole file. So this text
has no ``# EOF``, no ``_created``, no timestamps (each tried against the real
node_exporter 1.5 of Debian 12; tests/integration/test_metrics.py has it serve
this text and ``promtool check metrics`` lint it).

Label values are bounded: a device's strings (names, serials, ids) never
become one; devices are counted by subsystem, state and guest, and guests,
admin-chosen but unbounded in number, are named for the :data:`MAX_GUESTS`
holding the most devices, the rest folded into :data:`OTHER_GUESTS`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from phyllod.core.model import State, Subsystem
from phyllod.core.plan import OpKind

#: Histogram buckets (seconds) of an attach or detach call: a USB hostdev takes
#: 5-20 ms on an idle host and ~0.2-0.6 s in a loaded VM, a PCI function moved
#: to vfio-pci 2-4 s, a detach waits for the guest up to its timeout (30 s).
BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: How many guests are named in ``guest=`` labels; the others share one value.
MAX_GUESTS = 20
#: The label value of the guests past :data:`MAX_GUESTS` (and of names longer
#: than :data:`MAX_GUEST_LABEL`). A guest of that very name is counted with them.
OTHER_GUESTS = "_other"
#: Characters of a guest name worth a label; longer names are folded.
MAX_GUEST_LABEL = 64

@dataclass(frozen=True, slots=True)
class Histogram:
    """Observations per bucket (not cumulative; the last counts those past every
    bucket), their sum and count."""

    buckets: tuple[int, ...] = (0,) * (len(BUCKETS) + 1)
    total: float = 0.0

    @property
    def count(self) -> int:
        return sum(self.buckets)

    def observed(self, seconds: float) -> Histogram:
        """This histogram with one more observation."""
        i = bisect.bisect_left(BUCKETS, seconds)  # le: a value on a bound counts in it
        counts = list(self.buckets)
        counts[i] += 1
        return Histogram(tuple(counts), self.total + seconds)


@dataclass(frozen=True, slots=True)
class Calls:
    """One kind of call to one subsystem: its durations by result (``ok``, ``failed``)."""

    ok: Histogram = Histogram()
    failed: Histogram = Histogram()

    def observed(self, ok: bool, seconds: float) -> Calls:
        if ok:
            return Calls(self.ok.observed(seconds), self.failed)
        return Calls(self.ok, self.failed.observed(seconds))


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """What the metrics say, at one moment."""

    version: str
    start_time: float  # seconds since the epoch
    #: (subsystem, state, guest label) -> devices; guest "" for none (see :func:`device_counts`).
    devices: Mapping[tuple[Subsystem, State, str], int]
    calls: Mapping[tuple[OpKind, Subsystem], Calls]
    policy_loaded: bool
    policy_errors: int
    libvirt_connected: bool
    requests_open: int


def device_counts(rows: Iterable[tuple[Subsystem, State, str]],
                  max_guests: int = MAX_GUESTS) -> dict[tuple[Subsystem, State, str], int]:
    """Devices counted by (subsystem, state, guest), guests bounded.

    ``rows`` has one (subsystem, state, guest) per device, guest "" when it is
    neither in nor meant for one. The ``max_guests`` guests with the most
    devices (then by name) keep their names; the others, and names longer than
    :data:`MAX_GUEST_LABEL`, count as :data:`OTHER_GUESTS`. Every (subsystem,
    state) has a guest-less row, 0 if need be, so that a sum by state always
    has a series to show.
    """
    rows = list(rows)
    per_guest: dict[str, int] = {}
    for _subsystem, _state, guest in rows:
        if guest:
            per_guest[guest] = per_guest.get(guest, 0) + 1
    ranked = sorted((g for g in per_guest if len(g) <= MAX_GUEST_LABEL and g != OTHER_GUESTS),
                    key=lambda g: (-per_guest[g], g))
    named = frozenset(ranked[:max_guests])
    counts = {(subsystem, state, ""): 0 for subsystem in Subsystem for state in State}
    for subsystem, state, guest in rows:
        label = guest if not guest or guest in named else OTHER_GUESTS
        counts[(subsystem, state, label)] = counts.get((subsystem, state, label), 0) + 1
    return counts


def escape(value: str) -> str:
    """A label value as the text format quotes it: backslash, double quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{escape(value)}"' for name, value in pairs)
    return f"{{{inner}}}" if inner else ""


def _number(value: float) -> str:
    """Integers without a fraction, others as Python's shortest repr (Go's parser reads both)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Text:
    """The exposition's lines, one family after another."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]

    def sample(self, name: str, value: float, *labels: tuple[str, str]) -> None:
        self.lines.append(f"{name}{_labels(labels)} {_number(value)}")

    def histogram(self, name: str, h: Histogram, *labels: tuple[str, str]) -> None:
        running = 0
        for bound, n in zip(BUCKETS, h.buckets, strict=False):
            running += n
            self.sample(f"{name}_bucket", running, *labels, ("le", _number(bound)))
        self.sample(f"{name}_bucket", h.count, *labels, ("le", "+Inf"))
        self.sample(f"{name}_sum", h.total, *labels)
        self.sample(f"{name}_count", h.count, *labels)


_CALLS = {OpKind.ATTACH: ("attach", "attaches"), OpKind.DETACH: ("detach", "detaches")}


def exposition(s: Snapshot) -> str:
    """The snapshot in the Prometheus text format 0.0.4, for node_exporter's textfile
    collector: every family with HELP and TYPE, counters and histograms for
    both subsystems (zeros included: a rate needs the series before the first
    event)."""
    t = _Text()
    t.family("phyllod_info", "gauge", "phyllod's version; always 1.")
    t.sample("phyllod_info", 1, ("version", s.version))
    t.family("phyllod_start_time_seconds", "gauge",
             "When phyllod started, in seconds since the epoch.")
    t.sample("phyllod_start_time_seconds", s.start_time)
    t.family("phyllod_devices", "gauge", "Present devices by subsystem, state and the guest "
             f"they are in or meant for (\"\" none, {OTHER_GUESTS} past {MAX_GUESTS} guests).")
    for (subsystem, state, guest), n in sorted(s.devices.items()):
        t.sample("phyllod_devices", n, ("subsystem", subsystem), ("state", state),
                 ("guest", guest))
    for kind, (verb, plural) in _CALLS.items():
        calls = {sub: s.calls.get((kind, sub), Calls()) for sub in Subsystem}
        t.family(f"phyllod_{plural}_total", "counter",
                 f"libvirt {verb} calls that ended, by subsystem.")
        for sub, c in calls.items():
            t.sample(f"phyllod_{plural}_total", c.ok.count + c.failed.count, ("subsystem", sub))
        t.family(f"phyllod_{verb}_failures_total", "counter",
                 f"libvirt {verb} calls that failed, by subsystem.")
        for sub, c in calls.items():
            t.sample(f"phyllod_{verb}_failures_total", c.failed.count, ("subsystem", sub))
        t.family(f"phyllod_{verb}_duration_seconds", "histogram",
                 f"How long a {verb} took, from the call to its end, by subsystem and result.")
        for sub, c in calls.items():
            t.histogram(f"phyllod_{verb}_duration_seconds", c.ok, ("subsystem", sub),
                        ("result", "ok"))
            t.histogram(f"phyllod_{verb}_duration_seconds", c.failed, ("subsystem", sub),
                        ("result", "failed"))
    t.family("phyllod_policy_loaded", "gauge",
             "1 if a policy is in force; 0 if it was broken at start (phyllod changes nothing).")
    t.sample("phyllod_policy_loaded", int(s.policy_loaded))
    t.family("phyllod_policy_errors", "gauge",
             "Problems in the policy files as last read (a refused reload keeps the old policy).")
    t.sample("phyllod_policy_errors", s.policy_errors)
    t.family("phyllod_libvirt_connected", "gauge", "1 if phyllod is connected to libvirt.")
    t.sample("phyllod_libvirt_connected", int(s.libvirt_connected))
    t.family("phyllod_requests_open", "gauge",
             "Ask requests waiting for a person's answer.")
    t.sample("phyllod_requests_open", s.requests_open)
    return "\n".join(t.lines) + "\n"
