"""``phyllod check-policy`` as a person runs it, over umockdev devices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import testbed
from daemon_process import child_env

pytestmark = pytest.mark.integration


def check(tb: testbed.UsbTestbed, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "phyllod.cli", "check-policy", *args],
                          capture_output=True, text=True, env=child_env(**tb.env), timeout=30)


def test_shows_what_each_rule_matches(usb_testbed: testbed.UsbTestbed, tmp_path: Path):
    usb_testbed.plug("1-2", devnum=3, vendor="1050", product="0407", serial="12345678",
                     manufacturer="Yubico", product_name="YubiKey")
    usb_testbed.plug("1-3", devnum=4, vendor="8087", product="0a2b", interfaces=("e00101",))
    usb_testbed.plug("1-4", devnum=5, vendor="046d", product="c52b")
    (tmp_path / "10-desk.toml").write_text(
        '[[rule]]\nname = "key"\nmatch = { vendor = "1050", serial = "12345678" }\n'
        'guest = "work"\n\n'
        '[[rule]]\nname = "bluetooth"\nmatch = { interface_class = "e0" }\nguest = "desktop"\n')
    (tmp_path / "20-deny.toml").write_text(
        '[[rule]]\nname = "no keys anywhere else"\nmatch = { vendor = "1050" }\naction = "deny"\n')
    result = check(usb_testbed, "--policy-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "policy OK: 3 rules in 2 files",
        "unmatched devices plugged in: host; ask_timeout: 30s",
        f"{tmp_path}/10-desk.toml:1: rule 'key' (attach to work)",
        "    matches usb:1-2 (1050:0407 Yubico YubiKey)",
        "        (serial 12345678 is a placeholder; identified by its port)",
        f"{tmp_path}/10-desk.toml:6: rule 'bluetooth' (attach to desktop)",
        "    matches usb:1-3 (8087:0a2b QEMU QEMU USB Keyboard)",
        f"{tmp_path}/20-deny.toml:1: rule 'no keys anywhere else' (deny)",
        "no rule matches (they stay on the host):",
        "    usb:1-4 (046d:c52b QEMU QEMU USB Keyboard)",
    ]


def test_reports_every_mistake_and_fails(usb_testbed: testbed.UsbTestbed, tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nname = "a"\nmatch = { vendor = "1050", colour = "red" }\n'
                   'guest = "w"\n[[rule]]\nname = "b"\nmatch = { port = "1-2" }\n')
    result = check(usb_testbed, str(bad))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"{bad}:3: rule 'a': unknown match key 'colour' (known: address, class, interface_class, "
        "manufacturer, not_interface_class, port, port_below, product, product_name, serial, "
        "subsystem, vendor)",
        f"{bad}:5: rule 'b': an 'attach' rule needs a target: guest = \"NAME\" or a UUID",
        "policy has 2 error(s)",
    ]


def test_no_policy_means_everything_stays_on_the_host(usb_testbed: testbed.UsbTestbed,
                                                      tmp_path: Path):
    result = check(usb_testbed, "--policy-dir", str(tmp_path / "none"))
    assert result.returncode == 0
    assert "every device stays on the host" in result.stdout
