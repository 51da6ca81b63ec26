"""Sleep, hubs, vanishing devices, resets and what the host would lose: the pure core."""

from dataclasses import replace

import pytest
from factories import guest, held, host, pci, policy, usb

from phyllod.core.guest_runs import HostBind, Run
from phyllod.core.model import Hostdev, HostFacts, PciFunction, State, Subsystem
from phyllod.core.plan import Attach, Detach, Sleep, World
from phyllod.core.policy import OnSleep
from phyllod.core.policy_parser import parse_policy_text
from phyllod.core.reconcile import reconcile
from phyllod.core.safety.pci import pci_verdict
from phyllod.core.safety.usb import usb_verdict
from phyllod.core.safety.verdict import Risk

KBD = policy('[[rule]]\nname="kbd"\nmatch={vendor="0627"}\nguest="work"\n')


def world(devices=(), guests=(), **kw) -> World:
    return World(devices={d.id: d for d in devices}, guests={g.name: g for g in guests}, **kw)


# ------------------------------------------------------------------ policy keys

def test_port_below_matches_the_port_and_what_is_behind_it_never_a_hub():
    p = policy('[[rule]]\nname="desk"\nmatch={port_below="1-2"}\nguest="work"\n')
    assert p.match(usb("1-2")) is not None
    assert p.match(usb("1-2.3")) is not None
    assert p.match(usb("1-2.3.1")) is not None
    assert p.match(usb("1-20")) is None, "1-20 is another port, not below 1-2"
    assert p.match(usb("1-3")) is None
    assert p.match(usb("1-2.1", device_class="09")) is None, "a hub only routes"
    assert p.match(pci()) is None


def test_new_rule_keys_parse_and_bad_values_are_located():
    content, problems = parse_policy_text(
        '[settings]\ndebounce = 2.5\n\n[[rule]]\nname="bt"\nmatch={interface_class="e0"}\n'
        'guest="work"\non_sleep="keep"\ndebounce=0\nreset_before_attach=true\n', "p.toml")
    assert problems == []
    rule = content.rules[0]
    assert (rule.on_sleep, rule.debounce, rule.reset_before_attach) == (OnSleep.KEEP, 0.0, True)
    assert content.settings == {"debounce": 2.5}
    _, problems = parse_policy_text(
        '[settings]\ndebounce = -1\n\n[[rule]]\nname="x"\nmatch={port_below="1-"}\n'
        'guest="w"\non_sleep="snore"\ndebounce=true\nreset_before_attach="yes"\n', "p.toml")
    assert [str(p) for p in problems] == [
        "p.toml:2: debounce must be a number of seconds from 0 to 60, not -1",
        "p.toml:6: rule 'x': port_below must be a USB port path like \"1-2\" or \"1-2.3\", "
        "not '1-'",
        "p.toml:8: rule 'x': on_sleep must be 'detach' or 'keep', not 'snore'",
        "p.toml:9: rule 'x': debounce must be a number of seconds from 0 to 60, not True",
        "p.toml:10: rule 'x': reset_before_attach must be true or false, not 'yes'",
    ]
    _, problems = parse_policy_text(
        '[[rule]]\nname="nic"\nmatch={address="03:00.0"}\nguest="w"\n'
        'reset_before_attach=true\n', "p.toml")
    assert "reset_before_attach is for USB devices" in str(problems[0])


def test_debounce_comes_from_the_rule_then_the_settings():
    p = policy('[settings]\ndebounce = 3\n\n[[rule]]\nname="kbd"\nmatch={port="1-2"}\n'
               'guest="w"\ndebounce=0.5\n')
    assert p.debounce(usb("1-2")) == 0.5
    assert p.debounce(usb("1-3")) == 3.0


# ------------------------------------------------------------------ sleep

def test_going_to_sleep_detaches_usb_devices_phyllod_placed_and_keeps_pci():
    kbd, nic = usb(), pci()
    p = policy('[[rule]]\nname="kbd"\nmatch={vendor="0627"}\nguest="work"\n\n'
               '[[rule]]\nname="nic"\nmatch={address="0000:03:00.0"}\nguest="work"\n')
    g = guest("work", hostdevs=(held(kbd), replace(held(nic), subsystem=nic.subsystem,
                                                   address=nic.address, alias=nic.alias)))
    plan = reconcile(p, world([kbd, nic], [g], sleep=Sleep(), host=host(nic)))
    assert plan.steps == (Detach(slot=kbd.slot, guest="work", hostdev=held(kbd),
                                 why="the host is going to sleep",
                                   device_id=kbd.id),)
    assert plan.assignments[kbd.id].state is State.DETACHING
    assert plan.assignments[nic.id].state is State.ATTACHED


def test_asleep_nothing_is_attached_and_the_reason_says_why():
    d = usb()
    plan = reconcile(KBD, world([d], [guest("work")], sleep=Sleep()))
    assert plan.steps == ()
    a = plan.assignments[d.id]
    assert (a.state, a.guest) == (State.SLEEPING, "work")
    assert a.reason == "detached for sleep, waiting for the host to resume"


def test_keep_rule_and_hand_placed_hostdevs_stay_through_sleep():
    d = usb()
    keep = policy('[[rule]]\nname="kbd"\nmatch={vendor="0627"}\nguest="work"\n'
                  'on_sleep="keep"\n')
    plan = reconcile(keep, world([d], [guest("work", hostdevs=(held(d),))], sleep=Sleep()))
    assert plan.steps == () and plan.assignments[d.id].state is State.ATTACHED
    plan = reconcile(KBD, world([d], [guest("work", hostdevs=(held(d, owned=False),))],
                                sleep=Sleep()))
    assert plan.steps == () and plan.assignments[d.id].state is State.ATTACHED


def test_after_resume_devices_settle_then_each_is_attached():
    d, e = usb("1-2"), usb("1-3", devnum=6)
    waking = world([d, e], [guest("work")], sleep=Sleep(waking_until=10.0), now=9.0)
    plan = reconcile(KBD, waking)
    assert plan.steps == () and plan.wake_at == 10.0
    assert plan.assignments[d.id].reason.startswith("back from sleep; attaching it again once")
    plan = reconcile(KBD, replace(waking, now=10.0, sleep=None))
    assert {a.slot for a in plan.steps if isinstance(a, Attach)} == {d.slot, e.slot}


# ------------------------------------------------------------------ vanished, broken, reset

def test_a_vanished_device_waits_out_its_window_while_its_dead_hostdev_goes_at_once():
    """A USB hostdev names the device by number, which a returning device never has
    again: it is taken out at once; the plug waits for the device to return."""
    d = usb()
    plan = reconcile(KBD, world([d], [guest("work", hostdevs=(held(d),))],
                                vanished={d.id: 4.0}, now=3.0))
    assert plan.steps == (Detach(slot=d.slot, guest="work", hostdev=held(d),
                                 why="it vanished from the host", device_id=d.id),)
    assert plan.wake_at == 4.0
    a = plan.assignments[d.id]
    assert (a.state, a.guest) == (State.DETACHING, "work")
    assert a.reason == ("vanished from the host; waiting 1.0s for it to return (debounce); "
                        "removing its dead hostdev from 'work'")
    # Out of the guest, it is still waited for: nothing else moves until the window ends.
    plan = reconcile(KBD, world([d], [guest("work")], vanished={d.id: 4.0}, now=3.0))
    assert plan.steps == () and plan.wake_at == 4.0
    a = plan.assignments[d.id]
    assert (a.state, a.reason) == (
        State.HOST, "vanished from the host; waiting 1.0s for it to return (debounce)")
    # Back within its window, re-enumerated with a new number: attached again.
    back = replace(d, devnum=d.devnum + 1)
    plan = reconcile(KBD, world([back], [guest("work")], now=3.5))
    assert [type(s) for s in plan.steps] == [Attach]


@pytest.mark.parametrize(("d", "owned"), [(usb(), False), (pci(), True)],
                         ids=["usb-placed-by-a-person", "pci"])
def test_a_vanished_device_leaves_what_it_does_not_own_or_a_pci_hostdev_in_place(d, owned):
    """Only phyllod's own USB hostdevs are taken out at once: one a person placed is
    theirs, and a PCI function in a guest cannot leave the host while vfio holds it."""
    hostdev = (held(d, owned=owned) if d.subsystem is Subsystem.USB
               else Hostdev(alias=d.alias, subsystem=Subsystem.PCI, address=d.address))
    plan = reconcile(KBD, world([d], [guest("work", hostdevs=(hostdev,))],
                                vanished={d.id: 4.0}, now=3.0))
    assert plan.steps == () and plan.assignments[d.id].state is State.ATTACHED


def test_a_device_its_guest_lost_is_detached_to_be_attached_again():
    d = usb()
    work = guest("work", hostdevs=(held(d),))
    bind = HostBind(run=Run(work.uuid, work.run), guest="work", alias=d.alias, driver="usbhid",
                    checked=True)
    plan = reconcile(KBD, world([d], [work], binds={d.slot: bind}))
    assert plan.steps == (Detach(slot=d.slot, guest="work", hostdev=held(d),
                                 why="its guest lost it to a reset on "
                                   "the host; attaching it again", device_id=d.id),)
    assert plan.let_go == ()


def test_reset_before_attach_is_carried_to_the_attach_and_port_below_is_said():
    d = usb("1-2.4")
    p = policy('[[rule]]\nname="desk"\nmatch={port_below="1-2"}\nguest="work"\n'
               'reset_before_attach=true\n')
    plan = reconcile(p, world([d], [guest("work")]))
    assert plan.steps == (Attach(slot=d.slot, device=d, guest="work", rule="desk", reset=True,
                                   decided_by="by rule 'desk' (behind port 1-2)"),)
    assert plan.assignments[d.id].reason == ("attaching to 'work' by rule 'desk' "
                                             "(behind port 1-2)")


# ------------------------------------------------------------------ what the host would lose

STICK = usb("1-5", vendor="0781", product="5567")
HUB = usb("1-4", vendor="05e3", product="0610", device_class="09")
KEYBOARD_PATH = ("/sys/devices/pci0000:00/0000:00:14.0/usb1/1-4/1-4.1/1-4.1:1.0/"
                 "0003:0627:0001.0001/input/input5")


def test_a_usb_device_holding_a_mount_is_refused_and_names_it():
    facts = HostFacts(block_mounts={
        STICK.sys_path + "/1-5:1.0/host0/target0:0:0/0:0:0:0/block/sda/sda1": "/mnt (sda1)"})
    verdict = usb_verdict(STICK, facts, frozenset({"host-keyboard"}))
    assert [f.risk for f in verdict.blocking] == [Risk.HOST_STORAGE]
    assert verdict.reason() == "usb:1-5 holds /mnt (sda1) on the host; unmount it first"
    p = policy('[[rule]]\nname="stick"\nmatch={vendor="0781"}\nguest="work"\n')
    plan = reconcile(p, world([STICK], [guest("work")], host=facts))
    assert plan.steps == ()
    assert plan.assignments[STICK.id].state is State.DENIED
    assert usb_verdict(usb("1-50"), facts).ok, "1-50 is not below 1-5"


def test_a_hub_carrying_the_only_keyboard_is_refused_unless_the_rule_accepts_it():
    hub = replace(HUB, sys_path="/sys/devices/pci0000:00/0000:00:14.0/usb1/1-4")
    facts = HostFacts(keyboards={KEYBOARD_PATH: "QEMU USB Keyboard"})
    verdict = usb_verdict(hub, facts)
    assert verdict.reason() == (
        "usb:1-4 (a hub) carries the host's only keyboard, QEMU USB Keyboard (usb:1-4.1) "
        '(a rule may accept it with allow_risks = ["host-keyboard"])')
    accepted = usb_verdict(hub, facts, frozenset({"host-keyboard"}))
    assert accepted.ok and [f.risk for f in accepted.warnings] == [Risk.HOST_KEYBOARD]
    two = HostFacts(keyboards={KEYBOARD_PATH: "QEMU USB Keyboard",
                               "/sys/devices/platform/i8042/serio0/input/input1": "AT kbd"})
    assert usb_verdict(hub, two).ok, "the host keeps another keyboard"
    keyboard_itself = replace(usb("1-4.1"), sys_path=hub.sys_path + "/1-4.1")
    itself = usb_verdict(keyboard_itself, facts)
    assert [f.risk for f in itself.blocking] == [Risk.HOST_KEYBOARD], \
        "the keyboard itself takes what its hub would"
    assert usb_verdict(keyboard_itself, two).ok


def test_a_usb_controller_carrying_the_only_keyboard_is_an_opt_in_pci_risk():
    xhci = PciFunction(address="0000:00:14.0", vendor="8086", device="a36d", class_code="0c0330",
                       driver="xhci_hcd",
                       iommu_group=3, reset_method="flr")
    facts = HostFacts(iommu_enabled=True, functions={xhci.address: xhci},
                      groups={3: (xhci.address,)},
                      keyboards={KEYBOARD_PATH: "QEMU USB Keyboard"})
    verdict = pci_verdict(xhci.address, facts)
    assert [f.risk for f in verdict.blocking] == [Risk.HOST_KEYBOARD]
    assert "0000:00:14.0 carries the host's only keyboard, QEMU USB Keyboard (usb:1-4.1)" \
        in verdict.reason()
    assert pci_verdict(xhci.address, facts, frozenset({"host-keyboard"})).ok


@pytest.mark.parametrize(("reset_method", "blocked"), [("", True), (None, False),
                                                       ("flr bus", False)])
def test_a_pci_function_without_a_reset_method_is_refused_unless_accepted(reset_method, blocked):
    nic = PciFunction(address="0000:03:00.0", vendor="8086", device="10d3", class_code="020000",
                      driver="e1000e",
                      iommu_group=7, reset_method=reset_method)
    facts = HostFacts(iommu_enabled=True, functions={nic.address: nic}, groups={7: (nic.address,)})
    verdict = pci_verdict(nic.address, facts)
    assert (not verdict.ok) is blocked
    if blocked:
        assert verdict.reason().startswith("0000:03:00.0 has no reset method")
        assert pci_verdict(nic.address, facts, frozenset({"no-reset"})).ok
