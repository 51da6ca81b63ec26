"""phyllod-applet with real parts: phyllod on a private system bus, a desktop session.

The session is Xvfb, a private session dbus-daemon and dunst as the
notification server (desktop.py); the applet runs as ``python -m
phyllod.applet``, as a person's session would start it. What the applet
shows is read where a person or a panel would see it: the notifications as
they pass to dunst on the session bus, their actions invoked through dunst's
own context menu (a scripted dmenu picks the line), and the tray menu over
com.canonical.dbusmenu from a StatusNotifierWatcher, as KDE Plasma and GNOME's
AppIndicator extension read it. libvirt's test driver runs one guest,
"test", and cannot attach: "send to test" shows as a refusal naming the guest.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from desktop import Applet, Desktop, Session, missing_tools
from gi.repository import GLib
from guest_xml import driver_guest, node, usb_hostdev
from phyllod_on_bus import DEVICE, MANAGER, ROOT, Phyllod

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KBD = f"{ROOT}/devices/usb_1_2"
KEY_PATH = f"{ROOT}/devices/usb_1_3"
KEY = "usb:1050:0407:9741235"
ASK_KEYS = """\
[settings]
ask_timeout = {timeout}

[[rule]]
name = "keys"
match = {{ vendor = "1050" }}
action = "ask"
"""
ANSWERS = [("send:test", "Send to test"), ("host", "Keep on the host"),
           ("always-send:test", "Always send to test"),
           ("always-host", "Always keep on the host")]
SNI = "org.kde.StatusNotifierItem"
DBUSMENU = "com.canonical.dbusmenu"


def wait(what: Callable[[], Any], timeout: float = 15.0, message: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value or time.monotonic() > deadline:
            assert value, message or f"timed out after {timeout}s"
            return value
        time.sleep(0.1)


def plug_key(phyllod: Phyllod, devnum: int = 7) -> None:
    phyllod.tb.plug("1-3", devnum=devnum, vendor="1050", product="0407", serial="9741235",
                    manufacturer="Yubico", product_name="YubiKey OTP+FIDO+CCID",
                    interfaces=("030101", "0b0000"))


def requests(phyllod: Phyllod) -> list[str]:
    tree = phyllod.busctl("tree", "--list", "me.phyllo.Phyllod1").stdout.split()
    return [p for p in tree if p.startswith(f"{ROOT}/requests/")]


@pytest.fixture
def desktop(request: pytest.FixtureRequest) -> Iterator[Desktop]:
    why = missing_tools(("Xvfb", "dbus-daemon", "dunst", "dunstctl", "busctl"))
    if why:
        pytest.skip(why)
    with Desktop() as d:
        d.start_dunst()
        d.start_monitor()
        yield d
        failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else True
        if failed:
            print("--- notifications ---\n" + "\n".join(map(str, d.monitor.records())))
            print("--- dunst ---\n" + (d.dunst.log() if d.dunst else ""))


@pytest.fixture
def applet(desktop: Desktop, phyllod: Phyllod,
           request: pytest.FixtureRequest) -> Iterator[Callable[..., Applet]]:
    """Start the applet (after phyllod, or not: the test decides) in the desktop session."""
    started: list[Applet] = []

    def start(*args: str) -> Applet:
        a = Applet(desktop, phyllod.bus.address, *args)
        started.append(a)
        a.wait_ready()
        return a

    yield start
    for a in started:
        a.stop()
        failed = request.node.rep_call.failed if hasattr(request.node, "rep_call") else True
        if failed:
            print("--- applet ---\n" + a.log())


def ask_notification(desktop: Desktop) -> dict[str, Any]:
    return desktop.wait_notification(lambda n: n["summary"].startswith("Where should"),
                                     "the ask notification")


# 1. The question reaches the notification server, and goes away with the request.

def test_ask_notification_has_an_action_per_answer_and_closes_with_the_request(
        desktop: Desktop, phyllod: Phyllod, applet: Callable[..., Applet]):
    (phyllod.policy_dir / "10-ask.toml").write_text(ASK_KEYS.format(timeout=60))
    phyllod.start()
    applet()
    plug_key(phyllod)
    n = ask_notification(desktop)
    assert n["app"] == "phyllod"
    assert "usb:1-3" in n["summary"] and "Yubico" in n["summary"]
    assert "usb:1-3 was plugged in (rule 'keys')" in n["body"]
    assert "It can go to test." in n["body"] and "stays on the host" in n["body"]
    assert [tuple(a) for a in n["actions"]] == ANSWERS
    assert 50_000 < n["timeout"] <= 60_000  # until the request's deadline
    # The keyboard present before the applet started got no notification.
    assert all("Keyboard" not in x["summary"] for x in desktop.notifications())

    (reply,) = desktop.monitor.wait_for(
        "the notification id", lambda: [r for r in desktop.monitor.records()
                                        if r.get("member") == "NotifyReply"
                                        and r["serial"] == n["serial"]])
    phyllod.tb.unplug("1-3")  # withdraws the request: the applet closes the question
    desktop.monitor.wait_for("CloseNotification", lambda: any(
        r.get("member") == "CloseNotification" and r["args"] == [reply["id"]]
        for r in desktop.monitor.records()))


# 2. An action picked in the notification server answers the request.

@pytest.mark.parametrize(("pick", "state", "guest", "remembered"), [
    ("Keep on the host", "host", "", False),
    ("Send to test", "failed", "test", False),
    ("Always keep on the host", "host", "", True),
])
def test_an_action_picked_in_dunst_answers_the_request(
        desktop: Desktop, phyllod: Phyllod, applet: Callable[..., Applet],
        pick: str, state: str, guest: str, remembered: bool):
    (phyllod.policy_dir / "10-ask.toml").write_text(ASK_KEYS.format(timeout=60))
    phyllod.start()
    app = applet()
    plug_key(phyllod)
    ask_notification(desktop)
    assert len(requests(phyllod)) == 1
    desktop.pick(f"#{pick} (")
    offered = desktop.menu_offered()
    for _key, label in ANSWERS:
        assert f"#{label} (" in offered, offered
    wait(lambda: not requests(phyllod), message="the request is still open")
    shown = phyllod.show("usb:1-3")
    assert (shown["State"], shown["Guest"], shown["Remembered"]) == (state, guest, remembered)
    if state == "failed":
        assert "virDomainAttachDeviceFlags" in shown["Reason"]
        # The refusal comes back to the person as a notification, not a traceback, in
        # the place of the state change's "could not be passed" (one bubble, not two).
        error = desktop.wait_notification(
            lambda n: n["summary"].startswith("Could not send to test"), "the error notification")
        failed = desktop.wait_notification(
            lambda n: n["summary"] == "YubiKey OTP+FIDO+CCID could not be passed to test",
            "the failed notification")
        ids = desktop.monitor.wait_for("the notification ids", lambda: (found := {
            r["serial"]: r["id"] for r in desktop.monitor.records()
            if r.get("member") == "NotifyReply"}) and error["serial"] in found
            and failed["serial"] in found and found)
        assert ids[error["serial"]] == ids[failed["serial"]]
    if remembered:
        assert phyllod.prop(ROOT, "Remembered", MANAGER) == {KEY: ""}
    assert app.alive and "Traceback" not in app.log()


# 3. Property changes become notifications: failed, denied (rule and safety).

def test_failed_and_denied_notifications(desktop: Desktop, phyllod: Phyllod,
                                         applet: Callable[..., Applet]):
    phyllod.start()
    app = applet()
    # A manual attach the test driver refuses: failed, with the guest and libvirt's reason.
    r = phyllod.call("Attach", "ss", "usb:1-2", "test")
    assert r.returncode != 0 and "not supported" in r.stderr
    n = desktop.wait_notification(lambda n: "could not be passed" in n["summary"],
                                  "the failed notification")
    assert n["summary"] == "QEMU USB Keyboard could not be passed to test"
    assert n["body"].startswith("usb:1-2: ") and "not supported" in n["body"]
    # A deny rule wins over the override: denied, with the rule's reason.
    (phyllod.policy_dir / "10-deny.toml").write_text(
        '[[rule]]\nname = "no keyboards"\nmatch = { vendor = "0627" }\naction = "deny"\n')
    assert phyllod.call("Reload").returncode == 0
    n = desktop.wait_notification(lambda n: n["summary"].endswith("stays on the host: denied"),
                                  "the denied notification")
    assert "no keyboards" in n["body"]
    # One notice per change, not one per retry.
    time.sleep(1)
    assert len([x for x in desktop.notifications() if "could not be passed" in x["summary"]]) == 1
    assert app.alive and "Traceback" not in app.log()


def test_unsafe_pci_device_is_reported_with_the_finding(desktop: Desktop, phyllod: Phyllod,
                                                        applet: Callable[..., Applet]):
    import pci_tree
    from pci_tree import Fn

    sata = Fn("0000:00:17.0", "010601", device="a352", driver="ahci", group=4)
    xhci = Fn("0000:00:14.0", "0c0330", device="a36d", driver="xhci_hcd", group=4)
    pci_tree.build(phyllod.tb.tb, [sata, xhci])
    phyllod.start()
    applet()
    (phyllod.policy_dir / "10-pci.toml").write_text(
        '[[rule]]\nname = "usb controller"\nmatch = { class = "0c03" }\nguest = "test"\n')
    assert phyllod.call("Reload").returncode == 0
    n = desktop.wait_notification(lambda n: "not safe to pass" in n["summary"],
                                  "the safety notification")
    assert n["body"].startswith("pci:0000:00:14.0: not safe to pass")
    assert "0000:00:17.0" in n["body"]  # the group mate the host keeps


# 4. The tray as a StatusNotifierItem host reads it, and clicks in it.

def layout(session: Session, item: dict[str, str]) -> tuple[str, dict[str, Any]]:
    menu = session.get(item["service"], item["path"], SNI, "Menu")
    _rev, root = session.call(item["service"], menu, DBUSMENU, "GetLayout",
                              GLib.Variant("(iias)", (0, -1, [])))
    return menu, root


def entries(node: tuple) -> list[tuple[int, str, list]]:
    """(id, label, children) of a dbusmenu layout node's children."""
    out = []
    for child in node[2]:
        child_id, props, grandchildren = child
        out.append((child_id, props.get("label", ""), grandchildren))
    return out


def find(node: tuple, label: str) -> tuple[int, str, list]:
    for child_id, text, children in entries(node):
        if text == label or text.startswith(label):
            return child_id, text, children
    raise AssertionError(f"no entry {label!r} in {[e[1] for e in entries(node)]}")


def click(session: Session, item: dict[str, str], label_path: list[str]) -> None:
    """Send the dbusmenu "clicked" event to the entry found along ``label_path``."""
    menu, root = layout(session, item)
    node: tuple = root
    for label in label_path:
        found = find(node, label)
        node = (found[0], {}, found[2])
    session.call(item["service"], menu, DBUSMENU, "Event",
                 GLib.Variant("(isvu)", (node[0], "clicked", GLib.Variant("s", ""), 0)))


def registered_item(desktop: Desktop) -> dict[str, str]:
    assert desktop.watcher is not None
    return desktop.watcher.wait_for("the item's registration", lambda: next(
        (r for r in desktop.watcher.records() if "service" in r), None))


def in_the_tray(desktop: Desktop, applet: Callable[..., Applet]
                ) -> tuple[Applet, dict[str, str], Session]:
    """The applet started and its item registered with the watcher; a session on the
    desktop's bus to read the item and its menu (the caller closes it)."""
    app = applet()
    item = registered_item(desktop)
    return app, item, Session(desktop.address)


def submenu_labels(session: Session, item: dict[str, str], label: str) -> list[str]:
    _menu, root = layout(session, item)
    return [e[1] for e in entries((0, {}, find(root, label)[2]))]


def test_tray_menu_over_dbusmenu_shows_devices_and_acts(desktop: Desktop, phyllod: Phyllod,
                                                        applet: Callable[..., Applet]):
    desktop.start_watcher()
    phyllod.start()
    app, item, session = in_the_tray(desktop, applet)
    assert item["path"] == "/org/ayatana/NotificationItem/phyllod_applet"
    try:
        entry = "QEMU USB Keyboard (usb:1-2): "
        wait(lambda: session.get(item["service"], item["path"], SNI, "IconName") == "phyllod")
        labels = wait(lambda: submenu_labels(session, item, entry))
        assert "State: host" in labels and "Attach to test" in labels, labels
        assert "Keep on the host" in labels and "Let the policy decide" not in labels

        click(session, item, [entry, "Attach to test"])
        # The test driver refuses: failed, guest = the target, the override in force.
        wait(lambda: phyllod.prop(KBD, "Override") == "attach")
        wait(lambda: phyllod.prop(KBD, "State") == "failed")
        assert phyllod.prop(KBD, "OverrideGuest") == "test"
        labels = wait(lambda: (ls := submenu_labels(session, item, entry))
                      and "Let the policy decide" in ls and ls)
        assert "Guest: test" in labels and any(x.startswith("Reason: ") for x in labels)
        assert "Manual override: attach (test)" in labels
        _menu, root = layout(session, item)
        assert find(root, entry)[1] == "QEMU USB Keyboard (usb:1-2): failed for test"

        click(session, item, [entry, "Keep on the host"])
        wait(lambda: phyllod.prop(KBD, "Override") == "host")
        assert phyllod.prop(KBD, "State") == "host"
        wait(lambda: "Let the policy decide" in submenu_labels(session, item, entry))
        click(session, item, [entry, "Let the policy decide"])
        wait(lambda: phyllod.prop(KBD, "Override") == "")
    finally:
        session.close()
    assert app.alive and "Traceback" not in app.log()


def test_tray_menu_answers_and_forgets(desktop: Desktop, phyllod: Phyllod,
                                       applet: Callable[..., Applet]):
    desktop.start_watcher()
    (phyllod.policy_dir / "10-ask.toml").write_text(ASK_KEYS.format(timeout=60))
    phyllod.start()
    applet()
    item = registered_item(desktop)
    session = Session(desktop.address)
    try:
        plug_key(phyllod)
        question = "Where should usb:1-3"
        wait(lambda: session.get(item["service"], item["path"], SNI, "Status") == "NeedsAttention")
        assert session.get(item["service"], item["path"], SNI,
                           "AttentionIconName") == "phyllod-attention"
        labels = wait(lambda: submenu_labels(session, item, question))
        assert labels == [label for _k, label in ANSWERS]
        click(session, item, [question, "Always send to test"])
        wait(lambda: not requests(phyllod))
        assert phyllod.prop(KEY_PATH, "Remembered", DEVICE) is True
        assert phyllod.prop(ROOT, "Remembered", MANAGER) == {KEY: "test"}
        entry = "YubiKey OTP+FIDO+CCID (usb:1-3): "
        labels = wait(lambda: (ls := submenu_labels(session, item, entry))
                      and "Forget remembered answer" in ls and ls)
        assert "Remembered answer: test" in labels
        click(session, item, [entry, "Forget remembered answer"])
        wait(lambda: phyllod.prop(ROOT, "Remembered", MANAGER) == {})
        assert phyllod.prop(KEY_PATH, "Remembered", DEVICE) is False
        wait(lambda: session.get(item["service"], item["path"], SNI, "Status") == "Active")
    finally:
        session.close()


# 5. phyllod stops and comes back: the applet follows the name's owner, no polling.

def test_phyllod_stopped_and_started_again(desktop: Desktop, phyllod: Phyllod,
                                           applet: Callable[..., Applet]):
    desktop.start_watcher()
    phyllod.start()
    app, item, session = in_the_tray(desktop, applet)
    try:
        def top() -> list[str]:
            return [e[1] for e in entries(layout(session, item)[1])]

        wait(lambda: top() == ["QEMU USB Keyboard (usb:1-2): host"])
        mark = app.mark()
        phyllod.stop()
        wait(lambda: top()[:1] == ["phyllod is not running"])
        assert session.get(item["service"], item["path"], SNI, "IconName") == "phyllod-offline"
        app.wait_line("phyllod stopped", start=mark)
        assert app.alive

        phyllod.start()
        wait(lambda: top() == ["QEMU USB Keyboard (usb:1-2): host"])
        assert session.get(item["service"], item["path"], SNI, "IconName") == "phyllod"
        # The same devices came back: nothing to tell the person.
        assert desktop.notifications() == []
        # Quiet between events: the applet sent nothing to phyllod on its own.
        log = app.log()
        assert "calling" not in log and "Traceback" not in log
    finally:
        session.close()


def test_applet_started_before_phyllod_and_without_a_system_bus(
        desktop: Desktop, phyllod: Phyllod, applet: Callable[..., Applet]):
    desktop.start_watcher()
    app, item, session = in_the_tray(desktop, applet)
    try:
        first = entries(layout(session, item)[1])[0][1]
        assert first == "phyllod is not running"
        phyllod.start()  # not bus-activated by the applet (DO_NOT_AUTO_START), started here
        wait(lambda: entries(layout(session, item)[1])[0][1].startswith("QEMU USB Keyboard"))
    finally:
        session.close()
    assert app.alive
    lonely = Applet(desktop, "unix:path=/nonexistent/bus")
    try:
        lonely.wait_line("cannot watch phyllod")
        time.sleep(0.5)
        assert lonely.alive
    finally:
        lonely.stop()


# 6. What a person sees: the XEmbed tray fallback (trayer) with the menu open, and
#    the question from dunst, in one screenshot.

def test_screenshot_of_menu_and_question(desktop: Desktop, phyllod: Phyllod,
                                         applet: Callable[..., Applet], tmp_path: Path):
    why = missing_tools(("trayer", "xdotool", "import"))
    if why:
        pytest.skip(why)
    trayer = desktop._peer(["trayer", "--edge", "top", "--align", "left", "--widthtype",
                            "request", "--height", "28", "--SetDockType", "true",
                            "--transparent", "false", "--tint", "0xeeeeee", "--expand",
                            "false", "--margin", "0"])
    (phyllod.policy_dir / "10-ask.toml").write_text(ASK_KEYS.format(timeout=120))
    phyllod.start()
    time.sleep(1)  # trayer owns the tray selection before the icon looks for it
    app = applet()
    phyllod.call("Attach", "ss", "usb:1-2", "test")  # a device with a guest and a reason
    plug_key(phyllod)
    ask_notification(desktop)
    env = desktop.env()

    def xdotool(*args: str) -> str:
        r = subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True,
                           timeout=10, check=False)
        return r.stdout.strip()

    # The tray icon is a small window embedded in trayer at its left edge.
    tray = wait(lambda: xdotool("search", "--classname", "trayer") or
                xdotool("search", "--name", "panel"), message=f"no trayer window: {trayer.log()}")
    assert tray, trayer.log()
    time.sleep(1.5)
    xdotool("mousemove", "14", "14", "click", "1")
    time.sleep(1.0)
    # Open the keyboard's submenu by hovering it: the question is the first entry,
    # then a separator, then the devices (the menu opens below the 28-pixel panel).
    xdotool("mousemove", "150", "69")
    time.sleep(1.5)
    shot = tmp_path / "applet.png"
    r = subprocess.run(["import", "-window", "root", str(shot)], env=env, capture_output=True,
                       text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    assert shot.stat().st_size > 10_000
    # PHYLLOD_SCREENSHOT=docs/applet.png refreshes the README's picture (top of the screen).
    target = os.environ.get("PHYLLOD_SCREENSHOT")
    if target:
        r = subprocess.run(["convert", str(shot), "-crop", "1280x540+0+0", "+repage",
                            str(REPO / target)], capture_output=True, text=True, timeout=30,
                           check=False)
        assert r.returncode == 0, r.stderr
    assert app.alive


# 3b. "attached": the test driver cannot attach, but it can start with the key
#     already in its guest (a hostdev with phyllod's alias), as after a restart.
#     ("detached" needs a detach that works: unit-tested, and real in the lab.)

TEST_NODE = node(driver_guest(
    "test", uuid="6695eb01-f6a4-8304-79aa-97f2502e193f", memory=1048576, vcpu=1,
    hostdevs=(usb_hostdev("1050", "0407", bus=1, device=7, alias="ua-phyllod-usb1-3-7"),)))


class PhyllodOnNode(Phyllod):
    """phyllod against libvirt's test driver loaded from ``node`` instead of test:///default."""

    def __init__(self, base: Phyllod, node: Path) -> None:
        super().__init__(base.bus, base.tb, base.tmp / "on-node")
        self.uri = f"test://{node}"

    def start(self) -> None:
        from daemon_process import DaemonProcess, NotifySocket, child_env

        notify = NotifySocket(self.tmp / f"notify-{len(self.logs)}")
        env = child_env(**self.tb.env, NOTIFY_SOCKET=str(notify.path))
        self.proc = DaemonProcess(
            ["--bus", self.bus.address, "--connect", self.uri,
             "--policy-dir", str(self.policy_dir), "--state-dir", str(self.state_dir)], env)
        try:
            notify.wait_for("READY=1")
        finally:
            notify.close()


def test_attached_notification(desktop: Desktop, phyllod: Phyllod, tmp_path: Path):
    node = tmp_path / "node.xml"
    node.write_text(TEST_NODE)
    (tmp_path / "on-node").mkdir()
    on_node = PhyllodOnNode(phyllod, node)
    (on_node.policy_dir / "10-key.toml").write_text(
        '[[rule]]\nname = "key to test"\nmatch = { vendor = "1050" }\nguest = "test"\n')
    on_node.start()
    app = Applet(desktop, on_node.bus.address)
    try:
        app.wait_ready()
        plug_key(on_node)
        n = desktop.wait_notification(lambda n: n["summary"].endswith(" is in test"),
                                      "the attached notification")
        assert n["summary"] == "YubiKey OTP+FIDO+CCID is in test"
        assert n["body"].startswith("usb:1-3: ")
        assert on_node.show("usb:1-3")["State"] == "attached"
        # Keeping it on the host needs a detach, which the test driver refuses too.
        r = on_node.call("Detach", "s", "usb:1-3")
        assert r.returncode != 0 and "virDomainDetachDeviceAlias" in r.stderr
        n = desktop.wait_notification(lambda n: "could not" in n["summary"],
                                      "the failed detach notification")
        assert n["summary"] == "YubiKey OTP+FIDO+CCID could not be taken back from test"
        assert "detach failed" in n["body"]
    finally:
        app.stop()
        on_node.stop()
        print("--- applet ---\n" + app.log() + "\n--- daemon ---\n" + "\n".join(on_node.logs))


def test_polkit_refusal_is_a_notification_and_the_call_allowed_interaction(
        desktop: Desktop, phyllod: Phyllod, mock_polkit, applet: Callable[..., Applet]):
    desktop.start_watcher()
    phyllod.start()
    app, item, session = in_the_tray(desktop, applet)
    try:
        entry = "QEMU USB Keyboard (usb:1-2): "
        wait(lambda: "Attach to test" in submenu_labels(session, item, entry))
        click(session, item, [entry, "Attach to test"])
        n = desktop.wait_notification(lambda n: n["summary"].startswith("Could not"),
                                      "the error notification")
    finally:
        session.close()
    assert n["summary"] == "Could not attach to test: not authorized"
    assert "me.phyllo.phyllod.attach" in n["body"]
    assert phyllod.prop(KBD, "Override") == ""
    # The applet let polkit ask the person: CheckAuthorization's flags are 1
    # (AllowUserInteraction) because the call carried ALLOW_INTERACTIVE_AUTHORIZATION.
    # dbusmock logs: <time> CheckAuthorization <subject> "<action>" {details} <flags> "<id>"
    checks = [ln for ln in mock_polkit.log().splitlines() if "CheckAuthorization" in ln]
    assert checks, mock_polkit.log()
    assert all(re.search(r'"me\.phyllo\.phyllod\.attach" \{.*"guest": "test"\} 1 "phyllod-\d+"$',
                         ln) for ln in checks), checks
    assert app.alive and "Traceback" not in app.log()


def test_runs_with_the_system_python3_and_python3_gi(desktop: Desktop, phyllod: Phyllod):
    """Debian's /usr/bin/python3 with python3-gi, as the phyllod-applet package runs it."""
    system = "/usr/bin/python3"
    probe = subprocess.run([system, "-c", "import gi"], capture_output=True, text=True,
                           timeout=30, check=False, env=desktop.env())
    if probe.returncode != 0:
        pytest.skip(f"{system} has no gi (apt-get install python3-gi)")
    desktop.start_watcher()
    phyllod.start()
    app = Applet(desktop, phyllod.bus.address, python=system)
    session = Session(desktop.address)
    try:
        app.wait_ready()
        item = registered_item(desktop)
        wait(lambda: [e[1] for e in entries(layout(session, item)[1])]
             == ["QEMU USB Keyboard (usb:1-2): host"])
    finally:
        session.close()
        app.stop()
    assert "Traceback" not in app.log(), app.log()


# 4b. A real StatusNotifierItem host of another project: status-notifier-watcher
#     and gtk-sni-tray-standalone (Haskell's status-notifier-item and gtk-sni-tray,
#     taffybar's tray) draw the icon and open the menu through libdbusmenu-gtk3.

def test_real_sni_host_draws_the_menu_and_a_keyboard_choice_acts(
        desktop: Desktop, phyllod: Phyllod, applet: Callable[..., Applet], tmp_path: Path):
    why = missing_tools(("status-notifier-watcher", "gtk-sni-tray-standalone", "xdotool",
                         "import"))
    if why:
        pytest.skip(why)
    watcher = desktop._peer(["status-notifier-watcher"])
    wait(lambda: desktop.has_owner("org.kde.StatusNotifierWatcher"),
         message=f"status-notifier-watcher did not start: {watcher.log()}")
    tray = desktop._peer(["gtk-sni-tray-standalone", "--top", "--beginning", "-s", "30",
                          "-c", "#dddddd"])
    wait(lambda: "strutSettings" in tray.log(), message=f"the tray did not start: {tray.log()}")
    phyllod.start()
    app = applet()
    env = desktop.env()

    def xdotool(*args: str) -> None:
        subprocess.run(["xdotool", *args], env=env, capture_output=True, text=True,
                       timeout=10, check=True)

    # The watcher's view: one item registered (it lists the applet by its bus name).
    registered = wait(lambda: subprocess.run(
        ["busctl", f"--address={desktop.address}", "get-property",
         "org.kde.StatusNotifierWatcher", "/StatusNotifierWatcher",
         "org.kde.StatusNotifierWatcher", "RegisteredStatusNotifierItems"],
        capture_output=True, text=True, timeout=10, check=False, env=env).stdout.strip())
    assert registered.startswith("as 1 "), registered
    time.sleep(1)  # the host draws the icon
    # Right click opens the menu (left click is Activate); then the keyboard, as a
    # person without a mouse would: first entry, into its submenu (the first entry
    # there that can be chosen is "Attach to test"), one down, Enter.
    xdotool("mousemove", "15", "15", "click", "3")
    time.sleep(1)
    shot = tmp_path / "sni.png"
    subprocess.run(["import", "-window", "root", "-crop", "1000x300+0+0", str(shot)], env=env,
                   capture_output=True, timeout=30, check=True)
    xdotool("key", "Down", "Right")
    time.sleep(0.5)
    xdotool("key", "Down", "Return")
    wait(lambda: phyllod.prop(KBD, "Override") == "host",
         message=f"the choice did not reach phyllod:\n{app.log()}")
    assert phyllod.prop(KBD, "State") == "host"
    assert app.alive and "Traceback" not in app.log()


def test_a_request_open_when_the_applet_starts_is_asked(
        desktop: Desktop, phyllod: Phyllod, applet: Callable[..., Applet]):
    (phyllod.policy_dir / "10-ask.toml").write_text(ASK_KEYS.format(timeout=60))
    phyllod.start()
    plug_key(phyllod)
    wait(lambda: requests(phyllod))
    applet()  # logged in after the key was plugged: the question still waits
    n = ask_notification(desktop)
    assert [tuple(a) for a in n["actions"]] == ANSWERS
