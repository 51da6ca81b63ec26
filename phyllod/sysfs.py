"""Readers of host facts in sysfs, over a root path so tests can point them at a fixture."""

from __future__ import annotations

from pathlib import Path


def iommu_enabled(sys_root: Path = Path("/sys")) -> bool:
    """Whether the kernel runs an IOMMU: it registers one under /sys/class/iommu.

    ``intel_iommu=on`` on a machine without VT-d, or an IOMMU the kernel
    disabled, leaves the class empty; that is what decides PCI passthrough.
    """
    try:
        return any((sys_root / "class" / "iommu").iterdir())
    except OSError:
        return False
