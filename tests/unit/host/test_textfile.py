"""host/textfile: the metrics file replaced atomically, 0644, never through a symlink."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from phyllod.host.textfile import Textfile


def test_written_whole_with_mode_0644_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "phyllod.prom"
    old = os.umask(0o077)  # as phyllod's unit sets
    try:
        assert Textfile(path).write("a 1\n")
        assert Textfile(path).write("a 2\n")
    finally:
        os.umask(old)
    assert path.read_text() == "a 2\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["phyllod.prom"]  # no temporary left


def test_a_symlink_at_the_name_is_replaced_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "shadow"
    target.write_text("secret\n")
    path = tmp_path / "phyllod.prom"
    path.symlink_to(target)
    assert Textfile(path).write("a 1\n")
    assert target.read_text() == "secret\n"
    assert not path.is_symlink() and path.read_text() == "a 1\n"


def test_a_symlink_at_the_temporary_name_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "shadow"
    target.write_text("secret\n")
    (tmp_path / ".phyllod.prom.tmp").symlink_to(target)
    assert Textfile(tmp_path / "phyllod.prom").write("a 1\n")
    assert target.read_text() == "secret\n"
    assert (tmp_path / "phyllod.prom").read_text() == "a 1\n"


@pytest.mark.parametrize("where", ["missing", "unwritable"])
def test_a_directory_that_cannot_be_used_costs_one_warning(
        tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "node-exporter"
    if where == "unwritable":
        directory.mkdir()
        directory.chmod(0o555)
        if os.access(directory, os.W_OK):  # root ignores the mode; a file is no directory
            directory.rmdir()
            directory.write_text("")
    textfile = Textfile(directory / "phyllod.prom")
    with caplog.at_level(logging.INFO, logger="phyllod"):
        assert not textfile.write("a 1\n")
        assert not textfile.write("a 2\n")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "cannot write" in caplog.records[0].getMessage()
    if directory.is_file():
        directory.unlink()
    directory.mkdir(exist_ok=True)
    directory.chmod(0o755)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="phyllod"):
        assert textfile.write("a 3\n")
    assert [r.levelname for r in caplog.records] == ["INFO"]  # "written again"


def test_remove(tmp_path: Path) -> None:
    textfile = Textfile(tmp_path / "phyllod.prom")
    textfile.remove()  # nothing there: nothing raised
    textfile.write("a 1\n")
    textfile.remove()
    assert list(tmp_path.iterdir()) == []
