"""The daemon's root: it builds the parts, wires them by passing callables, and
runs the life cycle (start, serve until SIGTERM, stop).

Every input (udev, libvirt events, logind, the bus, the end of a libvirt call)
changes one part's state and kicks the loop; a loop turn builds the World from
every part, reconciles (pure, core/reconcile), hands the plan to the parts and
starts its steps, whose results come back as changes. The parts, one kind of
state each, never import one another:

- plugs: the devices present, unplug debounce, plug identity (service/plugs)
- host binds: a host driver binding a device in a guest (service/binds)
- guests: the libvirt connection and the guests' runs (service/guests)
- steps: Attach/Detach in flight, failures with backoff (service/steps)
- asks: the open requests to a person (service/asks)
- sleep: logind's PrepareForSleep and the inhibitor (service/sleep)
- choices: overrides and remembered answers, persisted (service/choices)
- the policy in force (service/policy_in_force)
- the loop: kick, turn, host facts once per turn (service/loop)
- publishing: the journal, systemd's status, the bus (service/publish)
- operations: what the bus calls (service/operations)
- metrics: the calls' outcomes, a file for node_exporter (service/metrics)
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phyllod import __version__
from phyllod.bus import polkit
from phyllod.bus.logind import SleepWatcher
from phyllod.bus.service import BusError, BusService, Snapshot
from phyllod.core.metrics import Calls, device_counts
from phyllod.core.metrics import Snapshot as MetricsSnapshot
from phyllod.core.model import FactsPart, HostFacts, Subsystem
from phyllod.core.plan import OpKind, Plan, World
from phyllod.host.holds_memo import HoldsMemo
from phyllod.host.holds_watch import HoldsWatch
from phyllod.host.libvirt_client import LibvirtClient
from phyllod.host.state_store import remove_leftovers
from phyllod.host.sysfs import host_keyboards, read_host_facts, read_mounted, usb_host_drivers
from phyllod.host.systemd_glue import MessageId, notify, watchdog_interval
from phyllod.host.textfile import Textfile
from phyllod.host.udev_source import UdevEvent, UdevWatcher
from phyllod.service import fault_points
from phyllod.service.asks import Asks
from phyllod.service.binds import HostBinds
from phyllod.service.choices import Choices
from phyllod.service.guests import CONNECT_PATIENCE, Guests
from phyllod.service.journal import fields, log
from phyllod.service.loop import Loop, staled_by
from phyllod.service.metrics import Metrics
from phyllod.service.operations import Operations
from phyllod.service.plugs import Plugs
from phyllod.service.policy_in_force import PolicyInForce
from phyllod.service.publish import Publisher
from phyllod.service.sleep import HostSleep
from phyllod.service.steps import Steps

#: How long a start-up step may wait for the bus or logind before it gives up.
START_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
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
    #: node_exporter's textfile (``*.prom``) phyllod keeps its metrics in; None: none.
    metrics_file: Path | None = None


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.exit_code = 0
        self._stopping = False
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._logind: asyncio.Task[None] | None = None
        self._started_at = time.time()
        kick = self._kick
        on_bus = config.bus != "none"

        # The policy in force: read at start and on reload, a broken one refused whole.
        self.policy = PolicyInForce(config.policy_dir)
        # The asks: requests open to a person, their deadlines, their withdrawal.
        self.asks = Asks(changed=kick)
        # The plugs: present devices, udev events, debounce windows, plug identity.
        self.plugs = Plugs(
            debounce=self.policy.debounce, asleep=lambda: self.sleep.sleep is not None,
            stopping=lambda: self._stopping, resume_settle=config.resume_settle,
            new_plug=self.asks.new_plug, plug_ended=self.asks.plug_ended,
            forget_failure=lambda slot: self.steps.forget_failure(slot),
            host_bound=lambda d, driver: self.binds.host_bound(d, driver),
            unwatch_bind=lambda slot: self.binds.unwatch(slot),
            identities_judged=lambda before, after, touched: self.choices.identities_judged(
                before, after, touched),
            changed=kick)
        # The udev source: subscribed first, then enumerated, into the plugs.
        self.udev = UdevWatcher(self._on_udev)
        # The choices: overrides and remembered answers under the state directory.
        self.choices = Choices(state_dir=config.state_dir, devices=lambda: self.plugs.devices)
        # The guests: the libvirt connection (in the background, with backoff) and runs.
        self.guests = Guests(
            uri=config.uri, open_client=LibvirtClient,
            forget_failures=lambda which: self.steps.forget_failures(which),
            device_released=lambda guest, alias: self.steps.released(guest, alias),
            run_over=lambda guest: self.steps.release_waiters(guest),
            stopping=lambda: self._stopping, spawn=self._spawn, changed=kick)
        # The metrics: each call's end counted; after a turn that may have changed
        # something, the snapshot written for node_exporter (from a timer, rate-limited).
        self.textfile = Textfile(config.metrics_file) if config.metrics_file else None
        self.metrics = Metrics(snapshot=self._metrics,
                               write=self.textfile.write if self.textfile else None)
        # The steps: reconcile's Attach/Detach carried out through libvirt.
        self.steps = Steps(
            client=self.guests.client, faults=fault_points, guests=lambda: self.guests.guests,
            store_guest=self.guests.store, refresh_guest=self.guests.refresh,
            connection_failed=self.guests.connection_failed,
            unwatch_bind=lambda slot: self.binds.unwatch(slot), spawn=self._spawn,
            changed=kick, detach_timeout=config.detach_timeout,
            to_host_timeout=config.to_host_timeout, call_ended=self.metrics.call_ended)
        # The host binds: a host driver binding a device in a guest, watched then judged.
        self.binds = HostBinds(
            release_grace=config.release_grace, guests=lambda: self.guests.guests,
            assignment=lambda device_id: self.publisher.assignments.get(device_id),
            inflight=lambda: self.steps.inflight.keys(), ending=lambda: self.guests.ending,
            on_slot=self.plugs.on_slot, host_drivers=lambda d: usb_host_drivers(d.sys_path),
            refresh_guest=self.guests.refresh, spawn=self._spawn, changed=kick)
        # The sleep: logind's PrepareForSleep and the delay inhibitor (on a bus only).
        self.sleep_watcher = (SleepWatcher(config.bus, self._on_prepare_for_sleep)
                              if on_bus else None)
        self.sleep = HostSleep(
            inhibitor=self.sleep_watcher, resume_settle=config.resume_settle,
            assignments=lambda: self.publisher.assignments,
            present=lambda: self.plugs.devices.keys(),
            forget_failures=lambda: self.steps.forget_failures(lambda _failure: True),
            spawn=self._spawn, changed=kick)
        # The loop: kicks, host facts read at most once per turn, reconcile, the plan.
        self.holds = HoldsMemo(read_mounted, host_keyboards)
        # The mounts, swaps and block devices: their news makes the mounts looked at again.
        self.holds_watch = HoldsWatch(self._on_holds_changed)
        self.loop = Loop(read_facts=lambda parts: read_host_facts(parts=parts, holds=self.holds),
                         policy=lambda: self.policy.policy,
                         world=self._world, after=self._after_turn,
                         start_steps=self.steps.start, stopping=lambda: self._stopping)
        # Publishing: each decision in the journal, systemd's STATUS=, the bus.
        self.publisher = Publisher(
            uri=config.uri, devices=lambda: self.plugs.devices,
            libvirt_away=lambda: self.guests.guests is None,
            policy_broken=lambda: self.policy.policy is None, publish=self._publish)
        # The operations: what the bus calls (and SIGHUP's reload).
        self.operations = Operations(
            uri=config.uri, manual_timeout=config.manual_timeout,
            devices=lambda: self.plugs.devices, assignments=lambda: self.publisher.assignments,
            guests=lambda: self.guests.guests, inflight=lambda: self.steps.inflight.keys(),
            requests=lambda: self.asks.requests, answered=self.asks.answered,
            policy=lambda: self.policy.policy, policy_errors=lambda: self.policy.errors,
            load_policy=self.policy.load,
            forget_failures=lambda: self.steps.forget_failures(lambda _failure: True),
            facts=self.loop.facts, read_facts=self.loop.read_facts,
            choices=self.choices, loop=self.loop)
        # The bus: the daemon's face on D-Bus; losing it ends the daemon.
        self.bus = (BusService(config.bus, self.operations, self._on_bus_lost,
                               polkit.Authority()) if on_bus else None)

    # ------------------------------------------------------------ what a turn sees and does

    def _world(self, now: float, host: HostFacts) -> World:
        """Everything reconcile looks at, from every part."""
        return World(
            devices=self.plugs.devices, guests=self.guests.guests,
            inflight=self.steps.inflight, failures=self.steps.failures, now=now,
            overrides=self.choices.overrides, host=host, asks=self.asks.standing,
            remembered=self.choices.remembered,
            inserted=frozenset(self.asks.newly_plugged), sleep=self.sleep.sleep,
            vanished=dict(self.plugs.vanished), binds=dict(self.binds.marks),
            ending=self.guests.current_ending())

    def _after_turn(self, plan: Plan) -> None:
        """Each part takes its share of a plan, once its steps are issued."""
        for slot in plan.let_go:
            self.binds.let_go(slot)
        if self.binds.marks:  # rare; every present device's slot is worth a turn's cost
            self.binds.keep_present({d.slot for d in self.plugs.devices.values()})
        if self.guests.guests is not None and self.policy.policy is not None:
            self.asks.after_turn(plan, self.plugs.devices, self.policy.ask_timeout)
        self.publisher.report(plan.assignments)
        self.sleep.after_turn(plan)
        self.metrics.changed()

    def _snapshot(self) -> Snapshot:
        """Everything the bus shows: the parts' own mappings, not copies (the bus
        copies only what it compares, and only what changed)."""
        return Snapshot(
            devices=self.plugs.devices, assignments=self.publisher.assignments,
            guests=self.guests.guests, overrides=self.choices.overrides,
            version=__version__, iommu_enabled=self.loop.host.iommu_enabled,
            policy_errors=self.policy.errors, policy_files=self.policy.files,
            libvirt_uri=self.config.uri, remembered=self.choices.remembered,
            requests=self.asks.requests, ask_timeout=self.policy.ask_timeout)

    def _metrics(self, calls: dict[tuple[OpKind, Subsystem], Calls]) -> MetricsSnapshot:
        """What the metrics file shows: counts from every part, no device's strings."""
        devices = self.plugs.devices
        return MetricsSnapshot(
            version=__version__, start_time=self._started_at,
            devices=device_counts((devices[i].subsystem, a.state, a.guest)
                                  for i, a in self.publisher.assignments.items() if i in devices),
            calls=calls, policy_loaded=self.policy.policy is not None,
            policy_errors=len(self.policy.errors),
            libvirt_connected=self.guests.guests is not None,
            requests_open=len(self.asks.requests))

    def _publish(self) -> None:
        if self.bus is not None:
            self.bus.publish(self._snapshot())

    def _kick(self) -> None:
        self.loop.kick()

    def _on_udev(self, event: UdevEvent) -> None:
        # Drivers, groups, mounts and keyboards weigh in the verdicts; each
        # event may change some of them (a hub brings keyboards, a PCI rebind a
        # group): those are read again before the next decision, once for all
        # the events that came in meanwhile.
        self.loop.facts_changed(staled_by(event))
        self.plugs.on_udev(event)

    def _on_holds_changed(self) -> None:
        # A mount, a swap or a block device: the verdicts weigh what the host
        # holds, so they are taken again at once, not at the next uevent.
        self.holds.stale()
        self.loop.facts_changed(frozenset({FactsPart.HOLDS}))
        self.loop.kick()

    def _on_prepare_for_sleep(self, going: bool) -> None:
        self.sleep.on_prepare_for_sleep(going)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` as a task that a stop waits for."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------ life cycle

    async def run(self) -> None:
        """Start, serve until SIGTERM, stop. A SIGTERM during the start is heard at once."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.operations.reload)
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
        self.policy.load(initial=True)
        remove_leftovers(self.config.state_dir)
        self.choices.load()
        self.holds.hearing(self.holds_watch.start(loop))  # looks once more, then on news
        self.loop.facts_changed(frozenset({FactsPart.HOLDS}))
        self.plugs.present_at_start(self.udev.start(loop))
        self.guests.connect_in_background(at_once=True)
        self.loop.turn()
        if self.bus is not None:
            try:
                await asyncio.wait_for(self.bus.connect(self._snapshot()), START_TIMEOUT)
            except (BusError, TimeoutError) as e:
                log.error("%s", str(e) or f"the {self.config.bus} bus did not answer within "
                          f"{START_TIMEOUT:.0f}s")
                self.exit_code = 1
                return False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.guests.first_attempt.wait(), CONNECT_PATIENCE)
        self.loop.turn()  # what READY=1 announces is on the bus, guests included
        notify("READY=1")
        log.info("phyllod %s ready", __version__, **fields(event=MessageId.STARTED))
        self.publisher.notify_status()
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
        self.holds_watch.stop()
        self.loop.cancel()
        self.guests.cancel()
        if self._logind is not None:
            self._logind.cancel()
        self.steps.release_all()
        for part in (self.asks, self.plugs, self.binds, self.sleep, self.metrics):
            part.cancel()
        if self._tasks:
            log.info("waiting for %d libvirt calls to finish", len(self._tasks))
            await asyncio.wait(self._tasks, timeout=self.config.stop_timeout)
        await self.guests.client.close()
        if self.textfile is not None:
            self.textfile.remove()  # the numbers of a stopped phyllod are no one's
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
        parts = ", ".join(f"{part} {n}" for part, n in self.loop.part_reads.items())
        log.info("memory: %srss %.1f MiB, %d fds, %d devices, %d guests; host facts read "
                 "%d times (%s; mounts looked at %d, computed %d)", traced, rss, fds,
                 len(self.plugs.devices), len(self.guests.guests or {}), self.loop.facts_reads,
                 parts, self.holds.looked, self.holds.computed)
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


async def run_daemon(config: Config) -> int:
    """Run until SIGTERM; the exit code is 1 if the bus could not be used."""
    daemon = Daemon(config)
    with contextlib.suppress(asyncio.CancelledError):
        await daemon.run()
    return daemon.exit_code
