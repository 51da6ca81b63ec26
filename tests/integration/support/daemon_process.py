"""The daemon as a subprocess, the way systemd runs it, and a fake NOTIFY_SOCKET."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


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


def stop_process(proc: subprocess.Popen | None) -> None:
    """SIGTERM, then SIGKILL after 5 s: every helper process of the tests ends."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class LineProcess:
    """A subprocess whose output lines are collected by a reader thread (never a full pipe)."""

    def __init__(self, argv: Sequence[str], env: dict[str, str], json_lines: bool = False,
                 cwd: str | Path | None = None) -> None:
        self.json_lines = json_lines
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace",
                                     env=env, cwd=cwd)
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
        with self._cond:
            self._cond.notify_all()

    def records(self) -> list[dict[str, Any]]:
        """The JSON lines printed so far (other lines, such as warnings, skipped)."""
        out = []
        with self._cond:
            lines = list(self.lines)
        for line in lines:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def wait_for(self, what: str, test: Callable[[], Any], timeout: float = 20.0) -> Any:
        """Wait until ``test()`` returns something true (re-checked on each new line)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = test()
                if result:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}; output:\n{self.log()}")
                self._cond.wait(min(left, 0.2))

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def wait_line(self, text: str, start: int = 0, timeout: float = 20.0) -> str:
        def found() -> str | None:
            return next((ln for ln in self.lines[start:] if text in ln), None)
        return self.wait_for(f"a line with {text!r}", found, timeout)

    def log(self) -> str:
        return "\n".join(self.lines)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop_process(self.proc)
        self._reader.join(timeout=5)


class DaemonProcess(LineProcess):
    """``python -m phyllod.cli`` with stderr collected line by line.

    ``python -m`` puts its working directory first on ``sys.path``: a bench
    running another tree's daemon (``tree``) runs it there, or the checkout
    it was started from would be imported whatever PYTHONPATH says.
    """

    def __init__(self, args: Sequence[str], env: dict[str, str],
                 tree: str | Path | None = None) -> None:
        if tree is not None:
            env = {**env, "PYTHONPATH": str(tree)}
        super().__init__([sys.executable, "-m", "phyllod.cli", "--log-target", "stderr", *args],
                         env, cwd=tree)

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
    root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["PHYLLOD_BUS"] = "none"  # tests that want the bus pass --bus
    # never the host's node_exporter directory; tests that want metrics pass --metrics-file
    env["PHYLLOD_METRICS_FILE"] = "none"
    env.update(extra)
    return env
