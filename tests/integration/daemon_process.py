"""The daemon as a subprocess, the way systemd runs it, and a fake NOTIFY_SOCKET."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path


class NotifySocket:
    """A datagram socket standing in for systemd's, collecting sd_notify messages.

    It is drained continuously, as systemd does: sd_notify blocks once the
    socket's queue is full.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []
        self._closed = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                message = self.sock.recv(4096).decode()
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append(message)
                self._cond.notify_all()

    def wait_for(self, prefix: str, timeout: float = 15.0) -> list[str]:
        """Wait for a message line starting with ``prefix`` (``READY=1``); returns those lines."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                lines = [ln for m in self.messages for ln in m.splitlines()
                         if ln.startswith(prefix)]
                if lines:
                    return lines
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no {prefix!r} from the daemon in {timeout}s: {self.messages}")
                self._cond.wait(left)

    def close(self) -> None:
        self._closed = True
        self._reader.join(timeout=1)
        self.sock.close()


class DaemonProcess:
    """``python -m phyllod.cli`` with stderr collected line by line."""

    def __init__(self, args: Sequence[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "phyllod.cli", "--log-target", "stderr", *args],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", env=env,
        )
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_log(self, pattern: str, timeout: float = 15.0, start: int = 0) -> re.Match[str]:
        """The first log line from index ``start`` on that matches ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    m = regex.search(line)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no log line matching {pattern!r}:\n{self.log()}")
                self._cond.wait(min(left, 0.2))

    def mark(self) -> int:
        """An index to pass as ``start`` so only later lines count."""
        with self._cond:
            return len(self.lines)

    def log(self) -> str:
        return "\n".join(self.lines)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon ignored SIGTERM for {timeout}s:\n{self.log()}") from None
        finally:
            self._reader.join(timeout=5)


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment plus ``extra``; PYTHONPATH so the checkout is imported."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["PHYLLOD_BUS"] = "none"  # tests that want the bus pass --bus
    env.update(extra)
    return env
