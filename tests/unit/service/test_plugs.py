"""The plugs part: which plug a udev event is, and the unplug debounce window."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from factories import usb
from hypothesis import given, settings
from hypothesis import strategies as st

from phyllod.core.model import Device
from phyllod.core.serial_trust import carry_choices, with_identities
from phyllod.host.udev_source import DeviceGone, DeviceSeen
from phyllod.service.plugs import PlugChange, Plugs, judge_plug, unplug_wait

KEY = usb(serial="A1")


@pytest.mark.parametrize(("previous", "seen", "returned", "change"), [
    # back within its window, same ids and serial: the same plug (even renumbered)
    (KEY, usb(serial="A1", devnum=9), True, PlugChange.RETURNED),
    (KEY, KEY, True, PlugChange.RETURNED),
    # back within its window, but another device in the port: a new plug
    (KEY, usb(serial="B2"), True, PlugChange.NEW),
    (KEY, usb(serial="A1", product="0002"), True, PlugChange.NEW),
    # not waited for (never vanished, or its window is over): new numbers are a new plug
    (KEY, usb(serial="A1", devnum=9), False, PlugChange.NEW),
    (None, KEY, False, PlugChange.NEW),
    (None, KEY, True, PlugChange.NEW),
    # a later event of the plug already known (a bind, a change)
    (KEY, KEY, False, PlugChange.SAME),
])
def test_judge_plug(previous, seen, returned, change) -> None:
    assert judge_plug(previous, seen, returned) is change


@pytest.mark.parametrize(("debounce", "asleep", "settle", "wait"), [
    (1.0, False, 2.0, 1.0),
    (1.0, True, 2.0, 2.0),  # resume re-enumerates slowly
    (3.0, True, 2.0, 3.0),
    (0.0, False, 2.0, 0.0),
])
def test_unplug_wait(debounce, asleep, settle, wait) -> None:
    assert unplug_wait(debounce, asleep, settle) == wait


class Hooks:
    """What the plugs part tells the other parts, as a list of calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def plugs(self, debounce: float) -> Plugs:
        return Plugs(
            debounce=lambda d: debounce, asleep=lambda: False, stopping=lambda: False,
            resume_settle=2.0, new_plug=lambda i: self.calls.append(("new plug", i)),
            plug_ended=lambda i, why: self.calls.append(("plug ended", f"{i}: {why}")),
            forget_failure=lambda slot: None, host_bound=lambda d, driver: None,
            unwatch_bind=lambda slot: self.calls.append(("unwatch", slot)),
            identities_judged=lambda before, after, touched: None, changed=lambda: None)


WINDOW = 0.05


@pytest.mark.parametrize(("back", "after", "calls"), [
    # back within the window, the same device: the same plug, nothing ended
    (usb(serial="A1", devnum=9), 0.0, []),
    # back within the window, another device in the port: a new plug (which ends the old)
    (usb(serial="B2"), 0.0, [("new plug", "usb:1-2")]),
    # back after the window: it was unplugged, and this is a new plug
    (usb(serial="A1", devnum=9), 4 * WINDOW, [
        ("plug ended", "usb:1-2: unplugged"), ("unwatch", KEY.slot), ("new plug", "usb:1-2")]),
])
async def test_a_device_back_within_its_window_is_the_same_plug(back, after, calls) -> None:
    hooks = Hooks()
    plugs = hooks.plugs(WINDOW)
    plugs.present_at_start([KEY])
    plugs.on_udev(DeviceGone(KEY.id))
    assert KEY.id in plugs.vanished and KEY.id in plugs.devices
    await asyncio.sleep(after)
    plugs.on_udev(DeviceSeen(back, "add"))
    assert hooks.calls == calls
    assert plugs.vanished == {} and plugs.devices[KEY.id].devnum == back.devnum
    await asyncio.sleep(2 * WINDOW)  # the window's timer was cancelled: nothing more
    assert hooks.calls == calls and KEY.id in plugs.devices


async def test_an_unplug_without_window_is_believed_at_once() -> None:
    hooks = Hooks()
    plugs = hooks.plugs(0.0)
    plugs.present_at_start([KEY])
    plugs.on_udev(DeviceGone(KEY.id))
    assert plugs.devices == {}
    assert hooks.calls == [("plug ended", "usb:1-2: unplugged"), ("unwatch", KEY.slot)]


TWIN = usb(port="1-2", serial="A1B2C3D4")
OTHER_TWIN = usb(port="1-3", devnum=6, serial="A1B2C3D4")


@pytest.mark.parametrize(("event", "judged"), [
    # a bind, a renumbering (reset), new interfaces: the same judgement, none made
    (DeviceSeen(replace(TWIN, driver="usb"), "bind"), 0),
    (DeviceSeen(replace(TWIN, devnum=9), "add"), 0),
    (DeviceSeen(replace(TWIN, interface_classes=("030101",)), "change"), 0),
    # another serial in the port, another device beside them: judged again
    (DeviceSeen(replace(TWIN, serial="ZZZZ9999"), "add"), 1),
    (DeviceSeen(usb(port="1-4", devnum=7, serial="A1B2C3D4"), "add"), 1),
    # a device gone: judged when its window is over, not at its remove
    (DeviceGone(TWIN.id), 0),
])
async def test_the_present_set_is_judged_again_only_when_a_judgement_can_change(
        event, judged) -> None:
    """Whatever was skipped, the present set is what a full judgement gives (the oracle):
    twins keep their doubt through a bind or a reset."""
    calls: list[int] = []
    hooks = Hooks()
    plugs = hooks.plugs(WINDOW)
    plugs._identities_judged = lambda before, after, touched: calls.append(1)
    plugs.present_at_start([TWIN, OTHER_TWIN])
    assert plugs.devices[TWIN.id].serial_twins == (OTHER_TWIN.id,)
    calls.clear()
    plugs.on_udev(event)
    assert len(calls) == judged
    assert plugs.devices == with_identities(plugs.devices)


#: What a desk plugs, as (vendor, product, serial): twins of one serial, a
#: placeholder shared by many units, one of a kind, none.
KINDS = [("1050", "0407", "5B8F2F6E"), ("1050", "0407", "5B8F2F6E"), ("0a12", "0001", "0000"),
         ("0a12", "0001", "0000"), ("046d", "c52b", "7A3C9E01"), ("0627", "0001", "")]
PORTS = ["1-1", "1-2", "1-3", "2-1", "2-2"]
#: The keys choices are kept under, as a person's overrides come to be.
IDENTITIES = sorted({f"usb:{v}:{p}:{s}" for v, p, s in KINDS if s}
                    | {f"usb:{v}:{p}:{s}@{port}" for v, p, s in KINDS if s for port in PORTS}
                    | {f"usb:{port}" for port in PORTS})
EVENTS = st.lists(st.tuples(st.sampled_from(PORTS), st.integers(0, len(KINDS) - 1),
                            st.booleans()), min_size=1, max_size=30)


@settings(max_examples=300, deadline=None)
@given(start=st.dictionaries(st.sampled_from(PORTS), st.integers(0, len(KINDS) - 1)),
       choices=st.dictionaries(st.sampled_from(IDENTITIES), st.sampled_from("ab"), max_size=6),
       events=EVENTS)
def test_judging_a_plugs_kinds_alone_is_judging_the_whole_set(
        start: dict[str, int], choices: dict[str, str],
        events: list[tuple[str, int, bool]]) -> None:
    """The present set judged again after each plug and unplug by the kinds it touched
    (serial_trust.rejudged, the choices carried over the touched devices only) ends
    where judging every device every time does (with_identities, carry_choices over
    all): the same doubts and twins, the same choices under the same keys."""
    carried = {"touched": dict(choices), "all": dict(choices)}

    def judged(before: dict[str, Device], after: dict[str, Device],
               touched: object) -> None:
        carried["touched"] = carry_choices(carried["touched"], before, after, touched)
        carried["all"] = carry_choices(carried["all"], before, after)

    plugs = Plugs(
        debounce=lambda d: 0.0, asleep=lambda: False, stopping=lambda: False,
        resume_settle=2.0, new_plug=lambda i: None, plug_ended=lambda i, why: None,
        forget_failure=lambda slot: None, host_bound=lambda d, driver: None,
        unwatch_bind=lambda slot: None, identities_judged=judged, changed=lambda: None)

    def device(port: str, n: int, devnum: int) -> Device:
        vendor, product, serial = KINDS[n]
        return usb(port=port, devnum=devnum, vendor=vendor, product=product, serial=serial)

    plugs.present_at_start([device(port, n, 2) for port, n in start.items()])
    for number, (port, n, plug) in enumerate(events, start=3):
        if plug:
            plugs.on_udev(DeviceSeen(device(port, n, number), "add"))
        else:
            plugs.on_udev(DeviceGone(f"usb:{port}"))
        assert plugs.devices == with_identities(plugs.devices)
        assert carried["touched"] == carried["all"]
