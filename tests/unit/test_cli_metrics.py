"""``phyllod --metrics-file``: auto, none or a path, and auto's default."""

from __future__ import annotations

from pathlib import Path

import pytest

from phyllod import cli
from phyllod.host import textfile


@pytest.mark.parametrize(("value", "exists", "expected"), [
    ("auto", True, Path("/var/lib/prometheus/node-exporter/phyllod.prom")),
    ("auto", False, None),  # no node_exporter directory: no metrics
    ("none", True, None),
    ("", True, None),
    ("/srv/metrics/phyllod.prom", False, Path("/srv/metrics/phyllod.prom")),
])
def test_metrics_file(value: str, exists: bool, expected: Path | None,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    is_dir = Path.is_dir
    monkeypatch.setattr(Path, "is_dir", lambda self: exists
                        if self == textfile.NODE_EXPORTER_DIR else is_dir(self))
    assert cli._metrics_file(value) == expected


def test_the_option_and_its_environment_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli._parser().parse_args([]).metrics_file == "auto"
    assert cli._parser().parse_args(["--metrics-file", "none"]).metrics_file == "none"
    monkeypatch.setenv("PHYLLOD_METRICS_FILE", "/x/phyllod.prom")
    assert cli._parser().parse_args(["run"]).metrics_file == "/x/phyllod.prom"
