"""When a USB serial number is identity, and when it is not.

A person's choices that outlive a plug (a manual override, a remembered
answer) are kept under a device's identity: its serial number when it has
one, so the choice follows it to any port. But serial numbers are not always
unique: vendors flash one factory serial into every unit, and placeholders
(``0123456789ABCDEF``, ``000000000001``, "Serial", "N/A", one character
repeated, two or three characters) are common. Identity built from such a
serial merges devices: the override for one dongle would apply to its twins.

So a serial is identity only if it is no placeholder and no other present
device of the same vendor:product has it; otherwise the device is known by
its port, and :attr:`Device.serial_doubt` says why: a placeholder device by
its port alone (as a device with no serial), twins each by the serial at its
port (``usb:0a12:0001:5B8F2F6E3C@1-3``), so the key still says whose choice
it is. When a twin appears next to a device whose choices are kept under its
serial, those choices move to that device's serial-at-port (the twin never
gets them), and back when the twin leaves (:func:`carry_choices`), also when
it left while phyllod was stopped. A twin plugged in while the original is
away cannot be told from it: that is what a serial number is, and the same
as without this module.

Pure: functions over the present devices, tested as tables.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import replace
from itertools import pairwise
from typing import TypeVar

from phyllod.core.model import Device, Subsystem

T = TypeVar("T")

#: Fewer characters than this tell too few devices apart to be identity.
MIN_SERIAL = 4
#: Serial numbers seen shipped on many units (compared without case and
#: without separators ``-_.:`` and spaces).
_PLACEHOLDERS = frozenset({
    "serial", "serialnumber", "serialno", "sn", "none", "null", "na", "n/a", "unknown",
    "default", "defaultstring", "empty", "notapplicable", "notavailable", "tobefilledbyoem",
    "0123456789", "0123456789abcdef", "123456789", "1234567890", "12345678", "123456",
    "1234", "abcdef", "abcdef0123456789", "fedcba9876543210", "deadbeef",
    # Marvell/ASR's reference serial, on Telit LE910R1 and Neoway N723 modems alike
    # (tests/data/devices/SOURCES.md).
    "200806006809080000",
})
_SEPARATORS = re.compile(r"[\s\-_.:]")
#: Zeros (or Fs) ending in one small number: ``000000000001``, ``00000010``.
_COUNTER = re.compile(r"^(?:0+|f+)[0-9]{1,2}$")
#: A MAC or Bluetooth address (12 hex digits) whose device half is 1-15: a
#: vendor's prefix with the chip's unprogrammed default, as ``00e04c000001``
#: (Realtek's prefix) on every Realtek Bluetooth chip.
_DEFAULT_ADDRESS = re.compile(r"^[0-9a-f]{6}00000[0-9a-f]$")
_HEX = "0123456789abcdef"
#: Shortest run of consecutive hex digits (``3456789abc``) taken for a pattern.
_MIN_RUN = 6


def _typed_pattern(bare: str) -> bool:
    """Keys typed in order rather than a number given to one unit: consecutive
    hex digits up or down (``123456789abc``, ``fedcba98``), or each doubled
    (``001122334455``, ``aabbccddeeff``)."""
    if len(bare) >= 2 * _MIN_RUN and len(bare) % 2 == 0 \
            and all(bare[i] == bare[i + 1] for i in range(0, len(bare), 2)):
        bare = bare[::2]
    if len(bare) < _MIN_RUN or any(c not in _HEX for c in bare):
        return False
    steps = {(_HEX.index(b) - _HEX.index(a)) % 16 for a, b in pairwise(bare)}
    return steps in ({1}, {15})


def placeholder(serial: str) -> str:
    """Why ``serial`` cannot be identity on its own ("" if it can)."""
    bare = _SEPARATORS.sub("", serial).lower()
    if len(bare) < MIN_SERIAL:
        return f"serial {serial!r} is too short to tell devices apart"
    if bare in _PLACEHOLDERS or len(set(bare)) == 1 or _COUNTER.match(bare) \
            or _DEFAULT_ADDRESS.match(bare) or _typed_pattern(bare):
        return f"serial {serial} is a placeholder"
    return ""


Kind = tuple[str, str, str]


def kind(d: Device) -> Kind:
    """What a device's judgement depends on besides itself: the present devices of the
    same vendor, product and serial."""
    return d.vendor, d.product, d.serial


def judged_alike(a: Device, b: Device) -> bool:
    """Whether :func:`with_identities` judges ``b`` as it judged ``a`` in its place: it
    reads nothing else of a device, so a change of only its numbers, driver or
    interfaces (a bind, a reset) needs no new judgement of the present set."""
    return a.subsystem is b.subsystem and kind(a) == kind(b)


def with_identities(devices: Mapping[str, Device]) -> dict[str, Device]:
    """``devices`` (by id) with ``serial_doubt`` set from the whole present set.

    A device's doubt names the twins by port so a person sees which devices
    share the serial (``serial 1234ABCD is shared with usb:1-3``).
    """
    holders: dict[tuple[str, str, str], list[str]] = {}
    for d in devices.values():
        if d.subsystem is Subsystem.USB and d.serial:
            holders.setdefault(kind(d), []).append(d.id)
    result: dict[str, Device] = {}
    for key, d in devices.items():
        doubt = ""
        if d.subsystem is Subsystem.USB and d.serial:
            doubt = placeholder(d.serial)
            twins = tuple(sorted(t for t in holders.get(kind(d), ()) if t != d.id))
            if doubt:
                twins = ()
            elif twins:
                shown = ", ".join(twins[:3]) + (f" and {len(twins) - 3} more"
                                                if len(twins) > 3 else "")
                doubt = f"serial {d.serial} is shared with {shown}"
        else:
            twins = ()
        same = (d.serial_doubt, d.serial_twins) == (doubt, twins)
        result[key] = d if same else replace(d, serial_doubt=doubt, serial_twins=twins)
    return result


def rejudged(devices: Mapping[str, Device], kinds: Collection[Kind]) -> dict[str, Device]:
    """The devices of ``kinds`` that :func:`with_identities` would change, changed.

    A device's judgement reads only itself and the present devices of its kind,
    so after a plug, an unplug or a change of one device only that device's
    kinds (as it was, as it is) are judged again: at 500 devices judging all
    cost ~3 ms of each plug (issue 18). Every other device stays as it is.
    """
    group = {key: d for key, d in devices.items() if kind(d) in kinds}
    return {key: d for key, d in with_identities(group).items() if d is not group[key]}


def carry_choices(choices: Mapping[str, T], before: Mapping[str, Device],
                  after: Mapping[str, Device],
                  touched: Collection[str] | None = None) -> dict[str, T]:
    """The choices (by identity) once each device whose identity changed while it
    stayed plugged in (a twin came or went) has taken its choice along.

    ``before`` and ``after`` are the judged present devices (by id) of two
    snapshots; a device is the same in both if its id, ids and serial are. A
    choice moves from its old identity to its new one unless the new one has
    a choice of its own; it is copied instead when another present device
    still has the old identity. A device that just appeared has no old
    identity, so a twin plugged in beside a chosen device gets nothing, and
    neither twin of a pair present together from the start gets a choice kept
    under their shared serial: nothing says which of them it was made for.

    And a device known by its serial again has the choice held for it at its
    port (``usb:V:P:S@1-3``) back under its serial, when it has none there:
    so a twin that left while phyllod was stopped strands nothing (``before``
    is empty at start). Only a device at that very port takes it back; a twin
    alone in another port does not.

    ``touched``: the ids of the only devices whose judgement may differ between
    ``before`` and ``after`` (a plug's, and those :func:`rejudged` changed);
    the others are passed over, which gives the same result as long as every
    earlier judgement was carried (None: every device, as at start).
    """
    result = dict(choices)
    still: set[str] | None = None
    for device_id in before.keys() if touched is None else touched:
        old, new = before.get(device_id), after.get(device_id)
        if old is None or new is None or kind(new) != kind(old) \
                or new.identity == old.identity:
            continue
        if old.identity not in choices or new.identity in result:
            continue
        result[new.identity] = choices[old.identity]
        if still is None:  # a move is rare: what is present is looked at only then
            still = {d.identity for d in after.values()}
        if old.identity not in still:
            result.pop(old.identity, None)
    for device_id in after.keys() if touched is None else touched:
        d = after.get(device_id)
        if d is not None and d.subsystem is Subsystem.USB and d.serial and not d.serial_doubt \
                and d.serial_at_port in result and d.identity not in result:
            result[d.identity] = result.pop(d.serial_at_port)
    return result
