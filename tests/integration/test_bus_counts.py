"""What one plug costs on the bus, counted: only the objects that changed are published.

The daemon runs as a subprocess on the private system bus (see phyllod_on_bus)
with many devices present; a client with a match rule on everything phyllod
signals counts the signals by object path, and the daemon's SIGUSR1 line
counts the object entries it marshalled. Counts, never times.
"""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter

import pytest
from dbus_fast import Message, MessageType
from dbus_fast.aio import MessageBus
from phyllod_on_bus import DEVICE, NAME, ROOT, Phyllod

pytestmark = pytest.mark.integration

OTHERS = 30
KEY = f"{ROOT}/devices/usb_2_1"
DENY_KEYS = '[[rule]]\nname = "no keys"\nmatch = { vendor = "1050" }\naction = "deny"\n'
STATS = re.compile(r"bus: (\d+) states published, (\d+) object entries marshalled, "
                   r"(\d+) GetManagedObjects answered")


def _stats(p: Phyllod) -> tuple[int, int, int]:
    """SIGUSR1's bus line: states published, entries marshalled, GetManagedObjects
    answered."""
    assert p.proc is not None
    mark = p.proc.mark()
    p.proc.signal(signal.SIGUSR1)
    published, marshalled, answered = p.proc.wait_log(STATS.pattern, start=mark).groups()
    return int(published), int(marshalled), int(answered)


def _signalled_path(msg: Message) -> str:
    """The object a signal is about (ObjectManager's signals name it in their body)."""
    if msg.member in ("InterfacesAdded", "InterfacesRemoved"):
        return msg.body[0]
    return msg.path or ""


async def _plug_and_count(p: Phyllod) -> tuple[Counter[tuple[str, str]], tuple[int, ...],
                                               tuple[int, ...], dict]:
    """Plug the key while counting phyllod's signals by (path, member); the stats
    before and after; the key's properties as GetManagedObjects shows them after."""
    bus = await MessageBus(bus_address=p.bus.address).connect()
    seen: Counter[tuple[str, str]] = Counter()
    denied = asyncio.Event()
    loop = asyncio.get_running_loop()

    def handler(msg: Message) -> None:
        if msg.message_type is MessageType.SIGNAL and msg.sender != "org.freedesktop.DBus":
            seen[(_signalled_path(msg), msg.member or "")] += 1
            if msg.member == "PropertiesChanged" and msg.path == KEY and \
                    "State" in msg.body[1] and msg.body[1]["State"].value == "denied":
                denied.set()
            if msg.member == "InterfacesAdded" and msg.body[0] == KEY and \
                    msg.body[1][DEVICE]["State"].value == "denied":
                denied.set()

    async def ping() -> None:
        """A round trip to phyllod: every signal it sent before has arrived."""
        await bus.call(Message(destination=NAME, path=ROOT,
                               interface="org.freedesktop.DBus.Peer", member="Ping"))

    async def objects() -> dict:
        reply = await bus.call(Message(destination=NAME, path=ROOT, member="GetManagedObjects",
                                       interface="org.freedesktop.DBus.ObjectManager"))
        assert reply is not None and reply.message_type is MessageType.METHOD_RETURN
        return reply.body[0]

    try:
        bus.add_message_handler(handler)
        await bus.call(Message(destination="org.freedesktop.DBus", path="/org/freedesktop/DBus",
                               interface="org.freedesktop.DBus", member="AddMatch",
                               signature="s", body=[f"type='signal',sender='{NAME}'"]))
        await objects()  # every entry is marshalled before the plug
        before = await loop.run_in_executor(None, _stats, p)
        await ping()
        seen.clear()
        await loop.run_in_executor(None, lambda: p.tb.plug(
            "2-1", devnum=3, vendor="1050", product="0407", serial="KEY1",
            interfaces=("030101",)))
        await asyncio.wait_for(denied.wait(), 15)
        after_key = (await objects())[KEY][DEVICE]
        after = await loop.run_in_executor(None, _stats, p)
        await ping()
        return Counter(seen), before, after, after_key
    finally:
        bus.disconnect()


async def test_one_plug_publishes_only_the_plugged_device(phyllod: Phyllod):
    for n in range(OTHERS):
        phyllod.tb.plug(f"1-{3 + n}", devnum=6 + n, serial=f"KBD{n}")
    (phyllod.policy_dir / "10-keys.toml").write_text(DENY_KEYS)
    phyllod.start()

    seen, before, after, key = await _plug_and_count(phyllod)

    assert key["State"].value == "denied" and key["Rule"].value == "no keys"
    # Only the key's object is signalled: no other device, no guest, not the manager.
    assert {path for path, _ in seen} == {KEY}, seen
    assert seen[(KEY, "InterfacesAdded")] == 1 and seen[(KEY, "InterfacesRemoved")] == 0
    # Each signal is one object that came or changed, and only those are marshalled
    # again (the other devices' entries are kept): entries marshalled == signals.
    published, marshalled, answered = (a - b for a, b in zip(after, before, strict=True))
    assert published >= 1
    assert marshalled == sum(seen.values()), (seen, before, after)
    assert answered == 1  # the GetManagedObjects after the plug, joined from the entries
    print(f"one plug among {OTHERS + 2} devices: signals {dict(seen)}; {published} states "
          f"published, {marshalled} entries marshalled, {answered} GetManagedObjects")
