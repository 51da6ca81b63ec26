"""phyllod's demo: the real daemon, a real libvirtd and QEMU guest, umockdev devices.

Run through ``scripts/demo --without-lab`` (it installs what is needed and starts this under
umockdev-wrapper). What it shows and what it cannot: see README.md.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration" / "support"))

import libvirt  # noqa: E402
import libvirtd  # noqa: E402
import testbed  # noqa: E402
from daemon_process import DaemonProcess, NotifySocket, child_env  # noqa: E402

POLICY = """\
# The demo's embedded policy (/etc/phyllod/policy.d/10-demo.toml on a real host)
[[rule]]
name   = "the keyboard in port 1-2 goes to the work guest"
match  = { vendor = "0627", product = "0001", port = "1-2" }
guest  = "work"

[[rule]]
name   = "no mass storage in guests"
match  = { interface_class = "08" }
action = "deny"
"""


def say(text: str) -> None:
    time.sleep(0.7)  # let the previous step's log lines show under their heading
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def stream(proc: DaemonProcess, stop: threading.Event) -> None:
    shown = 0
    while not stop.is_set() or shown < len(proc.lines):
        while shown < len(proc.lines):
            print(f"   phyllod| {proc.lines[shown]}", flush=True)
            shown += 1
        time.sleep(0.05)


def main() -> int:
    why = libvirtd.available() or testbed.available()
    if why:
        print(f"demo cannot run: {why}", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="phyllod-demo-"))
    policy_dir = work / "policy.d"
    policy_dir.mkdir()
    (policy_dir / "10-demo.toml").write_text(POLICY)

    say("starting a private libvirtd and a QEMU guest 'work' (no disk, firmware only)")
    lv = libvirtd.PrivateLibvirtd(work / "libvirtd", work / "cache")
    (work / "libvirtd").mkdir()
    lv.start()
    tb = testbed.UsbTestbed()
    proc = None
    stop = threading.Event()
    try:
        libvirtd.start_guest(lv.uri, "work")
        print(f"   libvirt URI: {lv.uri}")
        print("   policy:\n" + "\n".join(f"     {ln}" for ln in POLICY.splitlines()))

        say("a QEMU USB keyboard is already in port 1-2 when phyllod starts (coldplug)")
        tb.plug("1-2", devnum=5)
        notify = NotifySocket(work / "notify")
        proc = DaemonProcess(["--policy-dir", str(policy_dir), "--connect", lv.uri],
                             child_env(**tb.env, NOTIFY_SOCKET=str(notify.path)))
        threading.Thread(target=stream, args=(proc, stop), daemon=True).start()
        notify.wait_for("READY=1")
        proc.wait_log(r"attach usb:1-2 to work failed")
        time.sleep(0.3)
        print("   (this host's kernel has no USB: libvirt's own error above is the expected "
              "end here;\n    phyllod marks the device failed and retries with backoff)")
        time.sleep(2)

        say("a USB stick is plugged into port 1-3 (a 'deny' rule)")
        mark = proc.mark()
        tb.plug("1-3", devnum=6, vendor="0781", product="5581", manufacturer="SanDisk",
                product_name="Ultra", serial="4C530001", interfaces=("080650",))
        proc.wait_log(r"usb:1-3 .*: denied", start=mark)

        say("a Bluetooth adapter is plugged into port 1-4 (no rule: stays on the host)")
        mark = proc.mark()
        tb.plug("1-4", devnum=7, vendor="8087", product="0a2b", manufacturer="Intel",
                product_name="Bluetooth", interfaces=("e00101", "e00101"))
        proc.wait_log(r"usb:1-4 .*: host", start=mark)

        say("the guest 'work' is shut down: the keyboard waits for it (pending)")
        mark = proc.mark()
        conn = libvirt.open(lv.uri)
        conn.lookupByName("work").destroy()
        proc.wait_log(r"usb:1-2 .*: pending guest=work: guest 'work' is not running", start=mark)

        say("'work' starts again: phyllod attaches the keyboard again at once")
        mark = proc.mark()
        conn.lookupByName("work").create()
        proc.wait_log(r"attaching usb:1-2 .* to work", start=mark)
        proc.wait_log(r"attach usb:1-2 to work failed", start=mark)
        conn.close()

        say("the keyboard is unplugged")
        mark = proc.mark()
        tb.unplug("1-2")
        proc.wait_log(r"usb:1-2 .* unplugged", start=mark)

        say("someone saves a broken policy and reloads (SIGHUP): refused, the old one stays")
        mark = proc.mark()
        (policy_dir / "20-typo.toml").write_text(
            '[[rule]]\nname = "typo"\nmatch = { vendor = "12345" }\nguest = "work"\n')
        proc.signal(signal.SIGHUP)
        proc.wait_log(r"policy reload refused", start=mark)

        say("phyllod is stopped (SIGTERM): it leaves every device where it is")
        proc.stop()
        time.sleep(0.3)
    finally:
        stop.set()
        if proc is not None and proc.alive:
            proc.stop()
        lv.kill_guests()
        lv.stop()
    say("done: everything above was the real daemon, real libudev events and a real libvirtd")
    return 0


if __name__ == "__main__":
    sys.exit(main())
