"""replan against its oracle: after every event of a random sequence, the incremental
plan is the full reconcile's, to the order of its assignments and steps.

The events are what the daemon's parts do to the World between two turns
(plugs, unplugs, replugs with a new number, hubs and what is behind them, PCI
functions sharing an IOMMU group, guests starting, stopping, crashing and
being re-read, steps issued, finished and failed, time passing backoffs and
debounce windows, overrides, asks and remembered answers, host binds, the
host's sleep, the host facts, a policy reload, a resync that reorders the
devices), done in place on the same dicts, as the parts do.
"""

from __future__ import annotations

from dataclasses import replace

from factories import guest, policy
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from phyllod.core.guest_runs import HostBind, Run
from phyllod.core.model import (
    Ask,
    AskOutcome,
    Device,
    GuestState,
    Hostdev,
    HostFacts,
    Override,
    OverrideKind,
    PciFunction,
    Subsystem,
)
from phyllod.core.plan import (
    Attach,
    Detach,
    Failure,
    Operation,
    OpKind,
    Sleep,
    World,
    record_failure,
)
from phyllod.core.reconcile import reconcile
from phyllod.core.replan import Reconciled, replan
from phyllod.core.serial_trust import with_identities

GUESTS = ("work", "play", "off")
UUIDS = {g: f"00000000-0000-0000-0000-00000000000{i}" for i, g in enumerate(GUESTS)}
HUB = "1-2"
PORTS = ("1-1", HUB, "1-2.1", "1-2.2", "2-1")
PCI = {  # address → (class, IOMMU group, driver)
    "0000:01:00.0": ("030000", 2, "nouveau"),
    "0000:01:00.1": ("040300", 2, "snd_hda_intel"),
    "0000:02:00.0": ("020000", 4, "e1000e"),
}
BRIDGE = "0000:00:01.0"
RULE_MATCHES = ('vendor="0627"', 'vendor="1050"', 'port="1-1"', f'port_below="{HUB}"',
                'class="03"', 'address="0000:02:00.0"', 'subsystem="pci"', 'serial="S1"',
                'interface_class="03"')
TARGETS = ("work", "play", "off", "nowhere", UUIDS["play"].upper())


def usb_device(port: str, devnum: int, vendor: str, serial: str) -> Device:
    bus = int(port.split("-", 1)[0])
    hub = port == HUB
    return Device(subsystem=Subsystem.USB, sys_path=f"/sys/devices/pci0000:00/usb{bus}/"
                  + "/".join(port[:n] for n in range(3, len(port) + 1, 2)), port=port,
                  busnum=bus, devnum=devnum, vendor="05e3" if hub else vendor,
                  product="0608" if hub else "0001", serial="" if hub else serial,
                  device_class="09" if hub else "00",
                  interface_classes=("090000",) if hub else ("030101",))


def pci_device(address: str) -> Device:
    cls, group, driver = PCI[address]
    return Device(subsystem=Subsystem.PCI, sys_path=f"/sys/devices/pci0000:00/{address}",
                  address=address, vendor="10de", product="1b80", device_class=cls,
                  iommu_group=group, driver=driver)


def facts(drivers: dict[str, str], groups: dict[str, int], keyboards: dict[str, str],
          mounts: dict[str, str]) -> HostFacts:
    functions = {BRIDGE: PciFunction(address=BRIDGE, class_code="060400", driver="pcieport",
                                     iommu_group=1)}
    for address, (cls, _, driver) in PCI.items():
        functions[address] = PciFunction(
            address=address, class_code=cls, driver=drivers.get(address, driver),
            iommu_group=groups.get(address, PCI[address][1]), reset_method="",
            reset_shown=False, parent=BRIDGE if address.startswith("0000:01") else "")
    members: dict[int, list[str]] = {}
    for f in functions.values():
        if f.iommu_group is not None:
            members.setdefault(f.iommu_group, []).append(f.address)
    return HostFacts(iommu_enabled=True, functions=functions,
                     groups={g: tuple(sorted(m)) for g, m in members.items()},
                     keyboards=dict(keyboards), block_mounts=dict(mounts))


@st.composite
def policy_texts(draw: st.DrawFn) -> str:
    lines = ['[settings]\nunmatched = "ask"\n'] if draw(st.booleans()) else []
    for i in range(draw(st.integers(1, 5))):
        action = draw(st.sampled_from(["attach", "attach", "attach", "deny", "ignore", "ask"]))
        text = (f'[[rule]]\nname="r{i}"\nmatch={{{draw(st.sampled_from(RULE_MATCHES))}}}\n'
                f'action="{action}"\n')
        if action == "attach":
            text += f'guest="{draw(st.sampled_from((*TARGETS, "work", "play")))}"\n'
            if draw(st.integers(0, 2)):
                text += 'allow_risks=["no-reset", "host-keyboard"]\n'
        elif action == "ask" and draw(st.booleans()):
            text += f'guest=["{draw(st.sampled_from(GUESTS))}", "play"]\n'
        if draw(st.booleans()):
            text += f'on_sleep="{draw(st.sampled_from(["keep", "detach"]))}"\n'
        lines.append(text)
    return "\n".join(lines)


class Events(RuleBasedStateMachine):
    """The World as the daemon's parts hold it, changed one event at a time."""

    @initialize(texts=st.lists(policy_texts(), min_size=1, max_size=3),
                ports=st.lists(st.sampled_from(PORTS), unique=True, max_size=4),
                pcis=st.lists(st.sampled_from(sorted(PCI)), unique=True))
    def start(self, texts: list[str], ports: list[str], pcis: list[str]) -> None:
        """A policy (and others to reload), and the devices present at start."""
        self.texts = texts
        self.policy = policy(texts[0])
        self.devices: dict[str, Device] = {}
        self.guests = {g: guest(g, GuestState.SHUTOFF if g == "off" else GuestState.RUNNING,
                                uuid=UUIDS[g]) for g in GUESTS}
        self.inflight: dict[str, Operation] = {}
        self.failures: dict[str, Failure] = {}
        self.overrides: dict[str, Override] = {}
        self.asks: dict[str, Ask] = {}
        self.remembered: dict[str, str] = {}
        self.inserted: set[str] = set()
        self.vanished: dict[str, float] = {}
        self.binds: dict[str, HostBind] = {}
        self.ending: set[Run] = set()
        self.sleep: Sleep | None = None
        self.now = 100.0
        self.drivers: dict[str, str] = {}
        self.groups: dict[str, int] = {}
        self.keyboards: dict[str, str] = {}
        self.mounts: dict[str, str] = {}
        self.host = facts({}, {}, {}, {})
        for n, port in enumerate(ports):
            d = usb_device(port, 2 + n, ("0627", "1050")[n % 2], ("", "S1")[n % 2])
            self.devices[d.id] = d
        self._judged()
        for address in pcis:
            self.devices[f"pci:{address}"] = pci_device(address)
        self.previous: Reconciled | None = None

    def world(self) -> World:
        return World(devices=self.devices, guests=self.guests, inflight=self.inflight,
                     failures=self.failures, now=self.now, overrides=self.overrides,
                     host=self.host, asks=self.asks, remembered=self.remembered,
                     inserted=frozenset(self.inserted), sleep=self.sleep,
                     vanished=self.vanished, binds=self.binds, ending=frozenset(self.ending))

    @invariant()
    def incremental_is_full(self) -> None:
        world = self.world()
        got = replan(self.previous, self.policy, world)
        want = reconcile(self.policy, world)
        assert got.plan.steps == want.steps
        assert got.plan.wake_at == want.wake_at
        assert got.plan.questions == want.questions
        assert got.plan.let_go == want.let_go
        assert list(got.plan.assignments.items()) == list(want.assignments.items())
        self.previous = got

    def _judged(self) -> None:
        """As the plugs part does after every change to the present set."""
        self.devices = with_identities(self.devices)

    # ------------------------------------------------------------ devices

    @rule(port=st.sampled_from(PORTS), devnum=st.integers(2, 5),
          vendor=st.sampled_from(["0627", "1050"]), serial=st.sampled_from(["", "S1", "0"]))
    def plug(self, port: str, devnum: int, vendor: str, serial: str) -> None:
        """A plug, or a replug of the same port as another enumeration or device."""
        d = usb_device(port, devnum, vendor, serial)
        self.devices[d.id] = d
        self.vanished.pop(d.id, None)
        self.asks.pop(d.id, None)
        self.inserted.add(d.id)
        self._judged()

    @rule(data=st.data())
    def replug(self, data: st.DataObject) -> None:
        """A device re-enumerated in its port (a reset, a firmware's re-plug)."""
        usb = sorted(i for i, d in self.devices.items() if d.subsystem is Subsystem.USB)
        if usb:
            d = self.devices[data.draw(st.sampled_from(usb))]
            self.plug(d.port, 2 + (d.devnum - 1) % 4, d.vendor, d.serial)

    @rule(address=st.sampled_from(sorted(PCI)))
    def plug_pci(self, address: str) -> None:
        d = pci_device(address)
        self.devices[d.id] = d
        self.inserted.add(d.id)

    @rule(data=st.data())
    def unplug(self, data: st.DataObject) -> None:
        if self.devices:
            device_id = data.draw(st.sampled_from(sorted(self.devices)))
            self.devices.pop(device_id)
            self.vanished.pop(device_id, None)
            self.asks.pop(device_id, None)
            self._judged()

    @rule(data=st.data(), wait=st.sampled_from([0.5, 1.0, 3.0]))
    def vanish(self, data: st.DataObject, wait: float) -> None:
        if self.devices:
            self.vanished[data.draw(st.sampled_from(sorted(self.devices)))] = self.now + wait

    @rule(data=st.data())
    def come_back(self, data: st.DataObject) -> None:
        if self.vanished:
            del self.vanished[data.draw(st.sampled_from(sorted(self.vanished)))]

    @rule(seed=st.randoms(use_true_random=False))
    def resync(self, seed) -> None:
        """udev's monitor overflowed: the same devices, listed again in another order."""
        items = list(self.devices.items())
        seed.shuffle(items)
        self.devices = dict(items)

    # ------------------------------------------------------------ guests

    @rule(name=st.sampled_from(GUESTS),
          state=st.sampled_from([GuestState.RUNNING, GuestState.PAUSED, GuestState.SHUTOFF,
                                 GuestState.CRASHED, GuestState.STOPPING]))
    def guest_state(self, name: str, state: GuestState) -> None:
        """Started (a new run), paused, stopped, crashed, shutting down: re-read."""
        g = self.guests[name]
        run = g.run + 1 if state.active and not g.state.active else g.run
        hostdevs = g.hostdevs if state.active else ()
        self.guests[name] = replace(g, state=state, run=run if state.active else -1,
                                    hostdevs=hostdevs)

    @rule(name=st.sampled_from(GUESTS))
    def reboot(self, name: str) -> None:
        """A new run of a guest that keeps its hostdevs (they are in its configuration)."""
        g = self.guests[name]
        self.guests[name] = replace(g, state=GuestState.RUNNING, run=max(g.run, 0) + 1)

    @rule(name=st.sampled_from(GUESTS), n=st.integers(0, 3))
    def redefined(self, name: str, n: int) -> None:
        """Undefined and defined again under its name: another UUID (or its first)."""
        g = self.guests[name]
        self.guests[name] = replace(g, uuid=UUIDS[name] if n == 0 else f"{UUIDS[name][:-1]}{n}a")

    @rule(name=st.sampled_from(GUESTS))
    def guest_ending(self, name: str) -> None:
        """libvirt said this run is stopping, before the guest is read again."""
        g = self.guests[name]
        if g.state.active:
            self.ending.add(Run(g.uuid, g.run))

    @rule()
    def ending_read(self) -> None:
        self.ending.clear()

    @rule(name=st.sampled_from(GUESTS), data=st.data(), owned=st.booleans())
    def hostdev_added(self, name: str, data: st.DataObject, owned: bool) -> None:
        """A person attached a device by hand, or an old enumeration's hostdev."""
        g = self.guests[name]
        port = data.draw(st.sampled_from(PORTS))
        d = usb_device(port, data.draw(st.integers(2, 5)), "0627", "")
        bus_only = data.draw(st.booleans())
        h = Hostdev(alias=d.alias if owned else f"hostdev{len(g.hostdevs)}",
                    vendor=d.vendor, product=d.product, bus=None if bus_only else d.busnum,
                    device=None if bus_only else d.devnum)
        if g.state.active:
            self.guests[name] = replace(g, hostdevs=(*g.hostdevs, h))

    @rule(name=st.sampled_from(GUESTS), data=st.data())
    def hostdev_removed(self, name: str, data: st.DataObject) -> None:
        g = self.guests[name]
        if g.hostdevs:
            gone = data.draw(st.sampled_from(g.hostdevs))
            self.guests[name] = replace(g, hostdevs=tuple(h for h in g.hostdevs if h != gone))

    # ------------------------------------------------------------ steps

    def _steps(self) -> tuple:
        return self.previous.plan.steps if self.previous is not None else ()

    @rule(data=st.data())
    def step_issued(self, data: st.DataObject) -> None:
        if self._steps():
            step = data.draw(st.sampled_from(self._steps()))
            kind = OpKind.ATTACH if isinstance(step, Attach) else OpKind.DETACH
            alias = step.device.alias if isinstance(step, Attach) else step.hostdev.alias
            self.inflight[step.slot] = Operation(kind, step.guest, alias)

    def _done(self, step: Attach | Detach) -> None:
        """A step that succeeded, as libvirt then shows the guest."""
        self.inflight.pop(step.slot, None)
        self.failures.pop(step.slot, None)
        g = self.guests.get(step.guest)
        if g is None:
            return
        if isinstance(step, Detach):
            self.guests[step.guest] = replace(g, hostdevs=tuple(
                h for h in g.hostdevs if h != step.hostdev))
            return
        d = step.device
        h = (Hostdev(alias=d.alias, subsystem=Subsystem.PCI, address=d.address)
             if d.subsystem is Subsystem.PCI else
             Hostdev(alias=d.alias, vendor=d.vendor, product=d.product, bus=d.busnum,
                     device=d.devnum))
        self.guests[step.guest] = replace(g, hostdevs=(*g.hostdevs, h))
        if d.subsystem is Subsystem.PCI:
            self.pci_facts(d.address, "vfio-pci", self.groups.get(d.address, 2))

    @rule(data=st.data(), ok=st.booleans())
    def step_ended(self, data: st.DataObject, ok: bool) -> None:
        """A step issued at once (or in flight) finished, or failed with backoff."""
        if not self._steps():
            return
        step = data.draw(st.sampled_from(self._steps()))
        if ok:
            self._done(step)
            return
        self.inflight.pop(step.slot, None)
        g = self.guests.get(step.guest)
        kind = OpKind.ATTACH if isinstance(step, Attach) else OpKind.DETACH
        self.failures[step.slot] = record_failure(
            self.failures.get(step.slot), kind, step.guest, "no", self.now,
            Run(g.uuid, g.run) if g is not None and data.draw(st.booleans()) else None)

    @rule()
    def settle(self) -> None:
        """Every step of the last plan issued and done: the daemon doing its job."""
        for step in self._steps():
            self._done(step)

    @rule(dt=st.sampled_from([0.1, 0.6, 1.2, 5.0, 40.0]))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    # ------------------------------------------------------------ people

    @rule(data=st.data(), kind=st.sampled_from([None, OverrideKind.ATTACH, OverrideKind.HOST]),
          to=st.sampled_from(TARGETS))
    def override(self, data: st.DataObject, kind: OverrideKind | None, to: str) -> None:
        if self.devices:
            d = self.devices[data.draw(st.sampled_from(sorted(self.devices)))]
            if kind is None:
                self.overrides.pop(d.identity, None)
            else:
                self.overrides[d.identity] = Override(
                    kind, to if kind is OverrideKind.ATTACH else "")

    @rule(data=st.data(), outcome=st.sampled_from(list(AskOutcome)),
          answer=st.sampled_from(["", *GUESTS]), remember=st.booleans())
    def ask(self, data: st.DataObject, outcome: AskOutcome, answer: str, remember: bool) -> None:
        """A request opened, answered (and maybe remembered), expired or not asked."""
        if self.devices:
            d = self.devices[data.draw(st.sampled_from(sorted(self.devices)))]
            self.inserted.discard(d.id)
            self.asks[d.id] = Ask(outcome, answer if outcome is AskOutcome.ANSWERED else "",
                                  ("work", "play") if outcome is AskOutcome.PENDING else ())
            if remember:
                self.remembered[d.identity] = answer

    @rule(data=st.data(), driver=st.sampled_from(["usbhid", "usb-storage"]),
          checked=st.booleans())
    def host_bind(self, data: st.DataObject, driver: str, checked: bool) -> None:
        """A host driver bound a device a guest holds (a reset, or the guest letting go)."""
        held = [(g, h) for g in self.guests.values() for h in g.hostdevs if h.owned]
        if held:
            g, h = data.draw(st.sampled_from(held))
            self.binds[h.slot] = HostBind(run=Run(g.uuid, g.run), guest=g.name, alias=h.alias,
                                          driver=driver, checked=checked)

    @rule(data=st.data())
    def bind_dropped(self, data: st.DataObject) -> None:
        if self.binds:
            del self.binds[data.draw(st.sampled_from(sorted(self.binds)))]

    @rule(phase=st.sampled_from(["going", "waking", "awake"]))
    def host_sleep(self, phase: str) -> None:
        self.sleep = {"going": Sleep(), "waking": Sleep(waking_until=self.now + 2.0),
                      "awake": None}[phase]

    @rule(which=st.integers(0, 2), same=st.booleans())
    def policy_reload(self, which: int, same: bool) -> None:
        """A reload: the same text (a new, equal policy) or another one."""
        self.policy = policy(self.texts[0 if same else which % len(self.texts)])

    # ------------------------------------------------------------ the host

    @rule(address=st.sampled_from(sorted(PCI)),
          driver=st.sampled_from(["vfio-pci", "", "nouveau"]), group=st.sampled_from([2, 3]))
    def pci_facts(self, address: str, driver: str, group: int) -> None:
        """A function rebound (vfio-pci after an attach) or regrouped (ACS)."""
        self.drivers[address] = driver
        if address != "0000:02:00.0":
            self.groups[address] = group
        self.host = facts(self.drivers, self.groups, self.keyboards, self.mounts)

    @rule(port=st.sampled_from(PORTS), what=st.sampled_from(["keyboard", "mount", "none"]))
    def usb_facts(self, port: str, what: str) -> None:
        """A keyboard or a mounted filesystem appears below a USB port, or goes."""
        path = usb_device(port, 2, "0627", "").sys_path + "/1-x:1.0/input"
        self.keyboards.pop(path, None)
        self.mounts.pop(path, None)
        if what == "keyboard":
            self.keyboards[path] = "kbd"
        elif what == "mount":
            self.mounts[path] = "/media/x"
        self.host = facts(self.drivers, self.groups, self.keyboards, self.mounts)


Events.TestCase.settings = settings(max_examples=400, stateful_step_count=40, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])
test_incremental_plans_are_the_full_ones = Events.TestCase


def test_one_plug_plans_one_device():
    """A count, not a time: at scale, one plug plans the device plugged in, nothing else."""
    p = policy('[[rule]]\nname="keys"\nmatch={vendor="1050"}\nguest="work"\n')
    devices = {d.id: d for d in (usb_device(f"3-{i}", 2 + i, "0627", f"S{i}")
                                 for i in range(1, 60))}
    guests = {g: guest(g, uuid=UUIDS[g]) for g in GUESTS}
    at_start = World(devices=devices, guests=guests)
    first = replan(None, p, at_start)
    assert first.planned == len(devices)
    assert list(first.plan.assignments.items()) == list(reconcile(p, at_start).assignments.items())
    new = usb_device("1-1", 7, "1050", "K")
    plugged = World(devices={**devices, new.id: new}, guests=guests, inserted=frozenset({new.id}))
    after = replan(first, p, plugged)
    assert after.planned == 1 and after.plan == reconcile(p, plugged)
    assert replan(after, p, plugged).planned == 0


def follow(p, *worlds: World) -> list[int]:
    """Replan each world after the one before, held to reconcile; the counts planned."""
    previous, planned = None, []
    for w in worlds:
        previous = replan(previous, p, w)
        assert previous.plan == reconcile(p, w)
        planned.append(previous.planned)
    return planned


def test_a_failed_detach_is_tried_again_once_its_guest_runs_anew():
    """Only the failure names the guest here (no rule names it, and its holding looks
    the same): a reboot that keeps the hostdev voids the failure."""
    d = usb_device("1-1", 3, "0627", "")
    h = Hostdev(alias=d.alias, vendor=d.vendor, product=d.product, bus=d.busnum, device=d.devnum)
    work = guest("work", hostdevs=(h,), uuid=UUIDS["work"], run=4)
    failed = {d.slot: record_failure(None, OpKind.DETACH, "work", "busy", 10.0,
                                     Run(work.uuid, work.run))}
    before = World(devices={d.id: d}, guests={"work": work}, failures=failed, now=20.0)
    after = replace(before, guests={"work": replace(work, run=5)})
    assert follow(policy(""), before, after) == [1, 1]
    assert reconcile(policy(""), after).steps != ()
