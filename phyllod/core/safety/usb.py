"""The verdict before a USB device leaves the host: what the host would lose.

A USB device is its own isolation unit, so unlike PCI there is no group to
weigh; what can go wrong is the host losing something it needs: a filesystem
mounted from a stick or disk (its data goes with it), or every keyboard it
has. Both are weighed over everything below the device's place in sysfs, so
one check covers a device and a hub alike: a hub takes what is plugged in
behind it, a keyboard (or a stick) takes itself, and the host loses the same
either way.

Pure, over :class:`~phyllod.core.model.HostFacts` as the sysfs adapter read them.
"""

from __future__ import annotations

from phyllod.core.model import Device, HostFacts
from phyllod.core.safety.verdict import Finding, Risk, Verdict, keyboard_findings, with_hint


def usb_verdict(device: Device, facts: HostFacts,
                allowed: frozenset[str] = frozenset()) -> Verdict:
    """Whether ``device`` may be passed to a guest; ``allowed`` names accepted risks."""
    below = device.sys_path.rstrip("/") + "/"
    blocking: list[Finding] = []
    warnings: list[Finding] = []
    mounts = sorted({what for path, what in facts.block_mounts.items()
                     if path.startswith(below)})
    if mounts:
        # Not a risk a rule can accept: the host would lose data in flight.
        blocking.append(Finding(Risk.HOST_STORAGE, f"{device.id} holds {', '.join(mounts)} "
                                                   "on the host; unmount it first"))
    name = f"{device.id} (a hub)" if device.is_hub else device.id
    for finding in keyboard_findings([(name, below)], facts):
        if finding.risk in allowed:
            warnings.append(finding)
        else:
            blocking.append(with_hint(finding))
    return Verdict(tuple(blocking), tuple(warnings))
