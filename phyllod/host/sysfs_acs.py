"""Whether the running kernel applies ``pcie_acs_override=``: part of the sysfs reader.

The ACS override is an out-of-tree patch (Alex Williamson's, carried by
linux-zen, Liquorix, Proxmox and linux-vfio). Stock Debian, Fedora and Ubuntu
kernels lack it: the word is then an unknown parameter, the IOMMU groups are
the hardware's, and flagging every function for it would be noise. The
patch's functions are named, to every reader, in the kernel's BTF and in
/proc/kallsyms; both are large, so each is streamed once, bounded.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

#: Functions the out-of-tree ACS override patch adds to drivers/pci/quirks.c (Alex
#: Williamson's, as linux-zen, Liquorix, Proxmox and linux-vfio carry it).
_ACS_PATCH = (b"pcie_acs_overrides", b"pcie_acs_override_setup")
#: A function every kernel since 3.x has beside it in quirks.c (static, reached
#: only through the same ACS quirk table): a listing that names it covers such
#: functions, so its silence about the patch's names is proof of absence.
_ACS_CONTROL = b"pci_quirk_intel_pch_acs"
_IDENTIFIER = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_LISTING_CAP = 64 << 20  # vmlinux BTF is ~6 MiB, kallsyms ~12 MiB
_CHUNK = 1 << 20


def kernel_ignores_acs_override(sys_root: Path = Path("/sys"),
                                proc_root: Path = Path("/proc")) -> bool:
    """Whether the running kernel lacks the patch that reads ``pcie_acs_override=``.

    Stock Debian, Fedora and Ubuntu kernels do not have it: the word is then
    an unknown parameter and the IOMMU groups are the hardware's. The patch's
    functions are named, to every reader, in the kernel's BTF
    (/sys/kernel/btf/vmlinux, under the sysfs root) and in /proc/kallsyms
    (which systemd's ProtectKernelTunables= hides from the unit). True only
    when one of them names the control function but none of the patch's;
    when neither can tell, the override is taken as applied (the safe side).
    """
    for listing in (sys_root / "kernel" / "btf" / "vmlinux", proc_root / "kallsyms"):
        found = _names_in(listing)
        if found & set(_ACS_PATCH):
            return False
        if _ACS_CONTROL in found:
            return True
    return False


def _names_in(listing: Path) -> frozenset[bytes]:
    """Which of the ACS names ``listing`` holds: read once per file (per boot), streamed."""
    try:
        st = listing.stat()
    except OSError:
        return frozenset()
    return _scan(str(listing), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=8)
def _scan(path: str, dev: int, ino: int, size: int, mtime: int) -> frozenset[bytes]:
    """Stream ``path`` (at most _LISTING_CAP bytes); the stat fields key the cache."""
    del dev, ino, size, mtime
    found: set[bytes] = set()
    tail = b""
    keep = max(len(n) for n in (*_ACS_PATCH, _ACS_CONTROL)) + 1
    try:
        with open(path, "rb") as listing:
            for _ in range(_LISTING_CAP // _CHUNK):
                chunk = listing.read(_CHUNK)
                window = tail + (chunk or b"\0")  # at the end, the last name is whole
                found.update(n for n in (*_ACS_PATCH, _ACS_CONTROL) if _has_name(window, n))
                if not chunk:
                    break
                tail = window[-keep:]
    except OSError:
        return frozenset()
    return frozenset(found)


def _has_name(data: bytes, name: bytes) -> bool:
    """``name`` as a whole symbol (not inside a longer one; a ``.cold`` suffix is a clone
    of the same function): bytes.find, as a regex over 10 MiB costs a second."""
    start = data.find(name)
    while start >= 0:
        end = start + len(name)
        # A name touching the window's end is judged in the next window (the tail).
        if (end < len(data) and data[end] not in _IDENTIFIER
                and (start == 0 or data[start - 1] not in _IDENTIFIER)):
            return True
        start = data.find(name, start + 1)
    return False
