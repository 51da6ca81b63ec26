"""A desktop session for the applet's tests: Xvfb, a session bus, dunst, the applet itself.

All real programs: the X server (Xvfb on a free display it picks itself with
``-displayfd``), a dbus-daemon for the session bus, dunst as the notification
server (its context menu runs a scripted ``dmenu``, so a test picks a
notification action through dunst's own code path), a minimal
StatusNotifierWatcher (``sni_watcher.py``), a bus monitor for notifications
(``notification_monitor.py``) and ``python -m phyllod.applet``. Each is a
context manager that kills what it started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import gi

gi.require_version("Gio", "2.0")
from daemon_process import LineProcess, stop_process  # noqa: E402
from gi.repository import Gio, GLib  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]

SESSION_CONF = """\
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""

DUNSTRC = """\
[global]
    font = DejaVu Sans 11
    width = 460
    height = 300
    origin = top-right
    offset = 10x310
    frame_width = 2
    frame_color = "#2d6a1f"
    separator_height = 2
    padding = 10
    horizontal_padding = 12
    markup = {markup}
    format = "<b>%s</b>\\n%b"
    word_wrap = yes
    show_indicators = yes
    icon_position = left
    max_icon_size = 48
    dmenu = {dmenu}
    mouse_middle_click = context
[urgency_low]
    background = "#ffffff"
    foreground = "#202020"
    timeout = 0
[urgency_normal]
    background = "#ffffff"
    foreground = "#202020"
    timeout = 0
[urgency_critical]
    background = "#fff4e5"
    foreground = "#202020"
    frame_color = "#b3261e"
    timeout = 0
"""

#: dunst runs this as its dmenu: it keeps the offered lines, and picks the first
#: that contains the text in the file ``pick`` (nothing if there is no such file).
DMENU = """\
#!/bin/sh
cat > "{dir}/menu-input.part"
mv "{dir}/menu-input.part" "{dir}/menu-input"
[ -e "{dir}/pick" ] || exit 1
grep -F -- "$(cat "{dir}/pick")" "{dir}/menu-input" | head -n 1
"""

TOOLS = {"Xvfb": "xvfb", "dbus-daemon": "dbus-daemon", "dunst": "dunst",
         "dunstctl": "dunst", "xdotool": "xdotool", "import": "imagemagick"}


def missing_tools(names: Sequence[str] = tuple(TOOLS)) -> str:
    """Why the desktop tests cannot run here ("" if they can): the first absent tool."""
    for name in names:
        if shutil.which(name) is None:
            return f"{name} is not installed (apt-get install {TOOLS.get(name, name)}; " \
                   "scripts/bootstrap does)"
    for namespace, version, package in (("Gtk", "3.0", "gir1.2-gtk-3.0"),
                                        ("AyatanaAppIndicator3", "0.1",
                                         "gir1.2-ayatanaappindicator3-0.1"),
                                        ("Notify", "0.7", "gir1.2-notify-0.7")):
        try:
            gi.require_version(namespace, version)
        except ValueError:
            return f"typelib {namespace}-{version} is missing (apt-get install {package})"
    return ""


class Desktop:
    """Xvfb + a session bus (+ dunst, the monitor and the watcher when asked for)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="phyllod-desktop-"))
        self.runtime = self.dir / "runtime"
        self.runtime.mkdir(mode=0o700)
        self.xvfb: subprocess.Popen[str] | None = None
        self.bus: subprocess.Popen[str] | None = None
        self.display = ""
        self.address = ""
        self.peers: list[LineProcess] = []
        self.dunst: LineProcess | None = None
        self.monitor: LineProcess | None = None
        self.watcher: LineProcess | None = None

    # Start-up.

    def start(self) -> Desktop:
        try:
            self.xvfb = subprocess.Popen(
                ["Xvfb", "-displayfd", "1", "-screen", "0", "1280x800x24", "-nolisten", "tcp",
                 "-noreset"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True)
            assert self.xvfb.stdout is not None
            number = self.xvfb.stdout.readline().strip()
            if not number:
                raise RuntimeError(f"Xvfb exited ({self.xvfb.wait(5)}) without a display")
            self.display = f":{number}"
            conf = self.dir / "session.conf"
            conf.write_text(SESSION_CONF.format(socket=self.dir / "session_bus_socket"))
            self.bus = subprocess.Popen(
                ["dbus-daemon", "--nofork", "--print-address", f"--config-file={conf}"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True)
            assert self.bus.stdout is not None
            self.address = self.bus.stdout.readline().strip()
            if not self.address:
                raise RuntimeError("the session dbus-daemon did not start")
        except BaseException:
            self.stop()
            raise
        return self

    def env(self, **extra: str) -> dict[str, str]:
        """An environment for a program of this session (no umockdev preload, no host bus)."""
        env = {k: v for k, v in os.environ.items()
               if k not in ("LD_PRELOAD", "UMOCKDEV_DIR", "DBUS_SYSTEM_BUS_ADDRESS",
                            "WAYLAND_DISPLAY")}
        env.update(DISPLAY=self.display, DBUS_SESSION_BUS_ADDRESS=self.address,
                   XDG_RUNTIME_DIR=str(self.runtime), NO_AT_BRIDGE="1", GDK_BACKEND="x11",
                   HOME=str(self.dir), XDG_CONFIG_HOME=str(self.dir / "config"),
                   PYTHONUNBUFFERED="1")
        env.update(extra)
        return env

    def has_owner(self, name: str) -> bool:
        r = subprocess.run(["busctl", f"--address={self.address}", "call", "org.freedesktop.DBus",
                            "/org/freedesktop/DBus", "org.freedesktop.DBus", "NameHasOwner", "s",
                            name], capture_output=True, text=True, timeout=10, check=False,
                           env=self.env())
        return r.stdout.strip() == "b true"

    def start_dunst(self, markup: str = "no") -> LineProcess:
        """dunst, rendering body markup if ``markup`` is "full" (it then announces body-markup)."""
        dmenu = self.dir / "dmenu"
        dmenu.write_text(DMENU.format(dir=self.dir))
        dmenu.chmod(0o755)
        rc = self.dir / "dunstrc"
        rc.write_text(DUNSTRC.format(dmenu=dmenu, markup=markup))
        self.dunst = self._peer(["dunst", "-config", str(rc)])
        self._wait_name("org.freedesktop.Notifications", self.dunst)
        return self.dunst

    def start_monitor(self) -> LineProcess:
        self.monitor = self._peer([sys.executable, str(HERE / "notification_monitor.py"),
                                   self.address], json_lines=True)
        self.monitor.wait_for("the monitor", lambda: any(
            r.get("ready") for r in self.monitor.records()))
        return self.monitor

    def start_watcher(self) -> LineProcess:
        self.watcher = self._peer([sys.executable, str(HERE / "sni_watcher.py")],
                                  json_lines=True)
        self.watcher.wait_for("the watcher", lambda: any(
            r.get("ready") for r in self.watcher.records()))
        return self.watcher

    def _peer(self, argv: Sequence[str], json_lines: bool = False) -> LineProcess:
        proc = LineProcess(argv, self.env(), json_lines=json_lines)
        self.peers.append(proc)
        return proc

    def _wait_name(self, name: str, proc: LineProcess, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.has_owner(name):
            if not proc.alive or time.monotonic() > deadline:
                raise AssertionError(f"{proc.proc.args} never owned {name}:\n{proc.log()}")
            time.sleep(0.05)

    # Notifications as the server saw them.

    def notifications(self) -> list[dict[str, Any]]:
        assert self.monitor is not None
        return [r for r in self.monitor.records() if r.get("member") == "Notify"]

    def wait_notification(self, test: Callable[[dict[str, Any]], bool], what: str,
                          timeout: float = 20.0) -> dict[str, Any]:
        assert self.monitor is not None
        return self.monitor.wait_for(
            what, lambda: next((n for n in self.notifications() if test(n)), None), timeout)

    def pick(self, text: str) -> None:
        """Open dunst's context menu; the scripted dmenu picks the line containing ``text``."""
        (self.dir / "pick").write_text(text)
        offered = self.dir / "menu-input"
        offered.unlink(missing_ok=True)
        r = subprocess.run(["dunstctl", "context"], env=self.env(), capture_output=True,
                           text=True, timeout=20, check=False)
        assert r.returncode == 0, r.stderr
        # dunst runs dmenu in a thread of its own, after dunstctl has returned.
        deadline = time.monotonic() + 10
        while not (offered.exists() and offered.read_text()):
            assert time.monotonic() < deadline, "dunst did not run its dmenu"
            time.sleep(0.05)

    def menu_offered(self) -> str:
        path = self.dir / "menu-input"
        return path.read_text() if path.exists() else ""

    # Shut-down.

    def stop(self) -> None:
        for peer in reversed(self.peers):
            peer.stop()
        stop_process(self.bus)
        stop_process(self.xvfb)
        for proc in (self.bus, self.xvfb):
            if proc is not None and proc.stdout is not None:
                proc.stdout.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Desktop:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class Applet(LineProcess):
    """``python -m phyllod.applet`` in ``desktop``, on ``system_bus_address``."""

    def __init__(self, desktop: Desktop, system_bus_address: str, *args: str,
                 python: str = sys.executable) -> None:
        env = desktop.env(DBUS_SYSTEM_BUS_ADDRESS=system_bus_address,
                          PYTHONPATH=str(REPO))
        if python != sys.executable:  # a system python: not the venv's tools and paths
            env = {k: v for k, v in env.items() if k != "VIRTUAL_ENV"}
            env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
        super().__init__([python, "-m", "phyllod.applet", *args], env, cwd=REPO)

    def wait_ready(self) -> None:
        self.wait_line("watching me.phyllo.Phyllod1")


class Session:
    """A Gio connection to the session bus, for calls a panel makes (sync, no main loop)."""

    def __init__(self, address: str) -> None:
        self.conn = Gio.DBusConnection.new_for_address_sync(
            address, Gio.DBusConnectionFlags.AUTHENTICATION_CLIENT
            | Gio.DBusConnectionFlags.MESSAGE_BUS_CONNECTION, None, None)

    def call(self, name: str, path: str, interface: str, method: str,
             args: GLib.Variant | None = None, timeout_ms: int = 10_000) -> Any:
        reply = self.conn.call_sync(name, path, interface, method, args, None,
                                    Gio.DBusCallFlags.NONE, timeout_ms, None)
        return reply.unpack() if reply is not None else None

    def get(self, name: str, path: str, interface: str, prop: str) -> Any:
        (value,) = self.call(name, path, "org.freedesktop.DBus.Properties", "Get",
                             GLib.Variant("(ss)", (interface, prop)))
        return value

    def close(self) -> None:
        self.conn.close_sync(None)
