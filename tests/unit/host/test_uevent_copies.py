"""Which copy of a uevent (the kernel's, udev's) is delivered: sequences as tables."""

from __future__ import annotations

import pytest

from phyllod.host.uevent_copies import Copy, UeventCopies

DEV = "/devices/pci0000:00/0000:00:01.0/usb1/1-1"

# Each step: (devpath, action, seqnum, paired, the copy it is). A FIRST copy is
# then delivered (what it delivered: its step number). The kernel's bind and
# remove are paired with udev's copies; udev's other events are not.
SEQUENCES = [
    ("a plug: the kernel's bind; udev's add, change and bind copy after it",
     [(DEV, "bind", 12, True, Copy.FIRST), (DEV, "", 10, False, Copy.STALE),
      (DEV, "", 11, False, Copy.STALE), (DEV, "bind", 12, True, Copy.SECOND)]),
    ("a quick unplug: udev's copies of the plug come after the kernel's remove and must "
     "not bring the device back",
     [(DEV, "bind", 12, True, Copy.FIRST), (DEV, "remove", 14, True, Copy.FIRST),
      (DEV, "", 10, False, Copy.STALE), (DEV, "bind", 12, True, Copy.STALE),
      (DEV, "remove", 14, True, Copy.SECOND)]),
    ("after both copies of an unplug, a replug is new",
     [(DEV, "remove", 14, True, Copy.FIRST), (DEV, "remove", 14, True, Copy.SECOND),
      (DEV, "bind", 22, True, Copy.FIRST), (DEV, "bind", 22, True, Copy.SECOND)]),
    ("no bind from the kernel (umockdev sends none): udev's events are first copies",
     [(DEV, "", 10, False, Copy.FIRST), (DEV, "", 11, False, Copy.FIRST),
      (DEV, "remove", 14, True, Copy.FIRST), (DEV, "remove", 14, True, Copy.SECOND)]),
    ("udev's events after the pair are first copies, in order",
     [(DEV, "bind", 12, True, Copy.FIRST), (DEV, "bind", 12, True, Copy.SECOND),
      (DEV, "", 13, False, Copy.FIRST)]),
    ("no sequence number (0): never stale",
     [(DEV, "remove", 14, True, Copy.FIRST), (DEV, "", 0, False, Copy.FIRST)]),
    ("two devices do not mix",
     [(DEV, "remove", 14, True, Copy.FIRST), (DEV + ".2", "bind", 12, True, Copy.FIRST),
      (DEV + ".2", "bind", 12, True, Copy.SECOND)]),
    ("udev's copy first, the kernel's second",
     [(DEV, "remove", 14, True, Copy.FIRST), (DEV, "remove", 14, True, Copy.SECOND)]),
]


@pytest.mark.parametrize("steps", [s for _, s in SEQUENCES], ids=[w for w, _ in SEQUENCES])
def test_which_copy(steps):
    copies: UeventCopies[int] = UeventCopies()
    delivered: dict[tuple[str, str, int], int] = {}
    for n, (devpath, action, seqnum, paired, expected) in enumerate(steps):
        copy, first = copies.arrived(devpath, action, seqnum)
        assert copy is expected, f"step {n}"
        if copy is Copy.SECOND:
            assert first == delivered[(devpath, action, seqnum)]
        if copy is Copy.FIRST:
            copies.delivered(devpath, action, seqnum, n, paired)
            delivered[(devpath, action, seqnum)] = n


def test_what_the_first_copy_delivered_may_be_nothing():
    copies: UeventCopies[int | None] = UeventCopies()
    copies.delivered(DEV, "bind", 12, None, paired=True)
    assert copies.arrived(DEV, "bind", 12) == (Copy.SECOND, None)


def test_bounded_a_pair_whose_second_copy_never_comes_is_forgotten():
    copies: UeventCopies[int] = UeventCopies(limit=4)
    for n in range(10):
        copies.delivered(f"/devices/d{n}", "bind", n + 1, n, paired=True)
    assert copies.arrived("/devices/d0", "bind", 1)[0] is Copy.FIRST  # forgotten
    assert copies.arrived("/devices/d9", "bind", 10) == (Copy.SECOND, 9)


def test_a_rescan_forgets_every_pair_and_order():
    copies: UeventCopies[int] = UeventCopies()
    copies.delivered(DEV, "remove", 14, 0, paired=True)
    copies.forget()
    assert copies.arrived(DEV, "", 10)[0] is Copy.FIRST


@pytest.mark.parametrize(("after_the_bind", "current"), [
    ([], True),  # udev's copy of the bind comes: it may still tell the device's names
    ([("remove", 15, "first")], False),  # the kernel's remove came first: the device is gone
    ([("remove", 15, "first"), ("remove", 15, "second")], False),  # both copies of it
    ([("", 16, "first")], False),  # udev's later change: it carries the names itself
])
def test_a_second_copy_judged_later_is_current_only_while_nothing_newer_came(
        after_the_bind: list[tuple[str, int, str]], current: bool):
    """udev's copy of a kernel-taken bind is judged after the plug's turn (call_soon);
    by then the remove may have come, and a change built from that copy would bring
    back a device that is gone (the churn test saw one stay on the bus)."""
    copies: UeventCopies[int] = UeventCopies()
    copies.delivered(DEV, "bind", 12, 0, paired=True)
    assert copies.arrived(DEV, "bind", 12)[0] is Copy.SECOND
    for action, seqnum, which in after_the_bind:
        copy, _ = copies.arrived(DEV, action, seqnum)
        assert copy.value == which
        if copy is Copy.FIRST:
            copies.delivered(DEV, action, seqnum, 1, paired=action == "remove")
    assert copies.current(DEV, 12) is current
