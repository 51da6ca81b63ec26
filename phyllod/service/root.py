"""The one place that wires the adapters to the core.

Every input (udev, libvirt events, signals, the end of a libvirt call)
updates the snapshot and asks for a reconcile; reconcile's actions run as
tasks whose results come back as snapshot updates. Work in flight is marked
before its task starts, so no second reconcile can issue it again.

The bus is an input like the others: a manual attach or detach becomes an
override in the snapshot, and the call returns once reconcile has settled the
device. Every reconcile's result is published on the bus.

Ask mode: reconcile names the newly plugged devices to ask about; the daemon
opens a request for each (with a deadline timer), and an answer, a deadline
or an unplug closes it. Answers are inputs like overrides.

Real life: an unplug is believed only after the device's debounce window (a
KVM switch, a flaky cable, a firmware reset make devices vanish and return);
a device that returns in time is the same plug. logind's PrepareForSleep
puts the snapshot to sleep (reconcile takes USB devices back), and phyllod
lets the sleep proceed once they are out or the inhibitor's time is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from phyllod import __version__
from phyllod.bus.logind import SleepWatcher
from phyllod.bus.service import BusError, BusService, Snapshot
from phyllod.core.bounds import excerpt
from phyllod.core.errors import (
    Busy,
    Denied,
    Failed,
    NoSuchDevice,
    NoSuchGuest,
    NoSuchRequest,
)
from phyllod.core.explain import explain
from phyllod.core.guest_runs import (
    BindVerdict,
    HostBind,
    Run,
    holds_on,
    host_bind,
    judge_bind,
    run_of,
)
from phyllod.core.hostdev_xml import hostdev_xml
from phyllod.core.model import (
    Ask,
    AskOutcome,
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
from phyllod.core.plan import (
    Attach,
    Detach,
    Failure,
    Operation,
    OpKind,
    Plan,
    Question,
    Sleep,
    World,
    record_failure,
)
from phyllod.core.policy import DEFAULT_ASK_TIMEOUT, DEFAULT_DEBOUNCE, Action, Policy
from phyllod.core.policy_problems import PolicyError
from phyllod.core.reconcile import reconcile
from phyllod.core.safety.pci import TableRow, iommu_table, safety
from phyllod.core.serial_trust import carry_choices, with_identities
from phyllod.host.libvirt_client import LibvirtClient, LibvirtError
from phyllod.host.policy_files import load_policy_dir
from phyllod.host.state_store import (
    StateError,
    StateWriter,
    load_answers,
    load_overrides,
    remove_leftovers,
)
from phyllod.host.sysfs import read_host_facts
from phyllod.host.systemd_glue import MessageId, notify, watchdog_interval
from phyllod.host.udev_source import (
    DeviceGone,
    DeviceSeen,
    DevicesRescanned,
    UdevEvent,
    UdevWatcher,
)
from phyllod.host.usb_reset import UsbResetError, reset_usb_device
from phyllod.service import fault_points

log = logging.getLogger("phyllod")
T = TypeVar("T")

RECONNECT_MAX_DELAY = 30.0
#: How long a start-up step may wait for the bus or logind before it gives up.
START_TIMEOUT = 30.0
#: After this long without an answer from libvirt, say so (and keep waiting).
CONNECT_PATIENCE = 10.0
_TRANSITIONS = (State.ATTACHING, State.DETACHING)


@dataclass(frozen=True, slots=True)
class Config:
    policy_dir: Path
    uri: str = "qemu:///system"
    #: How long a guest may take to release a device after a detach returned.
    detach_timeout: float = 30.0
    #: How long a stop waits for libvirt calls already issued.
    stop_timeout: float = 30.0
    #: "system", "session", a D-Bus address, or "none" (no bus at all).
    bus: str = "system"
    #: Where manual overrides are kept (systemd's StateDirectory=).
    state_dir: Path = Path("/var/lib/phyllod")
    #: How long a manual attach/detach call waits for the device to settle.
    manual_timeout: float = 90.0
    #: After resume, how long devices may take to come back before any is attached.
    resume_settle: float = 2.0
    #: How long giving a PCI function back to its host driver may take.
    to_host_timeout: float = 30.0
    #: How long a host driver's bind on a device in a guest is watched before it
    #: counts as the host taking it back: a stopping guest lets go of its devices
    #: first, and libvirt says that it stopped only just after.
    release_grace: float = 2.0


def _fields(device: str = "", guest: str = "", rule: str = "", state: str = "",
            event: MessageId | None = None) -> dict:
    """Journal fields of a log record (``journalctl PHYLLOD_GUEST=work``)."""
    extra = {"PHYLLOD_DEVICE": device, "PHYLLOD_GUEST": guest, "PHYLLOD_RULE": rule,
             "PHYLLOD_STATE": state}
    if event is not None:
        extra["MESSAGE_ID"] = str(event)
    return {"extra": extra}



def _log_failed_save(future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("%s", future.exception())
def _same_device(a: Device, b: Device) -> bool:
    """Whether ``b`` is ``a`` enumerated again (reset, re-plug, resume), not another device.

    Both are in the same port; ``b`` comes straight from udev, its identity
    not yet judged against the present set, so the serial itself is compared.
    """
    return (a.vendor, a.product, a.serial) == (b.vendor, b.product, b.serial)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.policy: Policy | None = None
        self.policy_errors: tuple[str, ...] = ()
        self.overrides: dict[str, Override] = {}
        self.devices: dict[str, Device] = {}
        #: The devices as last judged by serial_trust (whose choices went where).
        self._judged: dict[str, Device] = {}
        self.guests: dict[str, Guest] | None = None
        self.inflight: dict[str, Operation] = {}
        self.failures: dict[str, Failure] = {}
        self.assignments: dict[str, Assignment] = {}
        #: Ask mode: per plug (by device id), remembered (by identity), open requests.
        self.asks: dict[str, Ask] = {}
        self.remembered: dict[str, str] = {}
        #: Saves run off the loop; the lock keeps each read-change-save-keep of the
        #: choices whole (two bus calls at once must not save from the same copy).
        self.state = StateWriter(config.state_dir)
        self._state_lock = asyncio.Lock()
        self.inserted: set[str] = set()
        #: Debounce: vanished devices (by id) → when phyllod stops waiting for them.
        self.vanished: dict[str, float] = {}
        self._vanish_timers: dict[str, asyncio.TimerHandle] = {}
        #: Host drivers' binds on devices in guests (by slot): watched, then judged.
        self.binds: dict[str, HostBind] = {}
        self._bind_timers: dict[str, asyncio.TimerHandle] = {}
        #: Guest runs libvirt said stopped or are shutting down (before a re-read shows it).
        self.ending: set[Run] = set()
        #: The host's sleep; devices that left their guests for it.
        self.sleep: Sleep | None = None
        self.slept: set[str] = set()
        self._sleep_timer: asyncio.TimerHandle | None = None
        self.requests: dict[int, Request] = {}
        self._request_timers: dict[int, asyncio.TimerHandle] = {}
        self._next_request = 1
        self.client = LibvirtClient(config.uri, self._on_guest_event,
                                    self._on_device_removed, self._on_lost)
        self.udev = UdevWatcher(self._on_udev)
        self._released: dict[tuple[str, str], asyncio.Event] = {}
        self._tasks: set[asyncio.Task] = set()
        self._kicked = False
        self._wake: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task | None = None
        self._logind: asyncio.Task | None = None
        self._first_attempt = asyncio.Event()
        self._stopping = False
        self._stop = asyncio.Event()
        self._status = ""
        self.exit_code = 0
        #: Bumped by every reconcile; a manual call waits for one after its change.
        self._generation = 0
        self._reconciled = asyncio.Event()
        self._manual: set[str] = set()
        self.bus = (BusService(config.bus, self, self._on_bus_lost)
                    if config.bus != "none" else None)
        self.sleep_watcher = (SleepWatcher(config.bus, self._on_prepare_for_sleep)
                              if config.bus != "none" else None)
        #: Host facts (drivers, groups, mounts, keyboards) are read at most once per
        #: loop turn: a plug is several uevents, and in a slow VM one read costs
        #: ~0.3 s; read per event, they held the attach back by a second or more.
        self._facts_stale = False
        self.facts_reads = 0
        self.host = self._read_facts()

    # ------------------------------------------------------------ life cycle

    async def run(self) -> None:
        """Start, serve until SIGTERM, stop. A SIGTERM during the start is heard at once."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR1, self._log_memory)
        self._watchdog(watchdog_interval())
        starting = loop.create_task(self._start())
        stopped = loop.create_task(self._stop.wait())
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            log.info("stopped while starting")
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
        elif starting.result():
            await stopped
        stopped.cancel()
        await self._shutdown()

    async def _start(self) -> bool:
        """The start, in order; False if phyllod cannot serve (then it exits with 1).

        libvirt is connected in the background (a hung libvirtd never answers
        ``open``) while the bus is served; READY=1 waits for that first attempt
        (so that "started" means "connected" when libvirt answers) at most
        ``CONNECT_PATIENCE``. Every wait on another party is bounded.
        """
        loop = asyncio.get_running_loop()
        self._load_policy(initial=True)
        remove_leftovers(self.config.state_dir)
        self.overrides = load_overrides(self.config.state_dir)
        if self.overrides:
            log.info("%d manual overrides from %s", len(self.overrides), self.config.state_dir)
        self.remembered = load_answers(self.config.state_dir)
        if self.remembered:
            log.info("%d remembered answers from %s", len(self.remembered),
                     self.config.state_dir)
        for d in self.udev.start(loop):
            self.devices[d.id] = d
            log.info("%s present at start", d.describe(), **_fields(device=d.id))
        self._judge_identities()
        pci = sum(d.subsystem is Subsystem.PCI for d in self.devices.values())
        log.info("%d USB and %d PCI devices present at start", len(self.devices) - pci, pci)
        self._start_reconnect(at_once=True)
        self._reconcile()
        if self.bus is not None:
            try:
                await asyncio.wait_for(self.bus.connect(self._snapshot()), START_TIMEOUT)
            except (BusError, TimeoutError) as e:
                log.error("%s", str(e) or f"the {self.config.bus} bus did not answer within "
                          f"{START_TIMEOUT:.0f}s")
                self.exit_code = 1
                return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), CONNECT_PATIENCE)
        self._reconcile()  # what READY=1 announces is on the bus, guests included
        notify("READY=1")
        log.info("phyllod %s ready", __version__, **_fields(event=MessageId.STARTED))
        self._notify_status()
        if self.sleep_watcher is not None:
            self._logind = loop.create_task(self._watch_sleep(self.sleep_watcher))
        return True

    @staticmethod
    async def _watch_sleep(watcher: SleepWatcher) -> None:
        """logind's inhibitor, after READY=1: a logind that never answers costs
        only the sleep handling (bounded; the watcher warns and phyllod runs on)."""
        try:
            await asyncio.wait_for(watcher.start(), START_TIMEOUT)
        except TimeoutError:
            log.warning("sleep: logind did not answer within %.0fs; devices stay attached "
                        "across suspend", START_TIMEOUT)
            watcher.close()

    async def _shutdown(self) -> None:
        """Stop taking decisions; let issued calls finish and be logged; touch nothing."""
        notify("STOPPING=1")
        self._stopping = True
        log.info("stopping; devices stay where they are")
        self.udev.stop()
        if self._wake is not None:
            self._wake.cancel()
        for starting in (self._connecting, self._logind):
            if starting is not None:
                starting.cancel()
        for released in self._released.values():
            released.set()  # the detach calls have returned; do not wait for QEMU
        for timer in [*self._request_timers.values(), *self._vanish_timers.values(),
                      *self._bind_timers.values()]:
            timer.cancel()
        if self._sleep_timer is not None:
            self._sleep_timer.cancel()
        if self._tasks:
            log.info("waiting for %d libvirt calls to finish", len(self._tasks))
            await asyncio.wait(self._tasks, timeout=self.config.stop_timeout)
        await self.client.close()
        if self.sleep_watcher is not None:
            self.sleep_watcher.close()  # a sleep waiting for us proceeds
        if self.bus is not None:
            self.bus.close()

    def _log_memory(self) -> None:
        """SIGUSR1 (``kill -USR1 $(pidof phyllod)``): log memory and open fds in one line,
        and what the bus costs (BusService.stats_line) in a second.

        For an admin who suspects a leak (compare two lines hours apart) as for
        the load tests. RSS and fds always; the Python heap now and at its peak
        only while tracemalloc traces: PYTHONTRACEMALLOC=1 in the daemon's
        environment (``Environment=`` in a drop-in), which slows it down.
        """
        import gc
        import tracemalloc

        gc.collect()  # garbage in reference cycles is no leak
        traced = ""
        if tracemalloc.is_tracing():
            now, peak = tracemalloc.get_traced_memory()
            traced = f"traced {now / 1024:.0f} KiB (peak {peak / 1024:.0f} KiB), "
        rss = next((int(line.split()[1]) for line in Path("/proc/self/status").read_text()
                    .splitlines() if line.startswith("VmRSS:")), 0) / 1024
        fds = sum(1 for _ in Path("/proc/self/fd").iterdir()) - 1  # not the one listing it
        log.info("memory: %srss %.1f MiB, %d fds, %d devices, %d guests; host facts read "
                 "%d times", traced, rss, fds, len(self.devices), len(self.guests or {}),
                 self.facts_reads)
        if self.bus is not None:
            log.info("%s", self.bus.stats_line())

    def _watchdog(self, interval: float | None) -> None:
        """Ping systemd from the loop itself: a loop that hangs stops pinging and is restarted."""
        if interval is None or self._stopping:
            return
        notify("WATCHDOG=1")
        asyncio.get_running_loop().call_later(interval, self._watchdog, interval)

    def _on_bus_lost(self) -> None:
        """Without the bus phyllod cannot be steered: exit so systemd restarts it."""
        self.exit_code = 1
        self._stop.set()

    # ------------------------------------------------------------ policy

    def _load_policy(self, initial: bool = False) -> bool:
        try:
            policy = load_policy_dir(self.config.policy_dir)
        except PolicyError as e:
            self.policy_errors = tuple(str(p) for p in e.problems)
            for problem in e.problems:
                log.error("policy: %s", problem,
                          **_fields(rule=problem.rule, event=MessageId.POLICY_REFUSED))
            if initial:
                log.error("no usable policy: phyllod moves nothing until it is fixed and "
                          "reloaded (systemctl reload phyllod, or SIGHUP)")
            else:
                log.error("policy reload refused; the previous policy stays in force")
            return False
        self.policy = policy
        self.policy_errors = ()
        log.info("policy: %d rules from %d files in %s", len(policy.rules), len(policy.files),
                 self.config.policy_dir, **_fields(event=MessageId.POLICY_LOADED))
        return True

    def reload(self) -> bool:
        """SIGHUP: read the policy again; a broken one is refused as a whole."""
        notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        loaded = self._load_policy()
        if loaded:
            self.failures.clear()
        # Mounts and drivers change without uevents; a reload is when a person
        # who unmounted a stick or rebound a driver says "look again".
        self.host = self._read_facts()
        self._kick()
        notify("READY=1")
        return loaded

    # ------------------------------------------------------------ the bus's requests

    def reload_policy(self) -> None:
        if not self.reload():
            raise Failed("the policy has errors; the previous policy stays in force:\n"
                         + "\n".join(self.policy_errors))

    def iommu_groups(self) -> list[tuple[int, list[TableRow]]]:
        return iommu_table(self._facts())

    def explain(self, device_id: str) -> str:
        d = self.devices.get(device_id)
        a = self.assignments.get(device_id)
        if d is None or a is None:
            raise NoSuchDevice(f"no present device is named {excerpt(device_id)}")
        verdict = ""
        if d.subsystem is Subsystem.PCI:
            level, reason = safety(d.address, self._facts())
            verdict = f"{level}: {reason}" if reason else str(level)
        return explain(d, a, self.overrides.get(d.identity), self.remembered.get(d.identity),
                       verdict)

    async def set_override(self, device_id: str, override: Override | None) -> None:
        """A person's choice for a device: check, persist, then wait until it settled.

        Persisting comes first: if the state directory cannot be written, the
        choice is refused rather than kept only until the next restart.
        """
        d = self.devices.get(device_id)
        if d is None:
            raise NoSuchDevice(f"no present device is named {excerpt(device_id)}")
        if self.policy is None:
            raise Failed("the policy has errors; nothing moves until it is fixed and reloaded")
        self._need_libvirt()
        if device_id in self._manual:
            raise Busy(f"another request for {device_id} is still being carried out")
        if override is not None and override.kind is OverrideKind.ATTACH:
            override = Override(OverrideKind.ATTACH, self._guest_name(override.guest))
            rule = self.policy.match(d)
            if rule is not None and rule.action is Action.DENY:
                raise Denied(f"{d.id} is denied by rule '{rule.name}' ({rule.file}:{rule.line})")
        async with self._state_lock:
            judged = self._judged
            overrides = dict(self.overrides)
            if override is None:
                overrides.pop(d.identity, None)
            else:
                overrides[d.identity] = override
            if overrides != self.overrides:
                self.overrides = await self._persist(self.state.save_overrides, overrides,
                                                     judged, d.id)
                what = f"{override.kind} {override.guest}".strip() if override else "cleared"
                log.info("manual override for %s: %s", d.describe(), what,
                         **_fields(device=d.id, guest=override.guest if override else "",
                                   event=MessageId.OVERRIDE))
        self._manual.add(device_id)
        try:
            a = await self._settle(device_id)
        finally:
            self._manual.discard(device_id)
        if a.state is State.DENIED and override is not None \
                and override.kind is OverrideKind.ATTACH:
            raise Denied(a.reason)

    def _need_libvirt(self) -> None:
        """A change libvirt must carry out is refused while it is away, as virsh would
        refuse it: accepted now, it would be reported settled when nothing moved."""
        if self.guests is None:
            raise Failed(f"libvirt at {self.config.uri} is not connected (phyllod is waiting "
                         "for it); nothing was changed: try again once it is")

    def _guest_name(self, ref: str) -> str:
        g = find_guest(ref, self.guests or {})
        if g is None:
            raise NoSuchGuest(f"no guest named {excerpt(ref)} is defined")
        return g.name

    async def answer(self, number: int, guest: str, remember: bool) -> None:
        """A person's answer to a request: record it (for good if asked), then settle."""
        r = self.requests.get(number)
        if r is None:
            raise NoSuchRequest(f"request {number} was answered, expired or withdrawn")
        d = self.devices[r.device_id]
        if guest:
            self._need_libvirt()
            g = find_guest(guest, self.guests or {})
            if g is None or g.name not in r.candidates:
                offers = ", ".join(r.candidates)
                raise NoSuchGuest(f"{excerpt(guest)} is not one of the guests offered for "
                                  f"{d.id} ({offers}); answer one of them or the host")
            guest = g.name
        if remember:
            async with self._state_lock:
                judged = self._judged
                remembered = {**self.remembered, d.identity: guest}
                self.remembered = await self._persist(self.state.save_answers, remembered,
                                                      judged, d.id)
            if self.requests.get(number) is not r:  # expired or withdrawn during the save
                self._kick()
                raise NoSuchRequest(f"request {number} was closed while its answer was "
                                    "saved; the answer is remembered for the device")
        self._close_request(number)
        self.asks[d.id] = Ask(AskOutcome.ANSWERED, guest)
        log.info("request %d answered for %s: %s%s", number, d.describe(),
                 f"to '{guest}'" if guest else "keep on the host",
                 " (remembered)" if remember else "",
                 **_fields(device=d.id, guest=guest, rule=r.rule, event=MessageId.ANSWERED))
        self._manual.add(d.id)
        try:
            a = await self._settle(d.id)
        finally:
            self._manual.discard(d.id)
        if a.state is State.DENIED and guest:
            raise Denied(a.reason)

    async def forget(self, identity: str) -> None:
        """Drop a remembered answer: the device is asked about again at its next plug."""
        async with self._state_lock:
            judged = self._judged
            if identity not in self.remembered:
                raise NoSuchDevice(f"no answer is remembered for {excerpt(identity)}")
            remembered = {k: v for k, v in self.remembered.items() if k != identity}
            self.remembered = await self._persist(self.state.save_answers, remembered, judged)
        log.info("forgot the remembered answer for %s", identity, **_fields(device=identity))
        self._kick()

    def _notes(self, by_identity: dict[str, object]) -> dict[str, str]:
        """Device descriptions for the entries of a state file, to help a reader."""
        return {d.identity: d.describe() for d in self.devices.values()
                if d.identity in by_identity}

    async def _settle(self, device_id: str) -> Assignment:
        """Wait for the first reconcile after a change, then until nothing is moving."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.manual_timeout
        since = self._generation
        self._kick()
        while True:
            a = self.assignments.get(device_id)
            d = self.devices.get(device_id)
            if a is None or d is None:
                raise Failed(f"{device_id} was unplugged")
            moving = (self._kicked or a.state in _TRANSITIONS or d.slot in self.inflight)
            if self._generation > since and not moving:
                break
            left = deadline - loop.time()
            if left <= 0:
                raise Failed(f"{device_id} is still {a.state} after "
                              f"{self.config.manual_timeout:.0f}s: {a.reason}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconciled.wait(), left)
        if a.state is State.FAILED:
            raise Failed(a.reason)
        return a

    # ------------------------------------------------------------ libvirt connection

    async def _try_connect(self, log_failure: bool) -> bool:
        attempt = asyncio.ensure_future(self._open_libvirt())
        if not (await asyncio.wait({attempt}, timeout=CONNECT_PATIENCE))[0]:
            log.warning("%s does not answer after %.0fs; waiting for it (the bus is served "
                        "meanwhile, and changes that need libvirt are refused)",
                        self.config.uri, CONNECT_PATIENCE)
        try:
            guests = await attempt
        except LibvirtError as e:
            self.client.mark_lost()
            if log_failure:
                log.warning("cannot connect to %s: %s; retrying", self.config.uri, e.message)
            return False
        self.guests = guests
        self.failures.clear()
        log.info("connected to %s: %d guests, %d running", self.config.uri, len(guests),
                 sum(g.state.active for g in guests.values()),
                 **_fields(event=MessageId.LIBVIRT_CONNECTED))
        self._kick()
        return True

    async def _open_libvirt(self) -> dict[str, Guest]:
        await self.client.connect()
        return await self.client.guests()

    def _start_reconnect(self, at_once: bool = False) -> None:
        if self._stopping or (self._connecting is not None and not self._connecting.done()):
            return
        self._connecting = asyncio.get_running_loop().create_task(self._reconnect(at_once))

    async def _reconnect(self, at_once: bool = False) -> None:
        """Connect in the background, with backoff (0.5 s doubling to 30 s); at start
        the first attempt is made at once and its failure logged."""
        delay = 0.5
        if at_once:
            connected = await self._try_connect(log_failure=True)
            self._first_attempt.set()
            if connected:
                return
        while not self._stopping:
            await asyncio.sleep(delay)
            if await self._try_connect(log_failure=delay >= RECONNECT_MAX_DELAY):
                return
            delay = min(delay * 2, RECONNECT_MAX_DELAY)

    def _on_lost(self, reason: str) -> None:
        if self.guests is None:
            return
        log.warning("lost the connection to %s (%s); reconnecting", self.config.uri, reason,
                    **_fields(event=MessageId.LIBVIRT_LOST))
        self.guests = None
        self._kick()
        self._start_reconnect()

    def _connection_failed(self, error: LibvirtError) -> None:
        self.client.mark_lost()
        self._on_lost(error.message)

    # ------------------------------------------------------------ inputs

    def _on_udev(self, event: UdevEvent) -> None:
        # Drivers, groups, mounts and keyboards weigh in the verdicts; each
        # event may change them (a hub brings keyboards, a PCI rebind a group):
        # they are read again before the next decision (_facts), once for all
        # the events that came in meanwhile.
        self._facts_stale = True
        if isinstance(event, DeviceGone):
            self._vanish(event.device_id)
        elif isinstance(event, DeviceSeen):
            self._seen(event)
        elif isinstance(event, DevicesRescanned):
            for device_id in list(self.vanished):
                self._stop_waiting(device_id)
            fresh = {d.id: d for d in event.devices}
            for d in self.devices.values():
                if fresh.get(d.id) != d:
                    self.failures.pop(d.slot, None)
            for d in fresh.values():
                before = self.devices.get(d.id)
                if before is None or before.devnum != d.devnum:
                    self._plug_ended(d.id, "plugged in again")
                    self.inserted.add(d.id)
            for device_id in self.devices.keys() - fresh.keys():
                self._plug_ended(device_id, "unplugged")
            self.devices = fresh
        self._judge_identities()
        self._kick()

    def _vanish(self, device_id: str) -> None:
        """A ``remove``: believe it only after the device's debounce window."""
        d = self.devices.get(device_id)
        if d is None or device_id in self.vanished:
            return
        wait = self.policy.debounce(d) if self.policy is not None else DEFAULT_DEBOUNCE
        if self.sleep is not None:
            wait = max(wait, self.config.resume_settle)  # resume re-enumerates slowly
        if wait <= 0 or self._stopping:
            self._gone(device_id)
            return
        loop = asyncio.get_running_loop()
        self.vanished[device_id] = loop.time() + wait
        self._vanish_timers[device_id] = loop.call_later(wait, self._gone, device_id)
        log.info("%s vanished; waiting %.1fs for it to return", d.describe(), wait,
                 **_fields(device=d.id))

    def _stop_waiting(self, device_id: str) -> None:
        self.vanished.pop(device_id, None)
        timer = self._vanish_timers.pop(device_id, None)
        if timer is not None:
            timer.cancel()

    def _gone(self, device_id: str) -> None:
        """The device did not return in time (or has no window): it is unplugged."""
        self._stop_waiting(device_id)
        d = self.devices.pop(device_id, None)
        self._plug_ended(device_id, "unplugged")
        if d is not None:
            self.failures.pop(d.slot, None)
            self._drop_bind(d.slot)
            log.info("%s unplugged", d.describe(),
                     **_fields(device=d.id, event=MessageId.DEVICE_REMOVED))
        self._judge_identities()
        self._kick()

    def _judge_identities(self) -> None:
        """After every change to the present set: which serials are identity
        (serial_trust); a device whose identity changed takes its choices along."""
        self.devices = with_identities(self.devices)
        before, self._judged = self._judged, dict(self.devices)
        for d in self.devices.values():
            if d.serial_doubt and before.get(d.id) != d:
                log.info("%s: %s; identified by its port", d.describe(), d.serial_doubt,
                         **_fields(device=d.id))
        overrides = carry_choices(self.overrides, before, self.devices)
        if overrides != self.overrides:
            self.overrides = overrides
            self._save_later(self.state.save_overrides, overrides)
        remembered = carry_choices(self.remembered, before, self.devices)
        if remembered != self.remembered:
            self.remembered = remembered
            self._save_later(self.state.save_answers, remembered)

    async def _persist(self, save: Callable[[dict[str, T], dict[str, str]], asyncio.Future[None]],
                       choices: dict[str, T], judged: dict[str, Device],
                       device_id: str = "") -> dict[str, T]:
        """Save a person's choices (the caller holds the state lock) and return what is
        current then (_since); a failed save reaches the caller as Failed, and the log."""
        try:
            await save(choices, self._notes(choices))
        except StateError as e:
            log.error("%s", e, **_fields(device=device_id))
            raise Failed(str(e)) from None
        return self._since(judged, choices, save)

    def _save_later(self, save: Callable[[dict[str, T], dict[str, str]], asyncio.Future[None]],
                    choices: dict[str, T]) -> None:
        """Queue a save that no caller waits for (choices a device took along).

        It takes its place in the writer's line at once, so it is never
        overtaken; if it fails the choice still holds in memory for this run.
        """
        save(choices, self._notes(choices)).add_done_callback(_log_failed_save)

    def _since(self, judged: dict[str, Device], choices: dict[str, T],
               save: Callable[[dict[str, T], dict[str, str]], asyncio.Future[None]],
               ) -> dict[str, T]:
        """``choices`` as just saved, with what identities were judged since ``judged``
        (a twin came or went while the save ran) carried along, as
        _judge_identities carried the choices that were current then."""
        if self._judged is judged:
            return choices
        carried = carry_choices(choices, judged, self._judged)
        if carried != choices:
            self._save_later(save, carried)
        return carried

    def _seen(self, event: DeviceSeen) -> None:
        d = event.device
        previous = self.devices.get(d.id)
        if event.host_driver:
            self._host_bound(d, event.host_driver)
        returned = d.id in self.vanished
        self._stop_waiting(d.id)
        self.devices[d.id] = d
        if previous is not None and returned and _same_device(previous, d):
            # Back within its window: the same plug, its guest and answer kept.
            log.info("%s returned (bus %d device %d)", d.describe(), d.busnum, d.devnum,
                     **_fields(device=d.id, event=MessageId.DEVICE_ADDED))
            self.failures.pop(d.slot, None)
            return
        if previous is None or previous.devnum != d.devnum or not _same_device(previous, d):
            self._plug_ended(d.id, "plugged in again")
            self.inserted.add(d.id)
            self.failures.pop(d.slot, None)
            log.info("%s plugged in (udev %s)", d.describe(), event.action,
                     **_fields(device=d.id, event=MessageId.DEVICE_ADDED))

    def _host_bound(self, d: Device, driver: str) -> None:
        """A host driver bound to a device phyllod placed in a guest: a reset on the
        host took it back (repair: detach, attach again), or the guest let go of it
        as it stopped (nothing to do). Watched for ``release_grace``, then judged on
        the guest read again (``guest_runs``)."""
        guests = self.guests or {}
        bind = host_bind(d.slot, driver, self.assignments.get(d.id), guests,
                         self.inflight.keys(), self.ending)
        if bind is None:
            return  # not in a guest by phyllod's doing, or bound during our own call
        fields = _fields(device=d.id, guest=bind.guest)
        if judge_bind(bind, guests.get(bind.guest), self.ending) is BindVerdict.LET_GO:
            log.info("%s: the host's %s bound it as '%s' let go of it as it stopped; "
                     "not a reset", d.describe(), driver, bind.guest, **fields)
            return
        self._drop_bind(d.slot)
        self.binds[d.slot] = bind
        self._bind_timers[d.slot] = asyncio.get_running_loop().call_later(
            self.config.release_grace, self._spawn_judge, d.slot, bind)
        log.info("%s: the host's %s bound it while in '%s'; watching %.1fs whether '%s' "
                 "is letting go of it", d.describe(), driver, bind.guest,
                 self.config.release_grace, bind.guest, **fields)

    def _spawn_judge(self, slot: str, bind: HostBind) -> None:
        self._bind_timers.pop(slot, None)
        self._spawn(self._judge_bind(slot, bind))

    async def _judge_bind(self, slot: str, bind: HostBind) -> None:
        """After the grace window: read the guest again, then judge the bind."""
        await self._refresh_guest(bind.guest)
        if self.binds.get(slot) != bind:
            return  # judged meanwhile (the run ended), or the device left
        if self.guests is None:
            self._drop_bind(slot)  # libvirt is away: its return resyncs every guest
            return
        checked = HostBind(run=bind.run, guest=bind.guest, alias=bind.alias, driver=bind.driver,
                           checked=True)
        d = self._on_slot(slot)
        if d is not None and judge_bind(checked, self._guest_of(bind),
                                        self.ending) is BindVerdict.TAKEN_BACK:
            self.binds[slot] = checked
            log.warning("%s: the host's %s took it back while in '%s' (a reset on the "
                        "host?); attaching it again", d.describe(), bind.driver, bind.guest,
                        **_fields(device=d.id, guest=bind.guest))
        else:
            self._let_go(slot)
        self._kick()

    def _let_go(self, slot: str) -> None:
        """A watched bind was the guest letting go of the device: drop the mark."""
        bind = self.binds.get(slot)
        if bind is None:
            return
        self._drop_bind(slot)
        d = self._on_slot(slot)
        if d is None:
            return
        how = ("released it" if holds_on(self._guest_of(bind), bind.run, self.ending)
               else "as it stopped")
        log.info("%s: '%s' let go of it %s; not a reset", d.describe(), bind.guest, how,
                 **_fields(device=d.id, guest=bind.guest))

    def _on_slot(self, slot: str) -> Device | None:
        return next((d for d in self.devices.values() if d.slot == slot), None)

    def _guest_of(self, bind: HostBind) -> Guest | None:
        """The guest whose run left ``bind``, as last read (by UUID: names may change)."""
        return next((g for g in (self.guests or {}).values() if g.uuid == bind.run.uuid), None)

    def _drop_bind(self, slot: str) -> None:
        self.binds.pop(slot, None)
        timer = self._bind_timers.pop(slot, None)
        if timer is not None:
            timer.cancel()

    # ------------------------------------------------------------ sleep

    def _on_prepare_for_sleep(self, going: bool) -> None:
        loop = asyncio.get_running_loop()
        if self._sleep_timer is not None:
            self._sleep_timer.cancel()
            self._sleep_timer = None
        if going:
            assert self.sleep_watcher is not None
            self.sleep = Sleep()
            self.slept.clear()
            # Leave logind a margin: never make the sleep wait out its maximum.
            budget = max(0.0, self.sleep_watcher.max_delay * 0.8)
            self._sleep_timer = loop.call_later(budget, self._let_sleep, True)
            log.info("the host is going to sleep; taking back USB devices (at most %.1fs)",
                     budget, **_fields(event=MessageId.SLEEP))
        else:
            self.sleep = Sleep(waking_until=loop.time() + self.config.resume_settle)
            self._sleep_timer = loop.call_later(self.config.resume_settle, self._kick)
            self.failures.clear()
            log.info("the host resumed; attaching devices again in %.1fs",
                     self.config.resume_settle, **_fields(event=MessageId.RESUME))
            if self.sleep_watcher is not None:
                self._spawn(self.sleep_watcher.reacquire())
        self._kick()

    def _let_sleep(self, out_of_time: bool = False) -> None:
        """Close the inhibitor: logind proceeds with the sleep."""
        if self._sleep_timer is not None:
            self._sleep_timer.cancel()
            self._sleep_timer = None
        if self.sleep_watcher is None or not self.sleep_watcher.holding:
            return
        still = sorted(device_id for device_id, a in self.assignments.items()
                       if a.state is State.DETACHING)
        if out_of_time and still:
            log.warning("sleep cannot wait longer; still in guests: %s", ", ".join(still),
                        **_fields(event=MessageId.SLEEP))
        else:
            log.info("ready for sleep: %d devices taken back", len(self.slept),
                     **_fields(event=MessageId.SLEEP))
        self.sleep_watcher.release()

    def _sleep_progress(self, plan: Plan) -> None:
        """Asleep: note who left for it; once nothing is leaving, let the sleep go on."""
        if self.sleep is None:
            return
        if self.sleep.waking_until is not None:
            if asyncio.get_running_loop().time() >= self.sleep.waking_until:
                self.sleep = None
                missing = sorted(self.slept - self.devices.keys())
                if missing:
                    log.warning("not back after sleep: %s", ", ".join(missing),
                                **_fields(event=MessageId.RESUME))
                self.slept.clear()
                self._kick()
            return
        self.slept |= {device_id for device_id, a in plan.assignments.items()
                       if a.state is State.SLEEPING}
        leaving = any(isinstance(action, Detach) for action in plan.steps) or any(
            a.state is State.DETACHING for a in plan.assignments.values())
        if not leaving:
            self._let_sleep()

    def _on_guest_event(self, name: str, run: int, ending: bool) -> None:
        """A lifecycle event: read the guest again. STOPPED or SHUTDOWN ends its run at
        once (a re-read may lag behind the host drivers binding what QEMU let go);
        a later event of the same run (a fake reboot resuming) takes that back."""
        for slot, failure in list(self.failures.items()):
            if failure.guest == name:
                del self.failures[slot]
        known = (self.guests or {}).get(name)
        if known is not None:
            current = Run(known.uuid, run) if run > 0 else run_of(known)
            if ending and current is not None:
                self.ending.add(current)
                self._release_waiters(name)
            elif not ending:
                self.ending.discard(Run(known.uuid, run))
        self._spawn(self._refresh_guest(name))
        self._kick()

    def _on_device_removed(self, name: str, alias: str) -> None:
        released = self._released.get((name, alias))
        if released is not None:
            released.set()
        self._spawn(self._refresh_guest(name))

    async def _refresh_guest(self, name: str) -> None:
        try:
            self._store_guest(name, await self.client.guest(name))
        except LibvirtError as e:
            if e.connection_lost:
                self._connection_failed(e)
            else:
                log.warning("cannot read guest %s: %s", name, e.message, **_fields(guest=name))
        self._kick()

    def _store_guest(self, name: str, guest: Guest | None) -> None:
        if self.guests is None:
            return
        before = self.guests.get(name)
        if guest is None:
            self.guests.pop(name, None)
        else:
            self.guests[name] = guest
        if before is None or guest is None or before.state != guest.state:
            state = guest.state if guest is not None else "undefined"
            log.info("guest %s is %s", name, state,
                     **_fields(guest=name, event=MessageId.GUEST_STATE))
        ended = run_of(before)
        if ended is not None and ended != run_of(guest):
            # That run is over (stopped, or started again between two reads): it has
            # released everything, and what was noted about it is void.
            self._release_waiters(name)
            for slot, failure in list(self.failures.items()):
                if failure.run == ended:
                    del self.failures[slot]

    def _release_waiters(self, name: str) -> None:
        """End the detaches waiting for QEMU in a guest whose run is over."""
        for (holder, _alias), released in self._released.items():
            if holder == name:
                released.set()

    # ------------------------------------------------------------ reconcile

    def _read_facts(self) -> HostFacts:
        self._facts_stale = False
        self.facts_reads += 1
        return read_host_facts()

    def _facts(self) -> HostFacts:
        """The host facts, read again if a uevent came since they were read."""
        if self._facts_stale:
            self.host = self._read_facts()
        return self.host

    def _kick(self) -> None:
        """Ask for a reconcile soon; many events in one loop turn make one."""
        if not self._kicked:
            self._kicked = True
            asyncio.get_running_loop().call_soon(self._reconcile)

    def _reconcile(self) -> None:
        self._kicked = False
        loop = asyncio.get_running_loop()
        if self.guests is not None:
            current = {run_of(g) for g in self.guests.values()}
            self.ending = {r for r in self.ending if r in current}
        world = World(devices=self.devices, guests=self.guests, inflight=self.inflight,
                      failures=self.failures, now=loop.time(),
                      overrides=self.overrides, host=self._facts(), asks=self.asks,
                      remembered=self.remembered,
                      inserted=frozenset(self.inserted), sleep=self.sleep,
                      vanished=dict(self.vanished),
                      binds=dict(self.binds), ending=frozenset(self.ending))
        plan = reconcile(self.policy, world)
        for slot in plan.let_go:
            self._let_go(slot)
        if self.binds:  # marks of devices that left with a rescan
            for slot in self.binds.keys() - {d.slot for d in self.devices.values()}:
                self._drop_bind(slot)
        self._questions(plan)
        self._report(plan.assignments)
        self._sleep_progress(plan)
        self._generation += 1
        self._reconciled.set()
        self._reconciled = asyncio.Event()
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        if self._stopping:
            return
        for action in plan.steps:
            # The guest run the call goes to: a failure is counted against it alone.
            run = run_of((self.guests or {}).get(action.guest))
            if isinstance(action, Attach):
                op = Operation(OpKind.ATTACH, action.guest, action.device.alias)
                self.inflight[action.slot] = op
                self._spawn(self._attach(action, run))
            else:
                op = Operation(OpKind.DETACH, action.guest, action.hostdev.alias)
                self.inflight[action.slot] = op
                self._spawn(self._detach(action, run))
        if plan.wake_at is not None:
            self._wake = loop.call_at(plan.wake_at, self._kick)

    # ------------------------------------------------------------ ask mode

    def _questions(self, plan: Plan) -> None:
        """Open the requests reconcile asks for; close those no longer asked for.

        Only a reconcile that could decide (libvirt connected, a policy in
        force) uses up ``inserted``: a device plugged in while libvirt is away
        is asked about once it is back.
        """
        if self.guests is None or self.policy is None:
            return
        for q in plan.questions:
            self._open_request(q)
        self.inserted.clear()
        for number, r in list(self.requests.items()):
            a = plan.assignments.get(r.device_id)
            if a is None or a.state is not State.ASKING:
                # A reload, an override or a deny took the decision out of the person's hands.
                self._close_request(number)
                self.asks.pop(r.device_id, None)
                log.info("request %d for %s withdrawn: %s", number, r.device_id,
                         a.reason if a else "the device is gone",
                         **_fields(device=r.device_id, event=MessageId.NOT_ANSWERED))

    def _open_request(self, q: Question) -> None:
        d = self.devices[q.device_id]
        if not q.candidates:
            self.asks[d.id] = Ask(AskOutcome.UNASKED)
            log.info("%s: not asked, none of the guests it may go to is running",
                     d.describe(), **_fields(device=d.id, rule=q.rule))
            return
        assert self.policy is not None
        timeout = self.policy.settings.ask_timeout
        number = self._next_request
        self._next_request += 1
        deadline = time.time_ns() // 1000 + timeout * 1_000_000
        self.requests[number] = Request(number=number, device_id=d.id, description=d.describe(),
                                        candidates=q.candidates, deadline_usec=deadline,
                                        rule=q.rule)
        self._request_timers[number] = asyncio.get_running_loop().call_later(
            timeout, self._expire, number)
        self.asks[d.id] = Ask(AskOutcome.PENDING, candidates=q.candidates)
        log.info("request %d: where does %s go? (%s or the host; %ds to answer)", number,
                 d.describe(), ", ".join(q.candidates), timeout,
                 **_fields(device=d.id, rule=q.rule, event=MessageId.ASKED))

    def _expire(self, number: int) -> None:
        r = self.requests.get(number)
        if r is None:
            return
        self._close_request(number)
        self.asks[r.device_id] = Ask(AskOutcome.EXPIRED)
        log.info("request %d for %s: no answer before the deadline; it stays on the host",
                 number, r.device_id, **_fields(device=r.device_id, rule=r.rule,
                                                event=MessageId.NOT_ANSWERED))
        self._kick()

    def _close_request(self, number: int) -> None:
        self.requests.pop(number, None)
        timer = self._request_timers.pop(number, None)
        if timer is not None:
            timer.cancel()

    def _plug_ended(self, device_id: str, why: str) -> None:
        """An unplug or a new enumeration: the question about the previous plug is void."""
        self.asks.pop(device_id, None)
        self.inserted.discard(device_id)
        for number, r in list(self.requests.items()):
            if r.device_id == device_id:
                self._close_request(number)
                log.info("request %d for %s withdrawn: %s", number, device_id, why,
                         **_fields(device=device_id, event=MessageId.NOT_ANSWERED))

    def _spawn(self, coro) -> None:  # type: ignore[no-untyped-def]
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _report(self, assignments: dict[str, Assignment]) -> None:
        """Log each change of a device's assignment once, with its fields.

        Transitions (attaching, detaching) are logged by the action itself,
        which names the libvirt call.
        """
        for device_id, a in assignments.items():
            if self.assignments.get(device_id) == a or a.state in _TRANSITIONS:
                continue
            d = self.devices.get(device_id)
            what = d.describe() if d else device_id
            where = f" guest={a.guest}" if a.guest else ""
            level = logging.WARNING if a.state is State.FAILED else logging.INFO
            log.log(level, "%s: %s%s: %s", what, a.state, where, a.reason,
                    **_fields(device_id, a.guest, a.rule, a.state, MessageId.DECISION))
        self.assignments = dict(assignments)
        self._notify_status()
        if self.bus is not None:
            self.bus.publish(self._snapshot())

    def _snapshot(self) -> Snapshot:
        return Snapshot(self.devices, self.assignments, self.guests, self.overrides,
                        __version__, self.host.iommu_enabled, self.policy_errors,
                        self.policy.files if self.policy else (), self.config.uri,
                        dict(self.remembered), dict(self.requests),
                        self.policy.settings.ask_timeout if self.policy else DEFAULT_ASK_TIMEOUT)

    def _notify_status(self) -> None:
        counts: dict[State, int] = {}
        for a in self.assignments.values():
            counts[a.state] = counts.get(a.state, 0) + 1
        parts = [f"{n} {state}" for state, n in sorted(counts.items()) if n]
        status = f"{len(self.assignments)} devices" + (f": {', '.join(parts)}" if parts else "")
        if self.guests is None:
            status += f"; waiting for libvirt at {self.config.uri}"
        if self.policy is None:
            status += "; policy has errors"
        if status != self._status:
            self._status = status
            notify(f"STATUS={status}")

    # ------------------------------------------------------------ actions

    def _failed(self, slot: str, kind: OpKind, guest: str, run: Run | None,
                error: LibvirtError) -> None:
        """Record a failed call against the guest run it went to, for backoff, and
        re-read the guest (it may have stopped: the failure is then void).

        A lost connection is no failure of the device: the reconnect resyncs.
        """
        if error.connection_lost:
            self._connection_failed(error)
            return
        now = asyncio.get_running_loop().time()
        self.failures[slot] = record_failure(self.failures.get(slot), kind, guest,
                                             error.message, now, run)
        self._spawn(self._refresh_guest(guest))

    async def _attach(self, a: Attach, run: Run | None) -> None:
        d = a.device
        fields = _fields(d.id, a.guest, a.rule, State.ATTACHING)
        source = (f"managed, host {d.address}" if d.subsystem is Subsystem.PCI
                  else f"bus {d.busnum} device {d.devnum}")
        by = a.decided_by or (f"by rule '{a.rule}'" if a.rule else "by a manual override")
        log.info("attaching %s to %s %s: libvirt attachDeviceFlags (%s)",
                 d.describe(), a.guest, by, source, **fields)
        started = time.monotonic()
        prepared: list[str] = []
        if a.reset:
            self._reset(d, fields)
        try:
            for address in a.prepare:
                log.info("moving %s (IOMMU group of %s) to vfio-pci first", address, d.id,
                         **fields)
                await self.client.to_vfio(address)
                prepared.append(address)
            await fault_points.point("attach-before")
            guest = await fault_points.around("attach",
                                              self.client.attach(a.guest, hostdev_xml(d)))
        except LibvirtError as e:
            log.warning("attach %s to %s failed: %s", d.id, a.guest, e.message,
                        **_fields(d.id, a.guest, a.rule, State.FAILED, MessageId.ATTACH_FAILED))
            await self._give_back(prepared)
            self._failed(a.slot, OpKind.ATTACH, a.guest, run, e)
        else:
            log.info("attached %s to %s in %.0f ms", d.id, a.guest,
                     (time.monotonic() - started) * 1000,
                     **_fields(d.id, a.guest, a.rule, State.ATTACHED, MessageId.ATTACHED))
            self._store_guest(a.guest, guest)
            self.failures.pop(a.slot, None)
        finally:
            self.inflight.pop(a.slot, None)
            self._kick()

    @staticmethod
    def _reset(d: Device, fields: dict) -> None:
        """The rule's reset_before_attach: a USB port reset, then the attach regardless.

        It blocks the loop for the reset (tens of milliseconds): the kernel
        re-enumerates in place, keeping the device's numbers.
        """
        try:
            reset_usb_device(d.busnum, d.devnum)
        except UsbResetError as e:
            log.warning("reset before attach failed: %s; attaching anyway", e, **fields)
        else:
            log.info("reset %s before attaching it", d.id, **fields)

    async def _give_back(self, addresses: list[str]) -> None:
        """After a failed group move, return the functions taken for it to their drivers.

        Bounded in time: a function without a working reset can hang on its
        way back; it is then reported as left without its driver.
        """
        for address in addresses:
            try:
                await asyncio.wait_for(self.client.to_host(address),
                                       self.config.to_host_timeout)
            except LibvirtError as e:
                log.warning("cannot give %s back to its host driver: %s", address, e.message,
                            **_fields(device=f"pci:{address}"))
            except TimeoutError:
                log.warning("%s did not return to its host driver within %.0fs; it stays "
                            "unbound until a reset or reboot", address,
                            self.config.to_host_timeout, **_fields(device=f"pci:{address}"))

    async def _detach(self, a: Detach, run: Run | None) -> None:
        alias = a.hostdev.alias
        fields = _fields(a.device_id, a.guest, state=State.DETACHING)
        key = (a.guest, alias)
        released = self._released[key] = asyncio.Event()
        log.info("detaching %s from %s (%s): libvirt detachDeviceAlias", alias, a.guest, a.why,
                 **fields)
        try:
            await fault_points.point("detach-before")
            guest = await fault_points.around("detach", self.client.detach(a.guest, alias))
            self._store_guest(a.guest, guest)
            if guest is not None and guest.state.active and a.hostdev in guest.hostdevs:
                try:
                    await asyncio.wait_for(released.wait(), self.config.detach_timeout)
                except TimeoutError:
                    error = (f"guest {a.guest} did not release the device within "
                             f"{self.config.detach_timeout:.0f}s")
                    log.warning("detach %s: %s", alias, error,
                                **_fields(a.device_id, a.guest, "", State.FAILED,
                                          MessageId.DETACH_FAILED))
                    self._failed(a.slot, OpKind.DETACH, a.guest, run, LibvirtError(error))
                    return
                self._store_guest(a.guest, await self.client.guest(a.guest))
            log.info("detached %s from %s", alias, a.guest,
                     **_fields(a.device_id, a.guest, "", State.HOST, MessageId.DETACHED))
            self.failures.pop(a.slot, None)
            self._drop_bind(a.slot)
        except LibvirtError as e:
            log.warning("detach %s from %s failed: %s", alias, a.guest, e.message,
                        **_fields(a.device_id, a.guest, "", State.FAILED,
                                  MessageId.DETACH_FAILED))
            self._failed(a.slot, OpKind.DETACH, a.guest, run, e)
        finally:
            self._released.pop(key, None)
            self.inflight.pop(a.slot, None)
            self._kick()


async def run_daemon(config: Config) -> int:
    """Run until SIGTERM; the exit code is 1 if the bus could not be used."""
    daemon = Daemon(config)
    with contextlib.suppress(asyncio.CancelledError):
        await daemon.run()
    return daemon.exit_code
