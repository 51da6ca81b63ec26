"""The gate's decisions, as tables, without a bus: which calls it takes, which polkit
action id and details each is checked under, what then runs, and what is answered.

The integration tests (test_dbus_api, test_bus_policy, test_bus_trust) prove the
same against a real bus and polkit; these pin each decision to one row.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping
from dataclasses import replace
from typing import Any

import pytest
from dbus_fast import Message, MessageFlag, MessageType
from factories import guest, pci, usb

from phyllod.bus.gate import Gate
from phyllod.bus.interfaces import ManagerInterface
from phyllod.bus.objects import ObjectTree, Snapshot, Stats
from phyllod.contract import (
    DEVICE_IFACE,
    MANAGER_IFACE,
    NO_SUCH_DEVICE,
    NO_SUCH_GUEST,
    NOT_AUTHORIZED,
    POLKIT_ANSWER,
    POLKIT_ATTACH,
    POLKIT_ATTACH_PCI,
    POLKIT_DETACH,
    POLKIT_RELOAD,
    REQUEST_IFACE,
    ROOT,
    device_path,
    request_path,
)
from phyllod.core.errors import NotAuthorized
from phyllod.core.model import Assignment, Override, OverrideKind, Request, State

KBD = usb("1-2")
WIFI = pci()
WORK = guest("work")


class FakeBus:
    """What the tree and the gate use of a connection: exports and sent messages."""

    connected = True

    def __init__(self) -> None:
        self.sent: list[Message] = []

    def export(self, path: str, interface: Any) -> None:
        pass

    def unexport(self, path: str) -> None:
        pass

    def send(self, msg: Message) -> None:
        self.sent.append(msg)


class FakeAuthority:
    """Records each check; refuses when ``allow`` is False."""

    def __init__(self, allow: bool = True) -> None:
        self.allow = allow
        self.checks: list[tuple[str, dict[str, str]]] = []

    def attach(self, bus: Any) -> None:
        pass

    async def check(self, sender: str, polkit_id: str, interactive: bool,
                    details: Mapping[str, str]) -> None:
        self.checks.append((polkit_id, dict(details)))
        if not self.allow:
            raise NotAuthorized(f"polkit denied {polkit_id}")

    def stats_line(self) -> str:
        return ""


class FakeOperations:
    """Records each operation the gate runs, as (operation, *arguments)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def reload_policy(self) -> None:
        self.calls.append(("reload",))

    async def set_override(self, *args: Any) -> None:
        self.calls.append(("override", *args))

    async def answer(self, *args: Any) -> None:
        self.calls.append(("answer", *args))

    async def forget(self, *args: Any) -> None:
        self.calls.append(("forget", *args))


def snapshot() -> Snapshot:
    return Snapshot(
        devices={KBD.id: KBD, WIFI.id: WIFI},
        assignments={KBD.id: Assignment(device_id=KBD.id, state=State.ATTACHED, guest="work")},
        guests={WORK.name: WORK}, overrides={}, version="0-test", iommu_enabled=True,
        policy_errors=(), policy_files=(), libvirt_uri="test:///default", remembered={},
        requests={1: Request(number=1, device_id=KBD.id, description="a keyboard",
                             candidates=("work",), deadline_usec=0)},
        ask_timeout=30)


class Served:
    """A gate over one snapshot, fake authority and operations; runs what it spawns."""

    def __init__(self, allow: bool = True) -> None:
        self.bus = FakeBus()
        self.authority = FakeAuthority(allow)
        self.ops = FakeOperations()
        self.tree = ObjectTree(Stats())
        self.spawned: list[Awaitable[None]] = []
        self.gate = Gate(bus=self.bus, tree=self.tree, ops=self.ops,  # type: ignore[arg-type]
                         authority=self.authority, spawn=self.spawned.append)
        self.tree.export(self.bus, ManagerInterface(self.gate, {}),  # type: ignore[arg-type]
                         snapshot())

    def call(self, path: str, interface: str, member: str, signature: str = "",
             body: list[Any] | None = None, flags: MessageFlag = MessageFlag.NONE
             ) -> bool | Message:
        msg = Message(path=path, interface=interface, member=member, signature=signature,
                      body=body or [], sender=":1.7", serial=3, flags=flags)
        taken = self.gate.handle(msg)

        async def run_spawned() -> None:
            while self.spawned:
                await self.spawned.pop(0)
        asyncio.run(run_spawned())
        return taken

    @property
    def reply(self) -> Message:
        (reply,) = self.bus.sent
        return reply


KBD_PATH = device_path(KBD.id)
REQUEST = request_path(1)
POLICY_GUEST = "the one its policy names"

#: (path, interface, member, signature, args) → (polkit id, the ``guest`` detail, what ran)
MUTATING = [
    pytest.param(ROOT, MANAGER_IFACE, "Attach", "ss", [KBD.id, "work"], POLKIT_ATTACH, "work",
                 ("override", KBD.id, Override(OverrideKind.ATTACH, "work")), id="attach"),
    pytest.param(ROOT, MANAGER_IFACE, "Attach", "ss", ["8086:2723", "work"],
                 POLKIT_ATTACH_PCI, "work",
                 ("override", WIFI.id, Override(OverrideKind.ATTACH, "work")), id="attach-pci"),
    pytest.param(ROOT, MANAGER_IFACE, "Detach", "s", [KBD_PATH], POLKIT_DETACH, "work",
                 ("override", KBD.id, Override(OverrideKind.HOST)), id="detach-from-its-guest"),
    pytest.param(ROOT, MANAGER_IFACE, "Detach", "s", [WIFI.id], POLKIT_DETACH, "",
                 ("override", WIFI.id, Override(OverrideKind.HOST)), id="detach-on-host"),
    pytest.param(ROOT, MANAGER_IFACE, "ClearOverride", "s", [KBD.id], POLKIT_ATTACH,
                 POLICY_GUEST, ("override", KBD.id, None), id="clear"),
    pytest.param(ROOT, MANAGER_IFACE, "ClearOverride", "s", [WIFI.id], POLKIT_ATTACH_PCI,
                 POLICY_GUEST, ("override", WIFI.id, None), id="clear-pci"),
    pytest.param(KBD_PATH, DEVICE_IFACE, "Attach", "s", ["work"], POLKIT_ATTACH, "work",
                 ("override", KBD.id, Override(OverrideKind.ATTACH, "work")), id="device-attach"),
    pytest.param(KBD_PATH, DEVICE_IFACE, "Detach", "", [], POLKIT_DETACH, "work",
                 ("override", KBD.id, Override(OverrideKind.HOST)), id="device-detach"),
    pytest.param(KBD_PATH, DEVICE_IFACE, "ClearOverride", "", [], POLKIT_ATTACH, POLICY_GUEST,
                 ("override", KBD.id, None), id="device-clear"),
    pytest.param(ROOT, MANAGER_IFACE, "Reload", "", [], POLKIT_RELOAD, None, ("reload",),
                 id="reload"),
    pytest.param(ROOT, MANAGER_IFACE, "Forget", "s", [KBD.id], POLKIT_ANSWER, "",
                 ("forget", KBD.identity), id="forget-present"),
    pytest.param(ROOT, MANAGER_IFACE, "Forget", "s", ["usb:1050:0407:gone"], POLKIT_ANSWER,
                 None, ("forget", "usb:1050:0407:gone"), id="forget-gone"),
    pytest.param(REQUEST, REQUEST_IFACE, "Answer", "sb", ["work", True], POLKIT_ANSWER, "work",
                 ("answer", 1, "work", True), id="answer-guest"),
    pytest.param(REQUEST, REQUEST_IFACE, "Answer", "sb", ["", False], POLKIT_ANSWER,
                 "the host", ("answer", 1, "", False), id="answer-host"),
]


@pytest.mark.parametrize(("path", "interface", "member", "signature", "args", "polkit_id",
                          "guest_detail", "ran"), MUTATING)
def test_a_mutating_call_is_checked_then_run(path: str, interface: str, member: str,
                                             signature: str, args: list[Any], polkit_id: str,
                                             guest_detail: str | None, ran: tuple[Any, ...]):
    served = Served()
    assert served.call(path, interface, member, signature, args) is True
    ((checked, details),) = served.authority.checks
    assert checked == polkit_id
    assert details.get("guest") == guest_detail
    assert served.ops.calls == [ran]
    assert served.reply.message_type is MessageType.METHOD_RETURN


#: (path, interface, member, signature, args, allowed) → (error name, polkit asked)
REFUSED = [
    pytest.param(ROOT, MANAGER_IFACE, "Attach", "ss", ["usb:9-9", "work"], True,
                 NO_SUCH_DEVICE, False, id="no-such-device"),
    pytest.param(ROOT, MANAGER_IFACE, "Attach", "ss", [KBD.id, "nowhere"], True,
                 NO_SUCH_GUEST, False, id="no-such-guest"),
    pytest.param(ROOT, MANAGER_IFACE, "Detach", "s", [KBD.id], False, NOT_AUTHORIZED, True,
                 id="polkit-says-no"),
    pytest.param(request_path(2), REQUEST_IFACE, "Answer", "sb", ["work", False], True,
                 "me.phyllo.Phyllod1.Error.NoSuchRequest", False, id="request-gone"),
]


@pytest.mark.parametrize(("path", "interface", "member", "signature", "args", "allowed",
                          "error", "asked"), REFUSED)
def test_a_refused_call_runs_nothing(path: str, interface: str, member: str, signature: str,
                                     args: list[Any], allowed: bool, error: str, asked: bool):
    served = Served(allow=allowed)
    assert served.call(path, interface, member, signature, args) is True
    assert served.reply.error_name == error
    assert bool(served.authority.checks) is asked
    assert served.ops.calls == []


def test_a_device_replaced_while_authorization_waited_is_left_alone():
    served = Served()
    replaced = usb("1-2", vendor="1050", product="0407")

    async def check(sender: str, polkit_id: str, interactive: bool,
                    details: Mapping[str, str]) -> None:
        served.tree.publish(replace(snapshot(), devices={replaced.id: replaced}))
    served.authority.check = check  # type: ignore[method-assign]
    served.call(ROOT, MANAGER_IFACE, "Detach", "s", [KBD.id])
    assert served.reply.error_name == NO_SUCH_DEVICE
    assert "replaced by" in served.reply.body[0]
    assert served.ops.calls == []


#: Calls the gate leaves to dbus-fast (False), or drops because no reply is wanted (True).
PASSED_ON = [
    pytest.param(ROOT, MANAGER_IFACE, "Explain", "s", [KBD.id], MessageFlag.NONE, False,
                 id="a-read"),
    pytest.param(ROOT, MANAGER_IFACE, "Attach", "s", [KBD.id], MessageFlag.NONE, False,
                 id="wrong-signature"),
    pytest.param(device_path("usb:9-9"), DEVICE_IFACE, "Detach", "", [], MessageFlag.NONE,
                 False, id="unknown-object"),
    pytest.param(ROOT, MANAGER_IFACE, "Explain", "s", [KBD.id],
                 MessageFlag.NO_REPLY_EXPECTED, True, id="a-read-nobody-waits-for"),
]


@pytest.mark.parametrize(("path", "interface", "member", "signature", "args", "flags",
                          "taken"), PASSED_ON)
def test_what_the_gate_does_not_serve(path: str, interface: str, member: str, signature: str,
                                      args: list[Any], flags: MessageFlag, taken: bool):
    served = Served()
    assert served.call(path, interface, member, signature, args, flags) is taken
    assert served.authority.checks == [] and served.ops.calls == [] and served.bus.sent == []
