"""Operations: what the bus asks of the daemon (bus/service's ``Operations``).

A person's choice is an input like the others: a manual attach or detach
becomes an override, an answer closes its request; the call returns once a
reconcile has settled the device (:meth:`Operations.settle`). A change libvirt
must carry out is refused while libvirt is away, as virsh would refuse it.
Each method raises core/errors' typed errors, which the bus names.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Set
from typing import Protocol

from phyllod.core.bounds import excerpt
from phyllod.core.decide import Rung, decide
from phyllod.core.errors import Busy, Denied, Failed, NoSuchDevice, NoSuchGuest, NoSuchRequest
from phyllod.core.explain import explain
from phyllod.core.model import (
    Assignment,
    Device,
    Guest,
    HostFacts,
    Override,
    OverrideKind,
    Request,
    State,
    Subsystem,
    find_guest,
)
from phyllod.core.policy import Policy
from phyllod.core.safety.pci import TableRow, iommu_table, safety
from phyllod.host.systemd_glue import MessageId, notify
from phyllod.service.journal import fields, log

#: States in which a device is still moving: a settle waits them out.
_MOVING = (State.ATTACHING, State.DETACHING)


class Kept(Protocol):
    """The choices part, as the operations use it."""

    overrides: dict[str, Override]
    remembered: dict[str, str]

    async def keep_override(self, d: Device, override: Override | None) -> None: ...

    async def remember(self, d: Device, guest: str) -> None: ...

    async def forget(self, identity: str) -> None: ...


class Turns(Protocol):
    """The loop, as a settling call waits on it."""

    kicked: bool
    turns: int

    def kick(self) -> None: ...

    async def next_turn(self, timeout: float) -> None: ...


def deny_rule_refusal(policy: Policy, d: Device, override: Override) -> str | None:
    """Why a person's attach of ``d`` is refused at once: the ladder's top rung,
    a deny rule, outranks an override (core/decide holds the one ladder)."""
    decision = decide(policy, d, override=override)
    if decision.rung is Rung.DENY and decision.rule is not None:
        rule = decision.rule
        return f"{d.id} is denied by rule '{rule.name}' ({rule.file}:{rule.line})"
    return None


def settled(assignment: Assignment, in_flight: bool, kicked: bool, turned: bool) -> bool:
    """Whether a device a bus call changed has settled: a turn came after the change,
    and nothing about it is moving or asked for."""
    return turned and not (kicked or assignment.state in _MOVING or in_flight)


class Operations:
    """The bus's methods, and the devices a bus call is still carrying out."""

    def __init__(self, *, uri: str, manual_timeout: float,
                 devices: Callable[[], Mapping[str, Device]],
                 assignments: Callable[[], Mapping[str, Assignment]],
                 guests: Callable[[], Mapping[str, Guest] | None],
                 inflight: Callable[[], Set[str]],
                 requests: Callable[[], Mapping[int, Request]],
                 answered: Callable[[int, str, str], None],
                 policy: Callable[[], Policy | None], policy_errors: Callable[[], tuple[str, ...]],
                 load_policy: Callable[[], bool], forget_failures: Callable[[], None],
                 facts: Callable[[], HostFacts], read_facts: Callable[[], HostFacts],
                 choices: Kept, loop: Turns) -> None:
        self._uri = uri
        self._manual_timeout = manual_timeout
        self._devices = devices
        self._assignments = assignments
        self._guests = guests
        self._inflight = inflight
        self._requests = requests
        self._answered = answered
        self._policy = policy
        self._policy_errors = policy_errors
        self._load_policy = load_policy
        self._forget_failures = forget_failures
        self._facts = facts
        self._read_facts = read_facts
        self._choices = choices
        self._loop = loop
        #: Devices (by id) a bus call is carrying out: a second call for one is Busy.
        self._carrying_out: set[str] = set()

    def reload(self) -> bool:
        """SIGHUP and Reload: read the policy again; a broken one is refused as a whole."""
        notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        loaded = self._load_policy()
        if loaded:
            self._forget_failures()
        # Drivers can change without uevents (and mounts, where the holds watch
        # cannot listen); a reload is when a person says "look again".
        self._read_facts()
        self._loop.kick()
        notify("READY=1")
        return loaded

    def reload_policy(self) -> None:
        if not self.reload():
            raise Failed("the policy has errors; the previous policy stays in force:\n"
                         + "\n".join(self._policy_errors()))

    def iommu_groups(self) -> list[tuple[int, list[TableRow]]]:
        return iommu_table(self._facts())

    def explain(self, device_id: str) -> str:
        d = self._devices().get(device_id)
        a = self._assignments().get(device_id)
        if d is None or a is None:
            raise NoSuchDevice(f"no present device is named {excerpt(device_id)}")
        verdict = ""
        if d.subsystem is Subsystem.PCI:
            level, reason = safety(d.address, self._facts())
            verdict = f"{level}: {reason}" if reason else str(level)
        return explain(d, a, self._choices.overrides.get(d.identity),
                       self._choices.remembered.get(d.identity), verdict)

    async def set_override(self, device_id: str, override: Override | None) -> None:
        """A person's choice for a device: check, persist, then wait until it settled.

        Persisting comes first: if the state directory cannot be written, the
        choice is refused rather than kept only until the next restart.
        """
        d = self._devices().get(device_id)
        if d is None:
            raise NoSuchDevice(f"no present device is named {excerpt(device_id)}")
        policy = self._policy()
        if policy is None:
            raise Failed("the policy has errors; nothing moves until it is fixed and reloaded")
        self._need_libvirt()
        if device_id in self._carrying_out:
            raise Busy(f"another request for {device_id} is still being carried out")
        if override is not None and override.kind is OverrideKind.ATTACH:
            override = Override(OverrideKind.ATTACH, self._guest_name(override.guest))
            refusal = deny_rule_refusal(policy, d, override)
            if refusal is not None:
                raise Denied(refusal)
        await self._choices.keep_override(d, override)
        a = await self._carry_out(device_id)
        if a.state is State.DENIED and override is not None \
                and override.kind is OverrideKind.ATTACH:
            raise Denied(a.reason)

    async def answer(self, number: int, guest: str, remember: bool) -> None:
        """A person's answer to a request: record it (for good if asked), then settle."""
        r = self._requests().get(number)
        if r is None:
            raise NoSuchRequest(f"request {number} was answered, expired or withdrawn")
        d = self._devices()[r.device_id]
        if guest:
            self._need_libvirt()
            g = find_guest(guest, self._guests() or {})
            if g is None or g.name not in r.candidates:
                offers = ", ".join(r.candidates)
                raise NoSuchGuest(f"{excerpt(guest)} is not one of the guests offered for "
                                  f"{d.id} ({offers}); answer one of them or the host")
            guest = g.name
        if remember:
            await self._choices.remember(d, guest)
            if self._requests().get(number) is not r:  # expired or withdrawn during the save
                self._loop.kick()
                raise NoSuchRequest(f"request {number} was closed while its answer was "
                                    "saved; the answer is remembered for the device")
        self._answered(number, d.id, guest)
        log.info("request %d answered for %s: %s%s", number, d.describe(),
                 f"to '{guest}'" if guest else "keep on the host",
                 " (remembered)" if remember else "",
                 **fields(device=d.id, guest=guest, rule=r.rule, event=MessageId.ANSWERED))
        a = await self._carry_out(d.id)
        if a.state is State.DENIED and guest:
            raise Denied(a.reason)

    async def forget(self, identity: str) -> None:
        """Drop a remembered answer: the device is asked about again at its next plug."""
        await self._choices.forget(identity)
        self._loop.kick()

    async def settle(self, device_id: str) -> Assignment:
        """Wait for the first reconcile after a change, then until nothing is moving."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._manual_timeout
        since = self._loop.turns
        self._loop.kick()
        while True:
            a = self._assignments().get(device_id)
            d = self._devices().get(device_id)
            if a is None or d is None:
                raise Failed(f"{device_id} was unplugged")
            if settled(a, d.slot in self._inflight(), self._loop.kicked,
                       self._loop.turns > since):
                break
            left = deadline - loop.time()
            if left <= 0:
                raise Failed(f"{device_id} is still {a.state} after "
                             f"{self._manual_timeout:.0f}s: {a.reason}")
            await self._loop.next_turn(left)
        if a.state is State.FAILED:
            raise Failed(a.reason)
        return a

    async def _carry_out(self, device_id: str) -> Assignment:
        """Settle a device for a bus call; meanwhile a second call for it is Busy."""
        self._carrying_out.add(device_id)
        try:
            return await self.settle(device_id)
        finally:
            self._carrying_out.discard(device_id)

    def _need_libvirt(self) -> None:
        """Accepted while libvirt is away, a change would be reported settled when
        nothing moved: refuse it."""
        if self._guests() is None:
            raise Failed(f"libvirt at {self._uri} is not connected (phyllod is waiting "
                         "for it); nothing was changed: try again once it is")

    def _guest_name(self, ref: str) -> str:
        g = find_guest(ref, self._guests() or {})
        if g is None:
            raise NoSuchGuest(f"no guest named {excerpt(ref)} is defined")
        return g.name
