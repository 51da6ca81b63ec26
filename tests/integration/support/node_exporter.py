"""The real node_exporter serving a textfile directory on a local port, and promtool.

Debian's ``prometheus-node-exporter`` (1.5 on Debian 12) and ``promtool`` (package
``prometheus``), installed by scripts/bootstrap. node_exporter runs with only
its textfile collector; it and promtool run without umockdev's LD_PRELOAD
(they are no udev clients).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from daemon_process import stop_process

NAMES = ("prometheus-node-exporter", "node_exporter")


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "UMOCKDEV_DIR")}


def missing() -> str:
    """Why the tests cannot run here ("" if they can)."""
    if not any(shutil.which(n) for n in NAMES):
        return "no prometheus-node-exporter (Debian: apt-get install prometheus-node-exporter)"
    if not shutil.which("promtool"):
        return "no promtool (Debian: apt-get install prometheus)"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NodeExporter:
    """``node_exporter --collector.textfile.directory=DIR`` on 127.0.0.1, a free port."""

    def __init__(self, directory: Path, log: Path) -> None:
        binary = next(shutil.which(n) for n in NAMES if shutil.which(n))
        self.url = f"http://127.0.0.1:{_free_port()}/metrics"
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            [binary, "--collector.disable-defaults", "--collector.textfile",
             f"--collector.textfile.directory={directory}",
             f"--web.listen-address={self.url.split('/')[2]}"],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=_env())
        deadline = time.monotonic() + 10
        while True:
            try:
                self.scrape()
                return
            except (urllib.error.URLError, ConnectionError) as e:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise AssertionError(f"node_exporter did not serve: {log.read_text()}") from e
                time.sleep(0.05)

    def scrape(self) -> str:
        with urllib.request.urlopen(self.url, timeout=5) as response:
            return response.read().decode()

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()


def series(text: str, prefix: str = "phyllod_") -> dict[str, float]:
    """The samples whose name starts with ``prefix``: ``name{labels}`` -> value."""
    out = {}
    for line in text.splitlines():
        if line.startswith(prefix):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def promtool(*args: str, text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["promtool", *args], input=text, capture_output=True, text=True,
                          env=_env(), timeout=60)
