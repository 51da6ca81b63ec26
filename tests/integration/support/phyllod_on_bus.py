"""phyllod on a private system bus with the shipped bus policy, and ways to call it.

The daemon runs on umockdev devices and libvirt's test driver (its guest
"test" runs; the driver cannot attach, which gives a real libvirt refusal).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import private_bus
import testbed
from daemon_process import DaemonProcess, NotifySocket, child_env

NAME = "me.phyllo.Phyllod1"
ROOT = "/me/phyllo/Phyllod1"
MANAGER = "me.phyllo.Phyllod1.Manager"
DEVICE = "me.phyllo.Phyllod1.Device"


class Phyllod:
    """phyllod on the private system bus, and ways to call it."""

    def __init__(self, bus: private_bus.PrivateSystemBus, tb: testbed.UsbTestbed,
                 tmp: Path) -> None:
        self.bus = bus
        self.tb = tb
        self.tmp = tmp
        self.policy_dir = tmp / "policy.d"
        self.policy_dir.mkdir()
        self.state_dir = tmp / "state"
        self.proc: DaemonProcess | None = None
        self.logs: list[str] = []

    def start(self, extra_env: dict[str, str] | None = None,
              uri: str = "test:///default") -> None:
        """Start on ``uri`` (default: libvirt's test driver, in phyllod's own process)."""
        notify = NotifySocket(self.tmp / f"notify-{len(self.logs)}")
        env = child_env(**{**self.tb.env, "NOTIFY_SOCKET": str(notify.path), **(extra_env or {})})
        self.proc = DaemonProcess(
            ["--bus", self.bus.address, "--connect", uri,
             "--policy-dir", str(self.policy_dir), "--state-dir", str(self.state_dir)], env)
        try:
            notify.wait_for("READY=1")
        finally:
            notify.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.logs.append(self.proc.log())
            self.proc = None

    def busctl(self, *args: str, nobody: bool = False) -> subprocess.CompletedProcess[str]:
        argv = ["busctl", f"--address={self.bus.address}", *args]
        env = {"PATH": "/usr/bin:/bin"}
        if nobody:
            return private_bus.run_as_nobody(argv, env)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)

    def call(self, member: str, signature: str = "", *args: str, path: str = ROOT,
             interface: str = MANAGER, nobody: bool = False) -> subprocess.CompletedProcess[str]:
        return self.busctl("call", NAME, path, interface, member, signature, *args,
                           nobody=nobody)

    def prop(self, path: str, name: str, interface: str = DEVICE) -> object:
        r = self.busctl("--json=short", "get-property", NAME, path, interface, name)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["data"]


    def ctl(self, *args: str, nobody: bool = False) -> subprocess.CompletedProcess[str]:
        """``phyllodctl --bus ADDRESS ARGS`` from the checkout."""
        argv = [sys.executable, "-m", "phyllod.ctl", "--bus", self.bus.address, *args]
        env = child_env()
        if nobody:
            return private_bus.run_as_nobody(argv, env)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)

    def show(self, device: str) -> dict:
        """``phyllodctl --json show DEVICE``: the device's properties."""
        r = self.ctl("--json", "show", device)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)


def poll(what: Callable[[], Any], timeout: float = 15.0) -> Any:
    """``what()`` until it is truthy or ``timeout`` passed; its last value either way."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)
