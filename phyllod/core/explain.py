"""The answer to "why is this device where it is?", in words a person reads."""

from __future__ import annotations

from phyllod.core.model import Assignment, Device, Override, OverrideKind, State, Subsystem

_WHERE = {
    State.HOST: "on the host",
    State.PENDING: "waiting to go to '{guest}'",
    State.SLEEPING: "on the host while it sleeps; goes back to '{guest}' after resume",
    State.ASKING: "on the host, waiting for an answer",
    State.ATTACHING: "being attached to '{guest}'",
    State.ATTACHED: "attached to '{guest}'",
    State.DETACHING: "being removed from '{guest}'",
    State.DENIED: "on the host (denied)",
    State.FAILED: "failed (guest '{guest}')",
}


def explain(device: Device, assignment: Assignment, override: Override | None,
            remembered: str | None = None, safety: str = "") -> str:
    """Several ``key: value`` lines: the device, where it is, why, and what decides.

    ``safety`` is a PCI function's policy-free verdict, as ``phyllodctl iommu``
    shows it ("warning: …"): what passing it would take, before any rule asks.
    """
    where = _WHERE[assignment.state].format(guest=assignment.guest)
    if assignment.state is State.FAILED and not assignment.guest:
        where = "failed"
    lines = [
        f"device: {device.describe()}",
        *_names(device),
        f"identity: {device.identity} ({identity_note(device)})",
        f"state: {assignment.state}: {where}",
        f"why: {assignment.reason}",
        f"rule: {assignment.rule or '(none)'}",
    ]
    if safety:
        lines.append(f"safety: {safety}")
    if override is None:
        lines.append("override: none (the policy decides)")
    else:
        target = f"attach to '{override.guest}'" if override.kind is OverrideKind.ATTACH \
            else "keep on the host"
        lines.append(f"override: {target} (set by hand; 'phyllodctl clear' hands the device "
                     "back to the policy)")
    if remembered is not None:
        target = f"send to '{remembered}'" if remembered else "keep on the host"
        lines.append(f"remembered answer: {target} ('phyllodctl forget' asks again at the "
                     "next plug)")
    return "\n".join(lines)


def identity_note(device: Device) -> str:
    """What a person's choices for ``device`` are kept under, and so follow."""
    if device.subsystem is Subsystem.PCI:
        return "its PCI address"
    if device.serial and device.serial_doubt:
        return f"{device.serial_doubt}; identified by its port"
    if device.serial:
        return "its serial number: choices follow it to any port"
    return "it reports no serial number; identified by its port"


def _names(device: Device) -> list[str]:
    """The hardware database's names, when they add to what the device says itself."""
    db = " ".join(s for s in (device.vendor_db, device.model_db) if s)
    own = " ".join(s for s in (device.manufacturer, device.product_name) if s)
    return [f"hardware database: {db}"] if db and own else []
