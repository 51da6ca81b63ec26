"""python-dbusmock's logind on the private system bus, for phyllod's sleep handling.

The private bus denies by default, as the system bus does; the part of
systemd's logind bus policy that concerns root, which is all phyllod (root)
and the tests (root) need, is added to it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import private_bus
from daemon_process import stop_process

LOGIND = "org.freedesktop.login1"

# systemd's org.freedesktop.login1.conf, its <policy user="root"> part.
_LOGIND_POLICY = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <policy user="root">
    <allow own="org.freedesktop.login1"/>
    <allow send_destination="org.freedesktop.login1"/>
    <allow receive_sender="org.freedesktop.login1"/>
  </policy>
</busconfig>
"""



def allow_logind(bus: private_bus.PrivateSystemBus) -> None:
    """Include logind's bus policy for root in the bus's configuration, in force on return."""
    assert bus.dir is not None
    policy = bus.dir / "login1.conf"
    policy.write_text(_LOGIND_POLICY)
    config = bus.dir / "system.conf"
    config.write_text(config.read_text().replace(
        "</busconfig>", f"  <include>{policy}</include>\n</busconfig>"))
    # ReloadConfig answers once the new configuration is in force (or is refused).
    bus.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
             "ReloadConfig")


class MockLogind:
    """python-dbusmock's logind template on the private bus; its log holds every call."""

    def __init__(self, bus: private_bus.PrivateSystemBus) -> None:
        assert bus.dir is not None
        self.bus = bus
        self.log_path: Path = bus.dir / "logind-mock.log"
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 10.0) -> MockLogind:
        try:
            with open(self.log_path, "w") as log:
                self.proc = subprocess.Popen(
                    [sys.executable, "-m", "dbusmock", "--system", "--template", "logind"],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, text=True,
                    env=self.bus.env())
            private_bus._wait_for_owner(self.bus, LOGIND, self.proc, self.log_path,
                                        timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_process(self.proc)
