"""The HOLDS memo: the mounts computed again exactly when something they are made of
changed, the keyboards judged once per input device (issue 18).

A fixture sysfs tree (links as the kernel lays them out) and the real
:func:`~phyllod.host.sysfs.read_holds`; each row changes one thing and says
whether the memo must compute again. Whatever the row, the memo's answer is
the one a fresh read gives.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from phyllod.host import sysfs_keyboards
from phyllod.host.holds_memo import HoldsMemo
from phyllod.host.sysfs import host_keyboards, read_holds, read_mounted

PCI = "devices/pci0000:00/0000:00:1f.2"
MOUNTS = "25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"


def _link(root: Path, at: str, target: str) -> None:
    """A relative symlink ``at`` → ``target`` (both under root), replacing any old one
    with a new node, as the kernel's new device would be."""
    path = root / at
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = path.with_name(path.name + ".new")
    fresh.symlink_to(os.path.relpath(root / target, path.parent))
    fresh.replace(path)


def _write(root: Path, at: str, text: str) -> None:
    path = root / at
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _disk(root: Path, name: str, major_minor: str, where: str) -> None:
    _write(root, f"{where}/block/{name}/dev", major_minor + "\n")
    _link(root, f"class/block/{name}", f"{where}/block/{name}")
    _link(root, f"dev/block/{major_minor}", f"{where}/block/{name}")


def _keyboard(root: Path, name: str, where: str) -> None:
    _write(root, f"{where}/{name}/capabilities/ev", "120013\n")
    _write(root, f"{where}/{name}/capabilities/key", "fffffffffffffffe\n")
    _write(root, f"{where}/{name}/name", "Board\n")
    _link(root, f"class/input/{name}", f"{where}/{name}")


def _texts(mounts: str, swaps: str = "") -> Callable[[], tuple[str, str]]:
    return lambda: (mounts, swaps)


@pytest.fixture
def sys_root(tmp_path: Path) -> Path:
    root = tmp_path / "sys"
    _disk(root, "sda", "8:0", f"{PCI}/ata1/host0/target0:0:0/0:0:0:0")
    _disk(root, "sda1", "8:1", f"{PCI}/ata1/host0/target0:0:0/0:0:0:0/block/sda")
    _keyboard(root, "input3", "devices/platform/i8042/serio0/input")
    return root


USB = "devices/pci0000:00/0000:00:14.0/usb1/1-2"
ROWS: list[tuple[str, Callable[[Path], str | None], bool]] = [
    ("nothing changed", lambda r: None, False),
    ("a USB device's own attribute", lambda r: _write(r, f"{USB}/idVendor", "1050\n"), False),
    ("a stick's disk appears", lambda r: _disk(r, "sdb", "8:16", f"{USB}/1-2:1.0/host6"), True),
    ("the root disk's node re-created (same name)",
     lambda r: _disk(r, "sda1", "8:1", f"{PCI}/ata1/host0/target0:0:0/0:0:0:0/block/sda"),
     True),
    ("a dm device's slaves change",
     lambda r: (_disk(r, "dm-0", "254:0", "devices/virtual"), None)[1], True),
    ("a keyboard appears", lambda r: _keyboard(r, "input9", f"{USB}/1-2:1.0/input"), False),
    ("the mounts change", lambda r: MOUNTS + "26 25 8:17 /m /m rw - vfat /dev/sdb1 rw\n", True),
]


@pytest.mark.parametrize(("what", "change", "computes"), ROWS, ids=[r[0] for r in ROWS])
def test_the_memo_computes_again_exactly_when_its_inputs_change(
        sys_root: Path, what: str, change: Callable[[Path], str | None], computes: bool):
    memo = HoldsMemo(read_mounted, host_keyboards)
    assert memo(sys_root, _texts(MOUNTS)) == read_holds(sys_root, _texts(MOUNTS))
    assert memo(sys_root, _texts(MOUNTS)) == memo(sys_root, _texts(MOUNTS))
    assert memo.computed == 1
    mounts = change(sys_root) or MOUNTS
    assert memo(sys_root, _texts(mounts)) == read_holds(sys_root, _texts(mounts)), what
    assert memo.computed == 1 + computes, what


def test_stacked_devices_and_dm_names_are_part_of_the_fingerprint(sys_root: Path):
    """LUKS on a stick: what backs a mounted mapping, and its name, change in place."""
    _disk(sys_root, "dm-0", "254:0", "devices/virtual")
    _write(sys_root, "devices/virtual/block/dm-0/dm/name", "crypt\n")
    (sys_root / "devices/virtual/block/dm-0/slaves").mkdir()
    mounts = MOUNTS + "27 25 254:0 / /secret rw - ext4 /dev/mapper/crypt rw\n"
    memo = HoldsMemo(read_mounted, host_keyboards)
    memo(sys_root, _texts(mounts))
    _disk(sys_root, "sdb", "8:16", f"{USB}/1-2:1.0/host6")
    memo(sys_root, _texts(mounts))
    assert memo.computed == 2  # a new disk
    _link(sys_root, "devices/virtual/block/dm-0/slaves/sdb", f"{USB}/1-2:1.0/host6/block/sdb")
    _, by_path, _ = memo(sys_root, _texts(mounts))
    assert memo.computed == 3 and by_path == read_holds(sys_root, _texts(mounts))[1]
    assert any("/1-2/" in path for path in by_path), by_path  # the stick now holds /secret
    _write(sys_root, "devices/virtual/block/dm-0/dm/name", "renamed\n")
    memo(sys_root, _texts(mounts))
    assert memo.computed == 4


def test_each_input_device_is_judged_once_while_it_lives(sys_root: Path, monkeypatch):
    """A plugged keyboard is looked at; the host's others are not (their links are
    most of the cost); one re-created under its old name is looked at again."""
    judged: list[str] = []
    real = sysfs_keyboards._keyboard

    def counted(root: str, entry: str) -> tuple[str, str] | None:
        judged.append(os.path.basename(entry))
        return real(root, entry)

    monkeypatch.setattr(sysfs_keyboards, "_keyboard", counted)
    memo = HoldsMemo(read_mounted, host_keyboards)
    memo(sys_root, _texts(MOUNTS))
    assert judged == ["input3"]
    _keyboard(sys_root, "input9", f"{USB}/1-2:1.0/input")
    assert len(memo(sys_root, _texts(MOUNTS))[2]) == 2
    assert judged == ["input3", "input9"]
    _keyboard(sys_root, "input9", f"{USB}/1-3:1.0/input")  # input9 again, another device
    boards = memo(sys_root, _texts(MOUNTS))[2]
    assert judged == ["input3", "input9", "input9"]
    assert any("/1-3:1.0/" in path for path in boards), boards
    (sys_root / "class/input/input9").unlink()
    assert len(memo(sys_root, _texts(MOUNTS))[2]) == 1 and len(judged) == 3


@pytest.mark.parametrize(("what", "change", "computes"), ROWS, ids=[r[0] for r in ROWS])
def test_while_the_watch_hears_changes_the_memo_looks_only_after_news(
        sys_root: Path, what: str, change: Callable[[Path], str | None], computes: bool):
    """host/holds_watch tells of every mount, swap and block device change: until one
    is told, a plug's turn neither reads the texts nor takes the fingerprint; after it,
    the memo looks and computes exactly when the fingerprint says (the rows above)."""
    reads: list[str] = []

    def texts(mounts: str) -> Callable[[], tuple[str, str]]:
        return lambda: (reads.append(mounts), (mounts, ""))[1]

    memo = HoldsMemo(read_mounted, host_keyboards)
    memo.hearing(True)
    memo(sys_root, texts(MOUNTS))
    memo(sys_root, texts(MOUNTS))
    assert (len(reads), memo.looked, memo.computed) == (1, 1, 1)
    mounts = change(sys_root) or MOUNTS
    unheard = memo(sys_root, texts(mounts))
    assert (len(reads), memo.looked, memo.computed) == (1, 1, 1), what
    assert unheard[:2] == read_holds(sys_root, _texts(MOUNTS))[:2]  # as last looked at
    memo.stale()
    assert memo(sys_root, texts(mounts)) == read_holds(sys_root, _texts(mounts)), what
    assert (len(reads), memo.looked, memo.computed) == (2, 2, 1 + computes), what


def test_a_watch_that_starts_or_stops_makes_the_memo_look_again(sys_root: Path):
    """What changed before the watch listened was not heard; without a watch, every
    call looks (as before it)."""
    memo = HoldsMemo(read_mounted, host_keyboards)
    memo(sys_root, _texts(MOUNTS))
    memo.hearing(True)
    memo(sys_root, _texts(MOUNTS))
    memo(sys_root, _texts(MOUNTS))
    assert memo.looked == 2
    memo.hearing(False)
    memo(sys_root, _texts(MOUNTS))
    memo(sys_root, _texts(MOUNTS))
    assert (memo.looked, memo.computed) == (4, 1)
