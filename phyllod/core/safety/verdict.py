"""The verdict vocabulary every safety check speaks: risks, findings, verdicts.

A check (:mod:`~phyllod.core.safety.pci`, :mod:`~phyllod.core.safety.usb`)
returns a :class:`Verdict`: blocking findings forbid the move, warnings are
risks a rule accepted by name. Which risks a rule may accept at all
(:data:`OPT_IN`) and how a blocking one says so (:func:`with_hint`) are the
same for every kind of device, and so is what the host loses with its only
keyboard (:func:`keyboard_findings`): they live here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from phyllod.core.model import HostFacts


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

_USB_PORT = re.compile(r"[0-9]+-[0-9]+(?:\.[0-9]+)*")


class Level(StrEnum):
    """A function's verdict in ``phyllodctl iommu``, ``GetIommuGroups`` and explain."""

    OK = "ok"  # nothing found
    WARNING = "warning"  # only risks a rule may accept by name (allow_risks)
    UNSAFE = "unsafe"  # something no rule can accept: it cannot be passed as things are
    BRIDGE = "bridge"  # a bridge or port: routes, never passed


@dataclass(frozen=True)
class Finding:
    risk: Risk
    text: str


@dataclass(frozen=True)
class Verdict:
    """Blocking findings forbid the move; warnings are risks a rule accepted;
    notes are facts a person should know that change nothing (an ACS override
    the kernel ignores: why the groups did not split)."""

    blocking: tuple[Finding, ...] = ()
    warnings: tuple[Finding, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.blocking

    @property
    def level(self) -> Level:
        """UNSAFE if a finding no rule can accept blocks; WARNING if every finding,
        blocking or accepted, is an opt-in risk; OK if there is none."""
        if any(f.risk not in OPT_IN for f in self.blocking):
            return Level.UNSAFE
        return Level.WARNING if self.blocking or self.warnings else Level.OK

    def reason(self) -> str:
        """One sentence for a device's state: why it may not move, or what was accepted."""
        notes = "".join(f"; {n}" for n in self.notes)
        if self.blocking:
            return "; ".join(f.text for f in self.blocking) + notes
        if self.warnings:
            return "security warning: " + "; ".join(f.text for f in self.warnings) + notes
        return notes.removeprefix("; ")


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
            boards = joined([_keyboard(path, facts.keyboards[path]) for path in sorted(below)])
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


def joined(names: list[str]) -> str:
    """``names`` as a sentence lists them: "a", "a and b", "a, b and c"."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
