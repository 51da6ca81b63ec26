"""The PCI safety verdict over hand-built host facts: every rule alone and combined."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phyllod.core.model import HostFacts, PciFunction
from phyllod.core.safety.pci import (
    bus_mates,
    group_members,
    iommu_table,
    pci_verdict,
    safety,
)
from phyllod.core.safety.verdict import OPT_IN, Finding, Level, Risk, Verdict

NIC = "0000:03:00.0"
PORT = "0000:00:1c.0"
SATA = "0000:00:1f.2"
AUDIO = "0000:03:00.1"


def fn(address: str, class_code: str = "020000", driver: str = "e1000e", group: int | None = 7,
       **kw: object) -> PciFunction:
    return PciFunction(address=address, vendor="8086", device="10d3", class_code=class_code,
                       driver=driver, iommu_group=group, **kw)  # type: ignore[arg-type]


def host(*functions: PciFunction, iommu: bool = True, acs_override: bool = False,
         mounted: dict[str, str] | None = None, acs_ignored: bool = False) -> HostFacts:
    """Facts whose groups follow the functions' own ``iommu_group``."""
    groups: dict[int, list[str]] = {}
    for f in functions:
        if f.iommu_group is not None:
            groups.setdefault(f.iommu_group, []).append(f.address)
    return HostFacts(iommu_enabled=iommu, acs_override=acs_override,
                     functions={f.address: f for f in functions},
                     groups={g: tuple(sorted(m)) for g, m in groups.items()},
                     mounted=mounted or {}, acs_override_ignored=acs_ignored)


def risks(verdict: Verdict) -> list[Risk]:
    return [f.risk for f in verdict.blocking]


ALONE = host(fn(NIC))
ALL_NAMES = frozenset(r.value for r in Risk)


def test_alone_in_its_group_is_ok():
    verdict = pci_verdict(NIC, ALONE)
    assert verdict.ok and verdict.warnings == () and verdict.reason() == ""


@pytest.mark.parametrize(("facts", "address", "expected"), [
    (host(fn(NIC, group=None), iommu=False), NIC, [Risk.NO_IOMMU]),
    (ALONE, "0000:09:00.0", [Risk.NOT_FOUND]),
    (host(fn(PORT, "060400", "pcieport")), PORT, [Risk.BRIDGE]),
    (host(fn(NIC), fn(SATA, "010601", "ahci")), NIC, [Risk.GROUP]),
    (host(fn(NIC), mounted={NIC: "/ (sda2)"}), NIC, [Risk.HOST_STORAGE]),
    (host(fn(NIC, "030000", "i915", boot_vga=True)), NIC, [Risk.BOOT_VGA]),
    (host(fn(NIC), acs_override=True), NIC, [Risk.ACS_OVERRIDE]),
], ids=["no-iommu", "not-found", "bridge", "group", "host-storage", "boot-vga", "acs-override"])
def test_each_risk_alone(facts, address, expected):
    assert risks(pci_verdict(address, facts)) == expected


def test_texts_name_what_to_do_and_what_is_shared():
    assert pci_verdict(NIC, host(fn(NIC, group=None), iommu=False)).reason() == (
        "the host has no active IOMMU: enable intel_iommu=on / amd_iommu=on and VT-d/AMD-Vi "
        "in firmware")
    shared = host(fn(NIC), fn(SATA, "010601", "ahci"), fn("0000:00:1f.3", "040300", "snd_hda"))
    assert pci_verdict(NIC, shared).reason() == (
        "IOMMU group 7 is shared with 0000:00:1f.2 (class 010601, bound to ahci) and "
        "0000:00:1f.3 (class 040300, bound to snd_hda) which stay on the host")
    one = host(fn(NIC), fn(SATA, "010601", "ahci"))
    assert pci_verdict(NIC, one).reason() == (
        "IOMMU group 7 is shared with 0000:00:1f.2 (class 010601, bound to ahci) "
        "which stays on the host")
    assert pci_verdict(NIC, host(fn(NIC), mounted={NIC: "/ (nvme0n1p2)"})).reason() == (
        "0000:03:00.0 holds / (nvme0n1p2)")
    blocked = pci_verdict(NIC, host(fn(NIC), acs_override=True))
    assert 'allow_risks = ["acs-override"]' in blocked.reason()
    bridge = pci_verdict(PORT, host(fn(PORT, "060400", "pcieport")))
    assert bridge.reason() == ("0000:00:1c.0 is a PCI bridge or port (class 060400), "
                               "never passed to a guest")


@pytest.mark.parametrize("driver", ["", "vfio-pci", "pci-stub"])
def test_members_no_host_driver_uses_keep_the_group_viable(driver):
    assert pci_verdict(NIC, host(fn(NIC), fn(SATA, "010601", driver))).ok


def test_bridges_in_the_group_keep_it_viable():
    assert pci_verdict(NIC, host(fn(NIC), fn(PORT, "060400", "pcieport"))).ok


def test_members_moving_together_keep_the_group_viable():
    gpu = host(fn(NIC, "030000", "amdgpu"), fn(AUDIO, "040300", "snd_hda_intel"))
    assert risks(pci_verdict(NIC, gpu)) == [Risk.GROUP]
    assert pci_verdict(NIC, gpu, together=frozenset({AUDIO})).ok
    assert pci_verdict(AUDIO, gpu, together=frozenset({NIC})).ok


def test_a_member_sysfs_does_not_know_blocks():
    facts = replace(ALONE, groups={7: (NIC, SATA)})
    assert pci_verdict(NIC, facts).reason() == (
        "IOMMU group 7 is shared with 0000:00:1f.2 (not in sysfs) which stays on the host")


def test_no_group_under_an_active_iommu_blocks():
    assert risks(pci_verdict(NIC, host(fn(NIC, group=None)))) == [Risk.GROUP]


def test_storage_held_by_a_group_member_blocks_even_moving_together():
    facts = host(fn(NIC, "0c0330", "xhci_hcd"), fn(SATA, "010601", "ahci"),
                 mounted={SATA: "/home (home)"})
    verdict = pci_verdict(NIC, facts, together=frozenset({SATA}))
    assert risks(verdict) == [Risk.HOST_STORAGE]
    assert verdict.reason() == "IOMMU group 7 member 0000:00:1f.2 holds /home (home)"


def test_one_mount_is_named_once_after_the_endpoint_not_the_port():
    facts = host(fn(PORT, "060400", "pcieport"), fn(NIC, "010802", "nvme"),
                 mounted={PORT: "/ (nvme0n1p2)", NIC: "/ (nvme0n1p2)"})
    assert pci_verdict(NIC, facts).reason() == "0000:03:00.0 holds / (nvme0n1p2)"


def test_opt_ins_turn_their_risk_into_a_warning():
    facts = host(fn(NIC, "030000", "i915", boot_vga=True), acs_override=True)
    assert risks(pci_verdict(NIC, facts)) == [Risk.BOOT_VGA, Risk.ACS_OVERRIDE]
    half = pci_verdict(NIC, facts, allowed=frozenset({"boot-vga"}))
    assert risks(half) == [Risk.ACS_OVERRIDE]
    assert [f.risk for f in half.warnings] == [Risk.BOOT_VGA]
    both = pci_verdict(NIC, facts, allowed=frozenset({"boot-vga", "acs-override"}))
    assert both.ok
    assert both.reason() == (
        "security warning: 0000:03:00.0 is the boot VGA device, which shows the host's "
        "console; the kernel runs with pcie_acs_override, so IOMMU groups may not isolate "
        "this device")
    assert "allow_risks" not in both.reason()


def test_opt_in_is_only_the_named_host_risks():
    assert {r.value for r in OPT_IN} == {"boot-vga", "acs-override", "no-reset",
                                        "host-keyboard"}


@pytest.mark.parametrize(("facts", "address"), [
    (host(fn(NIC, group=None), iommu=False), NIC),
    (ALONE, "0000:09:00.0"),
    (host(fn(PORT, "060400", "pcieport")), PORT),
    (host(fn(NIC), fn(SATA, "010601", "ahci")), NIC),
    (host(fn(NIC), mounted={NIC: "/ (sda2)"}), NIC),
], ids=["no-iommu", "not-found", "bridge", "group", "host-storage"])
def test_no_name_unblocks_the_hard_risks(facts, address):
    """Every risk name, even the hard ones' own and nonsense, leaves these blocked."""
    verdict = pci_verdict(address, facts, allowed=ALL_NAMES | {"*", "all"})
    assert not verdict.ok and verdict.warnings == ()


def test_every_risk_at_once():
    facts = host(fn(NIC, "030000", "i915", boot_vga=True), fn(SATA, "010601", "ahci"),
                 acs_override=True, mounted={SATA: "/ (sda2)"})
    assert risks(pci_verdict(NIC, facts)) == [
        Risk.GROUP, Risk.HOST_STORAGE, Risk.BOOT_VGA, Risk.ACS_OVERRIDE]
    assert risks(pci_verdict(NIC, replace(facts, iommu_enabled=False))) == [
        Risk.NO_IOMMU, Risk.HOST_STORAGE, Risk.BOOT_VGA, Risk.ACS_OVERRIDE]


def test_group_members():
    facts = host(fn(PORT, "060400", "pcieport"), fn(NIC), fn(AUDIO), fn(SATA, group=3))
    assert group_members(NIC, facts) == (PORT, AUDIO)
    assert group_members(SATA, facts) == ()
    assert group_members("0000:09:00.0", facts) == ()
    assert group_members(NIC, replace(facts, groups={})) == (PORT, AUDIO)


def test_verdict_reason_without_findings():
    assert Verdict().ok and Verdict().reason() == ""
    assert not Verdict((Finding(Risk.GROUP, "x"),)).ok


MEMBER_ADDRESSES = [f"0000:00:1f.{n}" for n in range(6)]
members = st.lists(
    st.tuples(st.sampled_from(["060400", "060000", "010601", "0c0330", "040300"]),
              st.sampled_from(["", "vfio-pci", "pci-stub", "ahci", "snd_hda_intel", "pcieport"]),
              st.booleans(),  # moves together with the device
              st.booleans()),  # holds a mount
    max_size=len(MEMBER_ADDRESSES))


@given(members, st.booleans(), st.booleans(), st.booleans(), st.booleans(),
       st.frozensets(st.sampled_from(sorted(ALL_NAMES))))
def test_ok_only_if_every_member_is_harmless_and_nothing_is_mounted(
        spec, self_mounted, iommu, boot_vga, acs, allowed):
    """Whatever else is true, ``ok`` means: an IOMMU, no host driver keeps a non-bridge
    co-member, no function of the group backs a mount, and each opt-in risk was accepted."""
    addresses = MEMBER_ADDRESSES[:len(spec)]
    functions = [fn(NIC, boot_vga=boot_vga)] + [fn(a, c, d) for a, (c, d, _, _) in
                                                zip(addresses, spec, strict=True)]
    together = frozenset(a for a, (_, _, t, _) in zip(addresses, spec, strict=True) if t)
    mounted = {a: "/x (sdx1)" for a, (_, _, _, m) in zip(addresses, spec, strict=True) if m}
    if self_mounted:
        mounted[NIC] = "/ (sda1)"
    facts = host(*functions, iommu=iommu, acs_override=acs, mounted=mounted)
    harmless = all(f.driver in ("", "vfio-pci", "pci-stub", "pcieport")
                   or (f.address in together and not f.class_code.startswith("06"))
                   for f in functions[1:])
    accepted = ((not boot_vga or "boot-vga" in allowed)
                and (not acs or "acs-override" in allowed))
    expected = iommu and harmless and not mounted and accepted
    assert pci_verdict(NIC, facts, allowed, together).ok == expected


# ------------------------------------------------------------------ the three-way verdict

BOOT_GPU = fn(NIC, "030000", "i915", boot_vga=True)


@pytest.mark.parametrize(("facts", "address", "level"), [
    (ALONE, NIC, Level.OK),
    (host(BOOT_GPU), NIC, Level.WARNING),
    (host(fn(NIC), acs_override=True), NIC, Level.WARNING),
    (host(fn(NIC, reset_method="", reset_shown=False)), NIC, Level.WARNING),
    (host(BOOT_GPU, acs_override=True), NIC, Level.WARNING),
    (host(BOOT_GPU, fn(SATA, "010601", "ahci")), NIC, Level.UNSAFE),
    (host(fn(NIC), mounted={NIC: "/ (sda2)"}), NIC, Level.UNSAFE),
    (host(fn(NIC, group=None), iommu=False), NIC, Level.UNSAFE),
    (ALONE, "0000:09:00.0", Level.UNSAFE),
    (host(fn(PORT, "060400", "pcieport")), PORT, Level.BRIDGE),
    (host(fn(PORT, "060100", "lpc_ich")), PORT, Level.BRIDGE),
], ids=["nothing", "boot-vga", "acs-override", "no-reset", "two-opt-ins", "opt-in-and-group",
        "mounted", "no-iommu", "not-found", "pci-bridge", "isa-bridge"])
def test_the_policy_free_verdict_is_three_way(facts, address, level):
    """Only risks a rule may accept by name read ``warning``; anything else ``unsafe``."""
    assert safety(address, facts)[0] is level
    rows = {row[0]: row for _, rows in iommu_table(facts) for row in rows}
    if address in rows:
        assert rows[address][4] == level


def test_warning_reasons_say_how_to_accept_and_accepted_ones_stay_warnings():
    level, reason = safety(NIC, host(BOOT_GPU))
    assert (level, reason) == (Level.WARNING, (
        "0000:03:00.0 is the boot VGA device, which shows the host's console "
        '(a rule may accept it with allow_risks = ["boot-vga"])'))
    accepted = pci_verdict(NIC, host(BOOT_GPU), allowed=frozenset({"boot-vga"}))
    assert accepted.ok and accepted.level is Level.WARNING
    assert Verdict().level is Level.OK
    assert safety(PORT, host(fn(PORT, "060400", "pcieport"))) == (Level.BRIDGE, "")


# ------------------------------------------------------------------ bridges in a group

@pytest.mark.parametrize(("class_code", "driver", "viable"), [
    ("060400", "pcieport", True),  # a root or switch port
    ("060400", "", True),
    ("060900", "pcieport", True),  # semi-transparent PCI-to-PCI
    ("060400", "shpchp", False),  # a bridge driver without driver_managed_dma
    ("060000", "", True),  # AMD's dummy host bridges: no driver
    ("060000", "k10temp", False),  # AMD data fabric function 3
    ("060000", "skl_uncore", False),  # Intel host bridge/DRAM registers
    ("060100", "", True),  # AMD FCH LPC: no driver
    ("060100", "lpc_ich", False),  # Intel LPC
    ("068000", "amd_pmc", False),  # "other bridge" with a driver
    ("0c0500", "i801_smbus", False),
    ("020000", "vfio-pci", True),
    ("020000", "mlx5_vfio_pci", True),  # vfio-pci's variant drivers
    ("020000", "pci-stub", True),
], ids=lambda v: str(v))
def test_a_member_keeps_the_group_viable_by_its_driver_not_its_class(class_code, driver, viable):
    """The kernel's rule: every other member is unbound or on a driver that leaves DMA
    to VFIO (vfio-pci and variants, pci-stub, pcieport); a bridge gets no pass by class."""
    facts = host(fn(NIC), fn(SATA, class_code, driver))
    assert pci_verdict(NIC, facts).ok is viable
    if not viable:
        assert SATA in pci_verdict(NIC, facts).reason()


def test_a_chipset_bridge_is_named_and_cannot_be_moved_along():
    """An LPC bridge on lpc_ich blocks the SMBus and SATA of its group, even when the
    policy sends it to the same guest (a bridge itself is never passed)."""
    smbus = "0000:00:1f.4"
    facts = host(fn(SATA, "010601", "ahci"), fn(PORT, "060100", "lpc_ich"),
                 fn(smbus, "0c0500", "i801_smbus"))
    verdict = pci_verdict(SATA, facts, together=frozenset({PORT, smbus}))
    assert [f.risk for f in verdict.blocking] == [Risk.GROUP]
    assert verdict.reason() == ("IOMMU group 7 is shared with 0000:00:1c.0 (ISA bridge, class "
                                "060100, bound to lpc_ich) which stays on the host")
    assert pci_verdict(PORT, facts).reason() == (
        "0000:00:1c.0 is an ISA bridge (class 060100), never passed to a guest")


# ------------------------------------------------------------------ reset, alone or by bus

ROOT_PORT = fn(PORT, "060400", "pcieport", group=1)
GPU = "0000:01:00.0"
HDMI = "0000:01:00.1"


def no_reset(address: str, class_code: str, driver: str, parent: str = PORT,
             group: int = 1) -> PciFunction:
    """A function the kernel found no reset for (neither reset_method nor reset)."""
    return fn(address, class_code, driver, group=group, reset_method="", reset_shown=False,
              parent=parent)


def test_bus_mates_are_the_functions_behind_the_same_bridge():
    facts = host(ROOT_PORT, no_reset(GPU, "030000", "nouveau"),
                 no_reset(HDMI, "040300", "snd_hda_intel"), fn(NIC, parent=""))
    assert bus_mates(GPU, facts) == (HDMI,)
    assert bus_mates(NIC, facts) == ()
    assert bus_mates("0000:09:00.0", facts) == ()


@pytest.mark.parametrize(("functions", "address", "along", "blocked"), [
    # A GPU and its audio, no reset of their own, both going: one bus reset for both.
    ([no_reset(GPU, "030000", "nouveau"), no_reset(HDMI, "040300", "snd_hda_intel")],
     GPU, {HDMI}, False),
    ([no_reset(GPU, "030000", "nouveau"), no_reset(HDMI, "040300", "snd_hda_intel")],
     HDMI, {GPU}, False),
    # The audio alone: a bus reset would reset the GPU the host keeps.
    ([no_reset(GPU, "030000", "nouveau"), no_reset(HDMI, "040300", "snd_hda_intel")],
     HDMI, set(), True),
    # Alone on its bus and still no reset: the kernel refused even the bus reset.
    ([no_reset(GPU, "030000", "nouveau")], GPU, set(), True),
    # On the root bus: no bridge to reset it.
    ([no_reset(GPU, "030000", "nouveau", parent=""),
      no_reset(HDMI, "040300", "snd_hda_intel", parent="")], GPU, {HDMI}, True),
    # A bridge among the bus mates: its reset would reach everything below it.
    ([no_reset(GPU, "030000", "nouveau"), fn(HDMI, "060400", "pcieport", group=1,
                                             parent=PORT)], GPU, {HDMI}, True),
    # A person disabled every method: obeyed, whatever the bus.
    ([fn(GPU, "030000", "nouveau", group=1, reset_method="", parent=PORT),
      no_reset(HDMI, "040300", "snd_hda_intel")], GPU, {HDMI}, True),
], ids=["gpu-with-audio", "audio-with-gpu", "audio-alone", "alone-on-its-bus", "root-bus",
        "bridge-mate", "disabled-by-hand"])
def test_no_reset_is_lifted_only_by_a_bus_reset_of_mates_going_along(functions, address,
                                                                     along, blocked):
    facts = host(ROOT_PORT, *functions)
    group_mates = frozenset(along) & frozenset(group_members(address, facts))
    verdict = pci_verdict(address, facts, together=group_mates, along=frozenset(along))
    assert (Risk.NO_RESET in [f.risk for f in verdict.blocking]) is blocked


def test_no_reset_texts_say_which_file_is_missing_and_what_would_help():
    facts = host(ROOT_PORT, no_reset(GPU, "030000", "nouveau"),
                 no_reset(HDMI, "040300", "snd_hda_intel"))
    assert pci_verdict(HDMI, facts, together=frozenset({GPU})).ok
    alone = pci_verdict(HDMI, facts)
    assert [f.risk for f in alone.blocking] == [Risk.GROUP, Risk.NO_RESET]
    assert alone.blocking[1].text == (
        "0000:01:00.1 has no reset method (the kernel shows neither reset_method nor reset "
        "for it): what one guest leaves in it reaches the next, and its way back to the host "
        "driver may hang; a bus reset through 0000:00:1c.0 resets it only together with "
        '0000:01:00.0, so they must go to the same guest (a rule may accept it with '
        'allow_risks = ["no-reset"])')
    disabled = pci_verdict(NIC, host(fn(NIC, reset_method="")))
    assert disabled.reason().startswith(
        "0000:03:00.0 has no reset method left (a person disabled them all: its sysfs "
        "reset_method is empty; 'echo default > reset_method' restores them)")


# ------------------------------------------------------------------ an ACS override ignored

def test_an_ignored_acs_override_is_a_note_not_a_risk():
    """On a stock kernel the word changes nothing: no acs-override risk, but the
    reason says why the groups did not split."""
    note = ("pcie_acs_override= is on the command line but this kernel ignores it (it "
            "lacks the out-of-tree ACS override patch): the IOMMU groups are the hardware's "
            "own")
    alone = host(fn(NIC), acs_ignored=True)
    assert pci_verdict(NIC, alone).ok
    assert safety(NIC, alone) == (Level.OK, note)
    shared = host(fn(NIC), fn(SATA, "010601", "ahci"), acs_ignored=True)
    assert pci_verdict(NIC, shared).reason().endswith("stays on the host; " + note)
    boot = pci_verdict(NIC, host(BOOT_GPU, acs_ignored=True), allowed=frozenset({"boot-vga"}))
    assert boot.ok and boot.reason().endswith("console; " + note)
