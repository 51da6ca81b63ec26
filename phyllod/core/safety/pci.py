"""The safety verdict before any PCI function leaves the host.

Passing a PCI function hands a guest DMA over whatever its IOMMU group can
reach, and takes away from the host whatever the group's members drive. Tools
users have today find out late ("group 7 is not viable" from libvirt) or not at
all (the host loses its root disk). This module says before anything moves,
and names the exact members and mounts, so "explain" has an answer.

Pure: it weighs :class:`~phyllod.core.model.HostFacts` the sysfs adapter read, so
every rule is tested on hand-built facts.
"""

from __future__ import annotations

import re

from phyllod.core.model import HostFacts, PciFunction
from phyllod.core.safety.verdict import (
    Finding,
    Level,
    Risk,
    Verdict,
    joined,
    keyboard_findings,
    with_hint,
)

#: Drivers a co-member of the group may stay bound to: the kernel lets VFIO
#: claim a group only while every member has no driver or one that declares
#: ``driver_managed_dma`` (vfio-pci and its variants, pci-stub, pcieport since
#: 5.19; pci-stub and any driver on a bridge before). Any other driver does
#: DMA for the host, so the group "is not viable". A bridge earns no exception
#: by its class: an LPC bridge on lpc_ich or a host bridge on k10temp blocks.
_DMA_SAFE_DRIVERS = frozenset({"", "vfio-pci", "pci-stub", "pcieport"})
#: vfio-pci's variant drivers (mlx5_vfio_pci, hisi_acc_vfio_pci, …) hand the
#: function to user space as vfio-pci does.
_VFIO_VARIANT = re.compile(r"[a-z0-9_]+_vfio_pci")
#: PCI-to-PCI bridges (normal and semi-transparent): the only 06xx functions
#: with a secondary bus, which a bus reset resets as one.
_PCI_TO_PCI = ("0604", "0609")
#: What each kind of 06xx function is (PCI class codes, subclass byte).
_BRIDGE_KINDS = {"00": "host bridge", "01": "ISA bridge", "02": "EISA bridge",
                 "03": "MicroChannel bridge", "04": "PCI bridge or port",
                 "05": "PCMCIA bridge", "06": "NuBus bridge", "07": "CardBus bridge",
                 "08": "RACEway bridge", "09": "semi-transparent PCI bridge",
                 "0a": "InfiniBand-to-PCI host bridge"}

_NO_IOMMU = ("the host has no active IOMMU: enable intel_iommu=on / amd_iommu=on "
             "and VT-d/AMD-Vi in firmware")
_ACS = "the kernel runs with pcie_acs_override, so IOMMU groups may not isolate this device"
_ACS_IGNORED = ("pcie_acs_override= is on the command line but this kernel ignores it "
                "(it lacks the out-of-tree ACS override patch): the IOMMU groups are the "
                "hardware's own")
_LEAKS = ("what one guest leaves in it reaches the next, and its way back to the host driver "
          "may hang")




def pci_verdict(address: str, facts: HostFacts, allowed: frozenset[str] = frozenset(),
                together: frozenset[str] = frozenset(),
                along: frozenset[str] = frozenset()) -> Verdict:
    """Whether the function at ``address`` may be passed to a guest, and why not.

    ``allowed`` holds the risk names a rule accepts; only names in
    :data:`OPT_IN` have an effect (the policy parser rejects other names, so
    an unknown one never silently widens anything here). ``together`` holds
    the group members the policy moves to the same guest in the same step:
    they leave the host too, so they do not make the group unviable.
    ``along`` holds every other function the policy sends to that guest (in
    any group): functions on one bus that all go there can be reset together.
    """
    blocking: list[Finding] = []
    warnings: list[Finding] = []
    notes: list[str] = []
    if not facts.iommu_enabled:
        blocking.append(Finding(Risk.NO_IOMMU, _NO_IOMMU))
    function = facts.functions.get(address)
    if function is None:
        blocking.append(Finding(Risk.NOT_FOUND, f"no PCI function {address} in sysfs"))
        return Verdict(tuple(blocking))
    if function.is_bridge:
        kind = _bridge_kind(function)
        article = "an" if kind[0] in "AEIOU" else "a"
        blocking.append(Finding(Risk.BRIDGE, f"{address} is {article} {kind} (class "
                                              f"{function.class_code}), never passed to a guest"))
        return Verdict(tuple(blocking))
    if facts.iommu_enabled:
        blocking += _group_findings(function, facts, together)
    blocking += _storage_findings(function, facts)
    opt_ins = []
    if function.boot_vga:
        opt_ins.append(Finding(Risk.BOOT_VGA, f"{address} is the boot VGA device, which shows "
                                              "the host's console"))
    if facts.acs_override:
        opt_ins.append(Finding(Risk.ACS_OVERRIDE, _ACS))
    elif facts.acs_override_ignored:
        notes.append(_ACS_IGNORED)
    opt_ins += _reset_findings(function, facts, together | along)
    opt_ins += keyboard_findings(
        [(address, f"/{address}/")] + [(m, f"/{m}/") for m in group_members(address, facts)],
        facts)
    for finding in opt_ins:
        if finding.risk in allowed:
            warnings.append(finding)
        else:
            blocking.append(with_hint(finding))
    return Verdict(tuple(blocking), tuple(warnings), tuple(notes))


#: One function in ``iommu_table``: address, vendor:device, class, driver, verdict, reason.
TableRow = tuple[str, str, str, str, str, str]


def iommu_table(facts: HostFacts) -> list[tuple[int, list[TableRow]]]:
    """Every IOMMU group and, per function, whether it could be passed and why not.

    The verdict is the policy-free one (no risk accepted, no group mate moved
    along), which is what a person choosing a device to pass wants to see
    first: see :class:`Level`.
    """
    groups = []
    for number, members in sorted(facts.groups.items()):
        rows = []
        for address in members:
            f = facts.functions.get(address)
            if f is None:
                continue
            level, reason = safety(address, facts)
            rows.append((address, f"{f.vendor}:{f.device}", f.class_code, f.driver,
                         level.value, reason))
        groups.append((number, rows))
    return groups


def safety(address: str, facts: HostFacts) -> tuple[Level, str]:
    """The policy-free verdict of one function and its reason ("" for a bridge):
    the same in the iommu table and in explain."""
    function = facts.functions.get(address)
    if function is not None and function.is_bridge:
        return Level.BRIDGE, ""
    verdict = pci_verdict(address, facts)
    return verdict.level, verdict.reason()


def bus_mates(address: str, facts: HostFacts) -> tuple[str, ...]:
    """The other functions on the same secondary bus (same upstream bridge), sorted."""
    function = facts.functions.get(address)
    if function is None or not function.parent:
        return ()
    return tuple(sorted(a for a, f in facts.functions.items()
                        if f.parent == function.parent and a != address))


def group_members(address: str, facts: HostFacts) -> tuple[str, ...]:
    """The other functions in the IOMMU group of ``address`` (sorted; () if none known).

    Read from the group listing; if that lacks the group, from the functions'
    own ``iommu_group``, so inconsistent facts still show every co-member.
    """
    function = facts.functions.get(address)
    if function is None or function.iommu_group is None:
        return ()
    group = function.iommu_group
    listed = set(facts.groups.get(group, ()))
    listed |= {a for a, f in facts.functions.items() if f.iommu_group == group}
    return tuple(sorted(listed - {address}))



def _reset_findings(function: PciFunction, facts: HostFacts,
                    along: frozenset[str]) -> list[Finding]:
    """NO_RESET, as the kernel decides it.

    The kernel lists a function's reset methods (flr, af_flr, pm, bus, …)
    when it appears, and shows ``reset_method``/``reset`` only if it found
    one. It never offers ``bus`` (a secondary bus reset by the upstream
    bridge) to a function that shares its bus, since that would reset the
    others too: a GPU and its HDMI audio often have no reset of their own.
    When every function on that bus goes to the same guest, VFIO's hot reset
    (and libvirt's) does exactly that bus reset, for all of them at once, so
    the risk is gone. A person who wrote ``reset_method`` empty is obeyed.
    """
    if function.reset_method != "":
        return []
    address = function.address
    if function.reset_shown:
        return [Finding(Risk.NO_RESET, f"{address} has no reset method left (a person "
                                       "disabled them all: its sysfs reset_method is empty; "
                                       "'echo default > reset_method' restores them): "
                                       f"{_LEAKS}")]
    mates = bus_mates(address, facts)
    bridge = facts.functions.get(function.parent)
    resettable_bus = (bridge is not None and bridge.class_code[:4] in _PCI_TO_PCI and bool(mates)
                      and not any(_is_bridge(facts.functions.get(m)) for m in mates))
    if resettable_bus and all(m in along for m in mates):
        return []
    text = (f"{address} has no reset method (the kernel shows neither reset_method nor reset "
            f"for it): {_LEAKS}")
    if resettable_bus:
        text += (f"; a bus reset through {function.parent} resets it only together with "
                 f"{joined(list(mates))}, so they must go to the same guest")
    return [Finding(Risk.NO_RESET, text)]


def _group_findings(function: PciFunction, facts: HostFacts,
                    together: frozenset[str]) -> list[Finding]:
    """GROUP: libvirt/VFIO refuse a group whose other members the host still drives."""
    if function.iommu_group is None:
        return [Finding(Risk.GROUP, f"{function.address} is in no IOMMU group, so the IOMMU "
                                    "does not isolate it")]
    staying = [m for m in group_members(function.address, facts)
               if not _leaves_or_idle(facts.functions.get(m), together)]
    if not staying:
        return []
    names = [_describe_member(m, facts.functions.get(m)) for m in staying]
    verb = "stays" if len(names) == 1 else "stay"
    return [Finding(Risk.GROUP, f"IOMMU group {function.iommu_group} is shared with "
                                f"{joined(names)} which {verb} on the host")]


def _leaves_or_idle(member: PciFunction | None, together: frozenset[str]) -> bool:
    """A co-member that keeps the group viable: bound to no driver that does DMA for
    the host, or going to the same guest (a bridge never goes: it stays with its driver)."""
    if member is None:
        return False
    if member.driver in _DMA_SAFE_DRIVERS or _VFIO_VARIANT.fullmatch(member.driver):
        return True
    return member.address in together and not member.is_bridge


def _is_bridge(member: PciFunction | None) -> bool:
    return member is not None and member.is_bridge


def _bridge_kind(function: PciFunction) -> str:
    return _BRIDGE_KINDS.get(function.class_code[2:4], "bridge")


def _describe_member(address: str, member: PciFunction | None) -> str:
    if member is None:
        return f"{address} (not in sysfs)"
    kind = f"{_bridge_kind(member)}, " if member.is_bridge else ""
    return f"{address} ({kind}class {member.class_code}, bound to {member.driver})"


def _storage_findings(function: PciFunction, facts: HostFacts) -> list[Finding]:
    """HOST_STORAGE: one finding per mount, named after its nearest function.

    Every function on a disk's sysfs path is in ``facts.mounted`` (the
    controller and the ports above it); naming the function itself first,
    then endpoints before bridges, says the same mount once and clearly.
    """
    members = group_members(function.address, facts)
    bridges = {m for m in members if (f := facts.functions.get(m)) is not None and f.is_bridge}
    order = [function.address, *sorted(members, key=lambda m: (m in bridges, m))]
    findings: list[Finding] = []
    said: set[str] = set()
    for address in order:
        mount = facts.mounted.get(address)
        if mount is None or mount in said:
            continue
        said.add(mount)
        who = address if address == function.address else (
            f"IOMMU group {function.iommu_group} member {address}")
        findings.append(Finding(Risk.HOST_STORAGE, f"{who} holds {mount}"))
    return findings
