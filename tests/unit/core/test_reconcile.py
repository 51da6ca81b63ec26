from dataclasses import replace

from factories import guest, held, host, pci, policy, usb
from hypothesis import given, settings
from hypothesis import strategies as st

from phyllod.core.model import (
    Ask,
    AskOutcome,
    Guest,
    GuestState,
    Hostdev,
    Override,
    OverrideKind,
    State,
    Subsystem,
)
from phyllod.core.plan import BACKOFF, Attach, Detach, Operation, OpKind, World, record_failure
from phyllod.core.reconcile import reconcile

KBD_TO_WORK = policy('[[rule]]\nname="kbd"\nmatch={vendor="0627"}\nguest="work"\n')


def world(devices=(), guests=(), **kw) -> World:
    return World(devices={d.id: d for d in devices}, guests={g.name: g for g in guests}, **kw)


def test_attach_when_guest_runs():
    d = usb()
    plan = reconcile(KBD_TO_WORK, world([d], [guest("work")]))
    assert plan.steps == (Attach(slot=d.slot, device=d, guest="work", rule="kbd"),)
    a = plan.assignments[d.id]
    assert (a.state, a.guest, a.rule) == (State.ATTACHING, "work", "kbd")


def test_already_held_is_adopted_not_attached_twice():
    d = usb()
    for owned in (True, False):
        plan = reconcile(KBD_TO_WORK, world([d], [guest("work", hostdevs=(held(d, owned),))]))
        assert plan.steps == ()
        assert plan.assignments[d.id].state is State.ATTACHED


def test_guest_not_running_or_not_defined_is_pending():
    d = usb()
    plan = reconcile(KBD_TO_WORK, world([d], [guest("work", GuestState.SHUTOFF)]))
    assert plan.steps == ()
    assert plan.assignments[d.id].state is State.PENDING
    assert "not running" in plan.assignments[d.id].reason
    plan = reconcile(KBD_TO_WORK, world([d], [guest("other")]))
    assert plan.assignments[d.id].reason == "no guest 'work' is defined"


def test_target_by_uuid():
    d = usb()
    g = guest("work", uuid="8f1b2a6e-0d8e-4a57-9a1c-7f4bd1f0c2aa")
    p = policy('[[rule]]\nname="k"\nmatch={port="1-2"}\n'
               'guest="8F1B2A6E-0D8E-4A57-9A1C-7F4BD1F0C2AA"\n')
    assert reconcile(p, world([d], [g])).steps == (Attach(slot=d.slot, device=d, guest="work",
                                                          rule="k"),)


def test_unplugged_device_leaves_its_guest():
    d = usb()
    g = guest("work", hostdevs=(held(d),))
    plan = reconcile(KBD_TO_WORK, world([], [g]))
    assert plan.steps == (Detach(slot=d.slot, guest="work", hostdev=held(d),
                                 why="the device is gone"),)


def test_hostdevs_placed_by_hand_are_never_touched_when_stale():
    d = usb()
    g = guest("work", hostdevs=(held(d, owned=False),))
    assert reconcile(KBD_TO_WORK, world([], [g])).steps == ()


def test_replug_removes_the_old_enumeration_first_then_attaches():
    old, new = usb(devnum=5), usb(devnum=9)
    g = guest("work", hostdevs=(held(old),))
    plan = reconcile(KBD_TO_WORK, world([new], [g]))
    assert plan.steps == (Detach(slot=old.slot, guest="work", hostdev=held(old),
                                 why="it came back with a new "
                                   "device number; removing the old one"),)
    assert plan.assignments[new.id].state is State.PENDING
    plan = reconcile(KBD_TO_WORK, world([new], [guest("work")]))
    assert plan.steps == (Attach(slot=new.slot, device=new, guest="work", rule="kbd"),)


def test_recycled_device_number_in_another_port_is_not_adopted():
    old = usb(port="1-2", devnum=5)
    other = usb(port="1-3", devnum=5)
    g = guest("work", hostdevs=(held(old),))
    plan = reconcile(KBD_TO_WORK, world([other], [g]))
    assert plan.steps == (Attach(slot=other.slot, device=other, guest="work", rule="kbd"),
                            Detach(slot=old.slot, guest="work", hostdev=held(old),
                                   why="the device is gone"))


def test_two_identical_devices_only_the_ruled_port_moves():
    left, right = usb(port="1-2", devnum=3), usb(port="1-3", devnum=4)
    p = policy('[[rule]]\nname="left"\nmatch={vendor="0627", port="1-2"}\nguest="work"\n')
    plan = reconcile(p, world([left, right], [guest("work")]))
    assert plan.steps == (Attach(slot=left.slot, device=left, guest="work", rule="left"),)
    assert plan.assignments[right.id].state is State.HOST


def test_work_in_flight_is_never_repeated():
    d = usb()
    inflight = {d.slot: Operation(OpKind.ATTACH, "work", d.alias)}
    plan = reconcile(KBD_TO_WORK, world([d], [guest("work")], inflight=inflight))
    assert plan.steps == ()
    assert plan.assignments[d.id].state is State.ATTACHING
    # Unplugged while attaching: the stale hostdev waits for the attach to end.
    g = guest("work", hostdevs=(held(d),))
    assert reconcile(KBD_TO_WORK, world([], [g], inflight=inflight)).steps == ()


def test_deny_wins_even_over_a_hand_placed_hostdev():
    d = usb()
    p = policy('[[rule]]\nname="no"\nmatch={vendor="0627"}\naction="deny"\n')
    h = held(d, owned=False)
    plan = reconcile(p, world([d], [guest("work", hostdevs=(h,))]))
    assert plan.steps == (Detach(slot=d.slot, guest="work", hostdev=h, why="denied by rule 'no'",
                                 device_id=d.id),)
    plan = reconcile(p, world([d], [guest("work")]))
    assert plan.steps == () and plan.assignments[d.id].state is State.DENIED


def test_rule_removed_sends_phyllods_devices_home_but_not_hand_placed_ones():
    d = usb()
    empty = policy("")
    plan = reconcile(empty, world([d], [guest("work", hostdevs=(held(d),))]))
    assert plan.steps == (Detach(slot=d.slot, guest="work", hostdev=held(d),
                                 why="no rule matches it any more", device_id=d.id),)
    plan = reconcile(empty, world([d], [guest("work", hostdevs=(held(d, owned=False),))]))
    assert plan.steps == ()
    assert plan.assignments[d.id].reason == "attached outside phyllod; no rule matches it"


def test_ignore_touches_nothing():
    d = usb()
    p = policy('[[rule]]\nname="hands off"\nmatch={vendor="0627"}\naction="ignore"\n'
               '[[rule]]\nname="kbd"\nmatch={vendor="0627"}\nguest="work"\n')
    for hostdevs in ((), (held(d),)):
        plan = reconcile(p, world([d], [guest("work", hostdevs=hostdevs)]))
        assert plan.steps == ()
        assert plan.assignments[d.id].rule == "hands off"


def test_moving_between_guests_detaches_first():
    d = usb()
    plan = reconcile(KBD_TO_WORK, world([d], [guest("play", hostdevs=(held(d),)), guest("work")]))
    assert [type(a) for a in plan.steps] == [Detach]
    assert plan.steps[0].guest == "play"
    assert plan.assignments[d.id].state is State.DETACHING


def test_held_by_hand_elsewhere_is_a_conflict_not_a_fight():
    d = usb()
    g = guest("play", hostdevs=(held(d, owned=False),))
    plan = reconcile(KBD_TO_WORK, world([d], [g, guest("work")]))
    assert plan.steps == ()
    assert plan.assignments[d.id].state is State.FAILED
    assert "held by guest 'play' outside phyllod" in plan.assignments[d.id].reason


def test_failures_back_off_then_give_up():
    d = usb()
    f = None
    for n, delay in enumerate(BACKOFF, start=1):
        f = record_failure(f, OpKind.ATTACH, "work", "cannot open directory", now=100.0)
        assert (f.attempts, f.retry_at) == (n, 100.0 + delay)
    f = record_failure(f, OpKind.ATTACH, "work", "cannot open directory", now=100.0)
    assert f.retry_at is None
    first = record_failure(None, OpKind.ATTACH, "work", "e", now=0.0)
    w = world([d], [guest("work")], failures={d.slot: first}, now=BACKOFF[0] / 2)
    plan = reconcile(KBD_TO_WORK, w)
    assert plan.steps == () and plan.wake_at == BACKOFF[0]
    assert plan.assignments[d.id].state is State.FAILED
    assert "attempt 1" in plan.assignments[d.id].reason
    plan = reconcile(KBD_TO_WORK, replace(w, now=BACKOFF[0]))
    assert plan.steps == (Attach(slot=d.slot, device=d, guest="work", rule="kbd"),)
    plan = reconcile(KBD_TO_WORK, replace(w, failures={d.slot: f}, now=1e9))
    assert plan.steps == () and plan.wake_at is None
    assert "gave up" in plan.assignments[d.id].reason


def test_failure_for_another_guest_does_not_hold_back():
    d = usb()
    f = record_failure(None, OpKind.ATTACH, "play", "e", now=0.0)
    plan = reconcile(KBD_TO_WORK, world([d], [guest("work")], failures={d.slot: f}))
    assert plan.steps == (Attach(slot=d.slot, device=d, guest="work", rule="kbd"),)


def test_libvirt_unreachable_changes_nothing():
    d = usb()
    plan = reconcile(KBD_TO_WORK, World(devices={d.id: d}, guests=None))
    assert plan.steps == ()
    assert plan.assignments[d.id].reason == "libvirt is not connected"


# ------------------------------------------------------------ convergence

PORTS = ["1-1", "1-2", "1-3", "2-1"]
GUESTS = ["work", "play", "off"]


def apply(guests: dict[str, Guest], actions) -> dict[str, Guest]:
    """What libvirt would do with the actions (all succeed)."""
    guests = dict(guests)
    for a in actions:
        if isinstance(a, Attach):
            h = Hostdev(alias=a.device.alias, vendor=a.device.vendor, product=a.device.product,
                           bus=a.device.busnum, device=a.device.devnum)
            g = guests[a.guest]
            guests[a.guest] = replace(g, hostdevs=(*g.hostdevs, h))
        else:
            g = guests[a.guest]
            guests[a.guest] = replace(g, hostdevs=tuple(h for h in g.hostdevs if h != a.hostdev))
    return guests


@st.composite
def scenarios(draw):
    ports = draw(st.lists(st.sampled_from(PORTS), unique=True))
    devnums = draw(st.lists(st.integers(2, 9), min_size=len(ports), max_size=len(ports),
                            unique=True))  # unique per bus, as the kernel makes them
    devices = [usb(port=p, devnum=n, vendor=draw(st.sampled_from(["0627", "1050"])))
               for p, n in zip(ports, devnums, strict=True)]
    lines = []
    for i in range(draw(st.integers(0, 4))):
        key = draw(st.sampled_from(['vendor="0627"', 'vendor="1050"', f'port="{PORTS[i]}"']))
        action = draw(st.sampled_from(["attach", "deny", "ignore", "ask"]))
        target = f'guest="{draw(st.sampled_from(GUESTS))}"\n' if action == "attach" else ""
        if action == "ask" and draw(st.booleans()):
            target = f'guest=["{draw(st.sampled_from(GUESTS))}"]\n'

        lines.append(f'[[rule]]\nname="r{i}"\nmatch={{{key}}}\naction="{action}"\n{target}')
    guests = {}
    taken: set[str] = set()  # a USB device is in one QEMU at most
    for name in GUESTS:
        state = GuestState.SHUTOFF if name == "off" else GuestState.RUNNING
        hostdevs = []
        if state.active:
            # Whatever a previous daemon life, a person or an unplug left behind.
            for d in draw(st.lists(st.sampled_from([*devices, usb(port="3-1")]), max_size=2)):
                if d.id not in taken:
                    taken.add(d.id)
                    hostdevs.append(held(d, draw(st.booleans())))
        guests[name] = guest(name, state, tuple(hostdevs))
    overrides = {}
    for d in devices:
        kind = draw(st.sampled_from([None, OverrideKind.ATTACH, OverrideKind.HOST]))
        if kind is not None:
            target = draw(st.sampled_from(GUESTS)) if kind is OverrideKind.ATTACH else ""
            overrides[d.identity] = Override(kind, target)
    # Ask mode: an answer for this plug, or one remembered (guest, "" for the host).
    answer = st.sampled_from([None, "", *GUESTS])
    asks = {d.id: Ask(AskOutcome.ANSWERED, a) for d in devices if (a := draw(answer)) is not None}
    remembered = {d.identity: a for d in devices if (a := draw(answer)) is not None}
    return policy("\n".join(lines)), devices, guests, overrides, asks, remembered


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_reconcile_converges_without_double_attach(scenario):
    p, devices, guests, overrides, asks, remembered = scenario
    for _ in range(6):
        plan = reconcile(p, world(devices, guests.values(), overrides=overrides, asks=asks,
                                  remembered=remembered))
        slots = [a.slot for a in plan.steps]
        assert len(slots) == len(set(slots)), "two actions for one slot"
        if not plan.steps:
            break
        guests = apply(guests, plan.steps)
    else:
        raise AssertionError(f"did not converge: {plan.steps}")
    present = {(d.slot, d.busnum, d.devnum) for d in devices}
    for g in guests.values():
        for h in g.hostdevs:
            assert not h.owned or (h.slot, h.bus, h.device) in present, f"stale {h} in {g.name}"
    for d in devices:
        holders = [g.name for g in guests.values() for h in g.hostdevs
                   if (h.bus, h.device) == (d.busnum, d.devnum)]
        rule = p.match(d)
        override = overrides.get(d.identity)
        a = plan.assignments[d.id]
        target = None
        if rule is not None and rule.action.value == "deny":
            assert holders == [] and a.state is State.DENIED
        elif override is not None and override.kind is OverrideKind.HOST:
            assert holders == [] and a.state is State.HOST
        elif override is not None:
            target = override.guest
        elif rule is not None and rule.action.value == "attach":
            target = rule.guest
        elif rule is not None and rule.action.value == "ask":
            answered = asks[d.id].guest if d.id in asks else remembered.get(d.identity)
            if answered == "":
                owned = [h for g in guests.values() for h in g.hostdevs
                         if (h.bus, h.device) == (d.busnum, d.devnum) and h.owned]
                assert owned == [] and a.state in (State.HOST, State.ATTACHED)
            elif answered is not None:
                target = answered
            else:
                assert len(holders) <= 1 and plan.questions == ()
        else:
            assert len(holders) <= 1
        if target is not None:
            foreign = any(not h.owned for g in guests.values() for h in g.hostdevs
                          if (h.bus, h.device) == (d.busnum, d.devnum) and g.name != target)
            if foreign:
                assert a.state is State.FAILED and target not in holders
            elif target == "off":
                assert a.state is State.PENDING and holders == []
            else:
                assert a.state is State.ATTACHED and holders == [target]


def test_without_a_usable_policy_nothing_moves():
    d, gone = usb(), usb(port="1-3")
    g = guest("work", hostdevs=(held(d), held(gone)))
    plan = reconcile(None, world([d], [g]))
    assert plan.steps == ()
    a = plan.assignments[d.id]
    assert (a.state, a.guest) == (State.ATTACHED, "work") and "policy has errors" in a.reason


# ------------------------------------------------------------ manual overrides

def attach_to(name: str) -> dict:
    return {usb().identity: Override(OverrideKind.ATTACH, name)}


def test_manual_attach_without_rule():
    d = usb()
    plan = reconcile(policy(""), world([d], [guest("work")], overrides=attach_to("work")))
    assert plan.steps == (Attach(slot=d.slot, device=d, guest="work", rule=""),)
    a = plan.assignments[d.id]
    assert (a.state, a.guest, a.rule) == (State.ATTACHING, "work", "")
    assert a.reason == "attaching to 'work' by a manual override; no rule matches it"


def test_manual_attach_wins_over_a_rule_and_says_so():
    d = usb()
    w = world([d], [guest("work", hostdevs=(held(d),)), guest("play")],
              overrides=attach_to("play"))
    plan = reconcile(KBD_TO_WORK, w)
    (detach,) = plan.steps
    assert isinstance(detach, Detach) and detach.guest == "work"
    a = plan.assignments[d.id]
    assert a.state is State.DETACHING
    assert a.reason.endswith("rule 'kbd' would send it to 'work'")
    # Once out of work, it goes to play, and stays there at the next reconcile.
    plan = reconcile(KBD_TO_WORK, replace(w, guests={"work": guest("work"),
                                                    "play": guest("play")}))
    assert plan.steps == (Attach(slot=d.slot, device=d, guest="play", rule=""),)
    settled = world([d], [guest("work"), guest("play", hostdevs=(held(d),))],
                    overrides=attach_to("play"))
    assert reconcile(KBD_TO_WORK, settled).steps == ()


def test_deny_wins_over_manual_attach():
    d = usb()
    deny = policy('[[rule]]\nname="no"\nmatch={vendor="0627"}\naction="deny"\n')
    plan = reconcile(deny, world([d], [guest("work")], overrides=attach_to("work")))
    assert plan.steps == ()
    a = plan.assignments[d.id]
    assert a.state is State.DENIED
    assert a.reason == "denied by rule 'no' (deny wins over the manual attach to 'work')"


def test_manual_host_removes_owned_and_foreign_hostdevs():
    d = usb()
    host = {d.identity: Override(OverrideKind.HOST)}
    for owned in (True, False):
        g = guest("work", hostdevs=(held(d, owned),))
        plan = reconcile(KBD_TO_WORK, world([d], [g], overrides=host))
        (detach,) = plan.steps
        assert isinstance(detach, Detach) and detach.hostdev == held(d, owned)
        assert plan.assignments[d.id].state is State.DETACHING
    plan = reconcile(KBD_TO_WORK, world([d], [guest("work")], overrides=host))
    assert plan.steps == ()
    a = plan.assignments[d.id]
    assert a.state is State.HOST
    assert a.reason == ("kept on the host by a manual override; "
                        "rule 'kbd' would send it to 'work'")


def test_override_follows_a_serial_to_another_port():
    before, after = usb("1-2", serial="S1"), usb("1-4", devnum=9, serial="S1")
    assert before.identity == after.identity != before.id
    overrides = {before.identity: Override(OverrideKind.ATTACH, "work")}
    plan = reconcile(policy(""), world([after], [guest("work")], overrides=overrides))
    assert plan.steps == (Attach(slot=after.slot, device=after, guest="work", rule=""),)
    # Without a serial, only the port identifies it.
    assert usb("1-2").identity == "usb:1-2"


def test_override_while_libvirt_is_away():
    d = usb()
    w = World(devices={d.id: d}, guests=None, overrides=attach_to("work"))
    a = reconcile(policy(""), w).assignments[d.id]
    assert (a.state, a.guest) == (State.PENDING, "work")


# ------------------------------------------------------------ PCI, safely

WIFI_TO_ROUTER = policy('[[rule]]\nname="wifi"\nmatch={class="0280"}\nguest="router"\n')


def pci_world(devices, facts, guests=(), **kw) -> World:
    return world(devices, guests or [guest("router")], host=facts, **kw)


def test_pci_alone_in_its_group_is_attached_managed():
    d = pci()
    plan = reconcile(WIFI_TO_ROUTER, pci_world([d], host(d, bridges={"0000:00:1c.0": 5})))
    assert plan.steps == (Attach(slot=d.slot, device=d, guest="router", rule="wifi"),)
    assert plan.assignments[d.id].state is State.ATTACHING


def test_pci_group_shared_with_a_host_device_is_denied_with_the_members():
    d, sata = pci(), pci("0000:00:17.0", "8086", "a352", "010601", driver="ahci")
    plan = reconcile(WIFI_TO_ROUTER, pci_world([d, sata], host(d, sata)))
    assert plan.steps == ()
    a = plan.assignments[d.id]
    assert a.state is State.DENIED
    assert a.reason.startswith("not safe to pass: ") and "0000:00:17.0" in a.reason
    assert "ahci" in a.reason


def test_pci_without_iommu_is_denied():
    d = pci()
    a = reconcile(WIFI_TO_ROUTER, pci_world([d], host(d, iommu=False))).assignments[d.id]
    assert a.state is State.DENIED and "IOMMU" in a.reason


def test_pci_group_moves_together_one_attach_at_a_time():
    gpu = pci("0000:01:00.0", "10de", "1b80", "030000", group=1, driver="nouveau")
    audio = pci("0000:01:00.1", "10de", "10f0", "040300", group=1, driver="snd_hda_intel")
    both = policy('[[rule]]\nname="gpu"\nmatch={vendor="10de"}\nguest="router"\n')
    plan = reconcile(both, pci_world([gpu, audio], host(gpu, audio)))
    assert plan.steps == (Attach(slot=gpu.slot, device=gpu, guest="router", rule="gpu",
                                 prepare=("0000:01:00.1",)),)
    assert plan.assignments[audio.id].state is State.PENDING
    assert plan.assignments[audio.id].reason == "waiting for the rest of IOMMU group 1"
    # The GPU is in; its audio function now sits on vfio-pci: attached without preparing.
    g = guest("router", hostdevs=(Hostdev(alias=gpu.alias, subsystem=Subsystem.PCI,
                                          address=gpu.address),))
    facts = host(gpu, audio, drivers={gpu.address: "vfio-pci", audio.address: "vfio-pci"})
    plan = reconcile(both, pci_world([gpu, audio], facts, [g]))
    assert plan.steps == (Attach(slot=audio.slot, device=audio, guest="router", rule="gpu"),)
    assert plan.assignments[gpu.id].state is State.ATTACHED


def test_pci_risks_block_unless_the_rule_accepts_them_by_name():
    d = pci()
    facts = host(d, acs_override=True)
    a = reconcile(WIFI_TO_ROUTER, pci_world([d], facts)).assignments[d.id]
    assert a.state is State.DENIED and "pcie_acs_override" in a.reason
    accepting = policy('[[rule]]\nname="wifi"\nmatch={class="0280"}\nguest="router"\n'
                       'allow_risks=["acs-override"]\n')
    plan = reconcile(accepting, pci_world([d], facts))
    assert plan.steps == (Attach(slot=d.slot, device=d, guest="router", rule="wifi"),)
    assert "security warning" in plan.assignments[d.id].reason
    # A manual attach cannot accept a risk: only a rule names one.
    manual = {d.identity: Override(OverrideKind.ATTACH, "router")}
    a = reconcile(policy(""), pci_world([d], facts, overrides=manual)).assignments[d.id]
    assert a.state is State.DENIED


def test_pci_hostdev_is_recognised_by_address_and_removed_when_the_device_goes():
    d = pci()
    h = Hostdev(alias=d.alias, subsystem=Subsystem.PCI, address=d.address)
    facts = host(d, drivers={d.address: "vfio-pci"})
    plan = reconcile(WIFI_TO_ROUTER, pci_world([d], facts, [guest("router", hostdevs=(h,))]))
    assert plan.steps == () and plan.assignments[d.id].state is State.ATTACHED
    plan = reconcile(WIFI_TO_ROUTER, pci_world([], host(), [guest("router", hostdevs=(h,))]))
    assert plan.steps == (Detach(slot=d.slot, guest="router", hostdev=h, why="the device is gone"),)


def test_pci_unsafe_is_denied_even_while_the_guest_is_off():
    d, sata = pci(), pci("0000:00:17.0", "8086", "a352", "010601", driver="ahci")
    w = pci_world([d, sata], host(d, sata), [guest("router", GuestState.SHUTOFF)])
    a = reconcile(WIFI_TO_ROUTER, w).assignments[d.id]
    assert a.state is State.DENIED and "0000:00:17.0" in a.reason
