"""A private system bus with phyllod's shipped bus policy, polkit (mock or real), nobody.

The shipped ``dbus/me.phyllo.Phyllod1.conf`` only means something on a bus
that denies by default, as the system bus does. So :class:`PrivateSystemBus`
runs a dbus-daemon whose configuration copies the default policy of Debian's
/usr/share/dbus-1/system.conf and includes the shipped file itself (not a
copy), with as few test-only allowances as the tests need. It listens in a
directory user nobody can reach, so tests can call as an unprivileged user.
polkit answers there either as python-dbusmock's template (:class:`MockPolkit`,
told what to allow) or as the host's polkitd reading the shipped actions
(:class:`RealPolkit`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import dbusmock
from daemon_process import stop_process

REPO = Path(__file__).resolve().parents[3]
#: The bus policy phyllod installs to /usr/share/dbus-1/system.d/.
SHIPPED_CONF = REPO / "dbus" / "me.phyllo.Phyllod1.conf"
#: The polkit actions phyllod installs to /usr/share/polkit-1/actions/.
SHIPPED_POLICY = REPO / "dbus" / "me.phyllo.phyllod.policy"
NOBODY = 65534

POLKITD = "/usr/lib/polkit-1/polkitd"
POLKIT_NAME = "org.freedesktop.PolicyKit1"
POLKIT_PATH = "/org/freedesktop/PolicyKit1/Authority"
POLKIT_IFACE = "org.freedesktop.PolicyKit1.Authority"

# <policy context="default"> is Debian's system.conf (dbus 1.14) verbatim; the
# root policy for Monitoring lets a developer run `busctl monitor` on a failing test.
_CONFIG = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <auth>EXTERNAL</auth>
  <listen>unix:path={socket}</listen>

  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Containers1"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"
          send_member="UpdateActivationEnvironment"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.DBus.Debug.Stats"/>
    <deny send_destination="org.freedesktop.DBus"
          send_interface="org.freedesktop.systemd1.Activator"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>

  <!-- polkit's own bus policy, as on a real system (RealPolkit needs it). -->
  <include ignore_missing="yes">/usr/share/dbus-1/system.d/{polkit}.conf</include>
  <!-- Test only, for MockPolkit: it runs as root, and on hosts without polkit
       nothing else lets anyone call it. -->
  <policy user="root">
    <allow own="{polkit}"/>
  </policy>
  <policy context="default">
    <allow send_destination="{polkit}"/>
  </policy>

  <include>{shipped}</include>
</busconfig>
"""


def available() -> str:
    """Why the private system bus tests cannot run here, or "" if they can."""
    if os.geteuid() != 0:
        return "owning me.phyllo.Phyllod1 and switching to nobody need root"
    for tool in ("dbus-daemon", "busctl", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (run scripts/bootstrap)"
    return ""


def _wait_for_owner(bus: PrivateSystemBus, name: str, proc: subprocess.Popen[str],
                    log: Path, timeout: float) -> None:
    """Return once ``name`` has an owner on ``bus``; raise with ``log`` if ``proc`` dies first."""
    deadline = time.monotonic() + timeout
    while bus.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                   "NameHasOwner", "s", name) != "b true":
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited ({proc.returncode}): {log.read_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{proc.args} did not own {name}: {log.read_text()}")
        time.sleep(0.02)


class PrivateSystemBus:
    """A dbus-daemon configured like the system bus, with the shipped phyllod policy."""

    def __init__(self) -> None:
        self.dir: Path | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self) -> PrivateSystemBus:
        """Start the bus; returns once it accepts connections (``address`` is set)."""
        try:
            # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700, closed to nobody.
            self.dir = Path(tempfile.mkdtemp(prefix="phyllod-bus-"))
            self.dir.chmod(0o755)
            config = self.dir / "system.conf"
            config.write_text(_CONFIG.format(
                socket=self.dir / "system_bus_socket", polkit=POLKIT_NAME, shipped=SHIPPED_CONF))
            # The bus logs every refused message to stderr: a file, so it never fills a pipe.
            with open(self.dir / "dbus-daemon.log", "w") as log:
                self.proc = subprocess.Popen(
                    ["dbus-daemon", "--nofork", "--print-address", f"--config-file={config}"],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True)
            assert self.proc.stdout is not None
            # dbus-daemon prints the address once it listens, or exits on a bad config.
            self.address = self.proc.stdout.readline().strip()
            if not self.address:
                self.proc.wait(5)
                raise RuntimeError(f"dbus-daemon exited ({self.proc.returncode}): {self.log()}")
        except BaseException:
            self.stop()
            raise
        return self

    def log(self) -> str:
        """What dbus-daemon said: start-up errors, and each message the policy refused."""
        assert self.dir is not None
        return (self.dir / "dbus-daemon.log").read_text(errors="replace")

    def call(self, *call: str) -> str:
        """``busctl call`` as root, for set-up: its stdout, or CalledProcessError."""
        result = subprocess.run(["busctl", f"--address={self.address}", "call", *call],
                                capture_output=True, text=True, timeout=10, check=True)
        return result.stdout.strip()

    def env(self) -> dict[str, str]:
        """This process's environment, pointing child processes' system bus here."""
        return {**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": self.address}

    def stop(self) -> None:
        stop_process(self.proc)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PrivateSystemBus:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class _BusPeer:
    """A process that owns a name on the private bus, logging to a file there.

    A file, not a pipe nobody reads while the peer runs: a full pipe would hang it.
    """

    LOG = ""

    def __init__(self, bus: PrivateSystemBus) -> None:
        self.bus = bus
        self.proc: subprocess.Popen[str] | None = None
        assert bus.dir is not None, "start the bus first"
        self.log_path = bus.dir / self.LOG

    def _spawn(self, argv: Sequence[str], timeout: float) -> None:
        """Start ``argv``; return once it owns org.freedesktop.PolicyKit1."""
        try:
            with open(self.log_path, "w") as log:
                self.proc = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    text=True, env=self.bus.env())
            _wait_for_owner(self.bus, POLKIT_NAME, self.proc, self.log_path, timeout)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        """What the process printed (see the subclass for what that holds)."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class MockPolkit(_BusPeer):
    """python-dbusmock's polkitd template on a private bus: allows the actions it is told to.

    It is steered with busctl rather than dbus-python: the repo's dbus/ directory
    makes ``import dbus`` look first-party to ruff, and busctl needs no event loop.
    Its log holds the methods it was called with, and any traceback.
    """

    LOG = "polkit-mock.log"

    def start(self, timeout: float = 10.0) -> MockPolkit:
        """Start the mock; returns once it owns org.freedesktop.PolicyKit1."""
        self._spawn([sys.executable, "-m", "dbusmock", "--system", "--template", "polkitd"],
                    timeout)
        return self

    def set_allowed(self, actions: Sequence[str]) -> None:
        """Authorize exactly ``actions`` for every caller from now on (the mock ignores who)."""
        self.bus.call(POLKIT_NAME, POLKIT_PATH, dbusmock.MOCK_IFACE, "SetAllowed", "as",
                      str(len(actions)), *actions)

    def __enter__(self) -> MockPolkit:
        return self.start()


class StallingPolkit(_BusPeer):
    """polkit that never answers the checks of the given uids (stalling_polkit.py).

    Everyone else is authorized; a held check ends only when it is cancelled.
    ``events()`` are the checks and cancellations it saw, in order.
    """

    LOG = "polkit-stalling.log"

    def __init__(self, bus: PrivateSystemBus, stalled: Sequence[int] = (NOBODY,)) -> None:
        super().__init__(bus)
        self.stalled = stalled

    def start(self, timeout: float = 10.0) -> StallingPolkit:
        """Start the stand-in; returns once it owns org.freedesktop.PolicyKit1."""
        script = Path(__file__).with_name("stalling_polkit.py")
        self._spawn([sys.executable, str(script), *map(str, self.stalled)], timeout)
        return self

    def release(self, cancellation_id: str, authorized: bool) -> None:
        """Answer a held check now, as a person at the agent would."""
        self.bus.call(POLKIT_NAME, POLKIT_PATH, POLKIT_IFACE, "Release", "sb",
                      cancellation_id, "true" if authorized else "false")

    def events(self, kind: str = "") -> list[dict[str, Any]]:
        lines = [json.loads(ln) for ln in self.log().splitlines() if ln.startswith("{")]
        return [e for e in lines if not kind or e["event"] == kind]

    def __enter__(self) -> StallingPolkit:
        return self.start()


class RealPolkit(_BusPeer):
    """The host's polkitd on a private bus, knowing only the given actions and no rules.

    polkitd reads actions and rules from compiled-in paths, so it runs in its own
    mount namespace with temp directories bind-mounted over them: the host's
    actions and rules (which vary from host to host) stay out, the host is untouched.
    It finds the bus through DBUS_SYSTEM_BUS_ADDRESS (GDBus), starts as root and
    drops to user polkitd itself, after the mounts. Its log holds the rules and
    actions loaded, and each check's verdict.
    """

    LOG = "polkitd.log"

    def __init__(self, bus: PrivateSystemBus, policies: Sequence[Path]) -> None:
        super().__init__(bus)
        self.policies = policies
        assert bus.dir is not None
        self.base = bus.dir / "polkit"

    @staticmethod
    def available() -> str:
        """Why the real polkitd cannot run here, or "" if it can."""
        if not os.access(POLKITD, os.X_OK):
            return f"{POLKITD} is not installed"
        if shutil.which("unshare") is None:
            return "unshare is not installed"
        return ""

    def start(self, timeout: float = 10.0) -> RealPolkit:
        """Start polkitd; returns once it owns org.freedesktop.PolicyKit1."""
        actions, rules = self.base / "actions", self.base / "rules"
        actions.mkdir(parents=True)
        rules.mkdir()
        for policy in self.policies:
            shutil.copy(policy, actions)
        script = ["set -e",
                  f"mount --bind {actions} /usr/share/polkit-1/actions",
                  f"mount --bind {rules} /usr/share/polkit-1/rules.d",
                  f"mount --bind {rules} /etc/polkit-1/rules.d",
                  f"exec {POLKITD}"]
        self._spawn(["unshare", "--mount", "--propagation", "private",
                     "sh", "-c", "\n".join(script)], timeout)
        return self

    def __enter__(self) -> RealPolkit:
        return self.start()


#: Prefix for a command to run as uid and gid 65534 with no supplementary groups.
AS_NOBODY = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")


def run_as_nobody(argv: Sequence[str], env: dict[str, str],
                  timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as nobody (:data:`AS_NOBODY`), output captured.

    The cwd is / so the command never depends on a directory nobody cannot enter.
    """
    return subprocess.run([*AS_NOBODY, *argv], env=env, cwd="/", capture_output=True,
                          text=True, timeout=timeout, check=False)
