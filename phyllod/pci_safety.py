"""The safety verdict before any PCI function leaves the host.

Passing a PCI function hands a guest DMA over whatever its IOMMU group can
reach, and takes away from the host whatever the group's members drive. Tools
users have today find out late ("group 7 is not viable" from libvirt) or not at
all (the host loses its root disk). This module says before anything moves,
and names the exact members and mounts, so "explain" has an answer.

Pure: it weighs :class:`~phyllod.model.HostFacts` the sysfs adapter read, so
every rule is tested on hand-built facts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from phyllod.model import HostFacts, PciFunction


class Risk(StrEnum):
    NO_IOMMU = "no-iommu"
    GROUP = "group"  # the IOMMU group is not viable
    HOST_STORAGE = "host-storage"  # it or a group member backs a mounted filesystem
    BRIDGE = "bridge"  # the function is a bridge or port
    BOOT_VGA = "boot-vga"
    ACS_OVERRIDE = "acs-override"  # groups may lie
    NO_RESET = "no-reset"  # state leaks between guests; the way back may hang
    HOST_KEYBOARD = "host-keyboard"  # it carries every keyboard the host has
    NOT_FOUND = "not-found"


#: The only risks a rule may accept by name (``allow_risks = ["boot-vga"]``).
#: The others break the host or isolation outright, so nothing unblocks them.
OPT_IN: frozenset[Risk] = frozenset({Risk.BOOT_VGA, Risk.ACS_OVERRIDE, Risk.NO_RESET,
                                     Risk.HOST_KEYBOARD})

#: Drivers a co-member of the group may stay bound to: the kernel's VFIO
#: viability rule (they give the device to nobody on the host).
_HARMLESS_DRIVERS = frozenset({"", "vfio-pci", "pci-stub"})
_USB_PORT = re.compile(r"[0-9]+-[0-9]+(?:\.[0-9]+)*")

_NO_IOMMU = ("the host has no active IOMMU: enable intel_iommu=on / amd_iommu=on "
             "and VT-d/AMD-Vi in firmware")
_ACS = "the kernel runs with pcie_acs_override, so IOMMU groups may not isolate this device"


@dataclass(frozen=True)
class Finding:
    risk: Risk
    text: str


@dataclass(frozen=True)
class Verdict:
    """Blocking findings forbid the move; warnings are risks a rule accepted."""

    blocking: tuple[Finding, ...] = ()
    warnings: tuple[Finding, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.blocking

    def reason(self) -> str:
        """One sentence for a device's state: why it may not move, or what was accepted."""
        if self.blocking:
            return "; ".join(f.text for f in self.blocking)
        if self.warnings:
            return "security warning: " + "; ".join(f.text for f in self.warnings)
        return ""


def pci_verdict(address: str, facts: HostFacts, allowed: frozenset[str] = frozenset(),
                together: frozenset[str] = frozenset()) -> Verdict:
    """Whether the function at ``address`` may be passed to a guest, and why not.

    ``allowed`` holds the risk names a rule accepts; only names in
    :data:`OPT_IN` have an effect (the policy parser rejects other names, so
    an unknown one never silently widens anything here). ``together`` holds
    the group members the policy moves to the same guest in the same step:
    they leave the host too, so they do not make the group unviable.
    """
    blocking: list[Finding] = []
    warnings: list[Finding] = []
    if not facts.iommu_enabled:
        blocking.append(Finding(Risk.NO_IOMMU, _NO_IOMMU))
    function = facts.functions.get(address)
    if function is None:
        blocking.append(Finding(Risk.NOT_FOUND, f"no PCI function {address} in sysfs"))
        return Verdict(tuple(blocking))
    if function.is_bridge:
        blocking.append(Finding(Risk.BRIDGE, f"{address} is a PCI bridge or port (class "
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
    if function.reset_method == "":
        opt_ins.append(Finding(Risk.NO_RESET, f"{address} has no reset method (its sysfs "
                                              "reset_method is empty): what one guest leaves "
                                              "in it reaches the next, and its way back to "
                                              "the host driver may hang"))
    opt_ins += keyboard_findings(
        [(address, f"/{address}/")] + [(m, f"/{m}/") for m in group_members(address, facts)],
        facts)
    for finding in opt_ins:
        if finding.risk in allowed:
            warnings.append(finding)
        else:
            blocking.append(with_hint(finding))
    return Verdict(tuple(blocking), tuple(warnings))


#: One function in ``iommu_table``: address, vendor:device, class, driver, verdict, reason.
TableRow = tuple[str, str, str, str, str, str]


def iommu_table(facts: HostFacts) -> list[tuple[int, list[TableRow]]]:
    """Every IOMMU group and, per function, whether it could be passed and why not.

    The verdict is the policy-free one (no risk accepted), which is what a
    person choosing a device to pass wants to see first: ``ok``, ``warning``
    (only an opt-in risk), ``unsafe`` or ``bridge``.
    """
    groups = []
    for number, members in sorted(facts.groups.items()):
        rows = []
        for address in members:
            f = facts.functions.get(address)
            if f is None:
                continue
            verdict = pci_verdict(address, facts)
            status = ("bridge" if f.is_bridge else "ok" if verdict.ok and not verdict.warnings
                      else "warning" if verdict.ok else "unsafe")
            rows.append((address, f"{f.vendor}:{f.device}", f.class_code, f.driver, status,
                         "" if f.is_bridge else verdict.reason()))
        groups.append((number, rows))
    return groups


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


def keyboard_findings(places: list[tuple[str, str]], facts: HostFacts) -> list[Finding]:
    """HOST_KEYBOARD: moving a place (a PCI function, a USB hub) that carries every
    keyboard the host has leaves nobody at the machine able to type.

    ``places`` pairs a name with the sysfs path fragment that marks what lies
    below it (``/0000:00:14.0/``, ``/sys/devices/…/1-2/``). No finding when
    the host has no keyboard at all (a server) or keeps one elsewhere.
    """
    if not facts.keyboards:
        return []
    for name, fragment in places:
        below = [path for path in facts.keyboards if fragment in path]
        if len(below) == len(facts.keyboards):
            boards = _join([_keyboard(path, facts.keyboards[path]) for path in sorted(below)])
            only = "only keyboard" if len(below) == 1 else "only keyboards"
            return [Finding(Risk.HOST_KEYBOARD, f"{name} carries the host's {only}, {boards}")]
    return []


def _keyboard(path: str, name: str) -> str:
    """A keyboard as a person finds it: its name and, for USB, the port it is in."""
    ports = [part for part in path.split("/") if _USB_PORT.fullmatch(part)]
    return f"{name or 'a keyboard'} (usb:{ports[-1]})" if ports else (name or path)


def with_hint(finding: Finding) -> Finding:
    """A blocking opt-in risk tells the user the one way to accept it."""
    return Finding(finding.risk, f'{finding.text} (a rule may accept it with '
                                 f'allow_risks = ["{finding.risk}"])')


def _group_findings(function: PciFunction, facts: HostFacts,
                    together: frozenset[str]) -> list[Finding]:
    """GROUP: libvirt/VFIO refuse a group whose other members the host still drives."""
    if function.iommu_group is None:
        return [Finding(Risk.GROUP, f"{function.address} is in no IOMMU group, so the IOMMU "
                                    "does not isolate it")]
    staying = [m for m in group_members(function.address, facts)
               if m not in together and not _viable(facts.functions.get(m))]
    if not staying:
        return []
    names = [_describe_member(m, facts.functions.get(m)) for m in staying]
    verb = "stays" if len(names) == 1 else "stay"
    return [Finding(Risk.GROUP, f"IOMMU group {function.iommu_group} is shared with "
                                f"{_join(names)} which {verb} on the host")]


def _viable(member: PciFunction | None) -> bool:
    """A co-member that cannot hurt: a bridge, or a function no host driver uses."""
    return member is not None and (member.is_bridge or member.driver in _HARMLESS_DRIVERS)


def _describe_member(address: str, member: PciFunction | None) -> str:
    if member is None:
        return f"{address} (not in sysfs)"
    return f"{address} (class {member.class_code}, bound to {member.driver})"


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


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
