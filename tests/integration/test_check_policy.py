"""``phyllod check-policy`` as a person runs it, over umockdev devices."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bad_entries
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


# ---------------------------------------------------------------- policy entries (issue 16 §2)

ATTACH = '[[rule]]\nname = "keyboard to work"\nmatch = { vendor = "0627" }\nguest = "work"\n'
DENY = '[[rule]]\nname = "never the keyboard"\nmatch = { vendor = "0627" }\naction = "deny"\n'
#: What check-policy says of each kind of entry (bad_entries.KINDS, and two more).
SAYS = {
    "dangling symlink": "is a dangling symlink, not a regular file",
    "symlink loop": "is a symlink loop, not a regular file",
    "FIFO": "is a FIFO, not a regular file",
    "socket": "is a socket, not a regular file",
    "directory": "is a directory, not a regular file",
    "device node": "is a character device, not a regular file",
    "huge": "is too large (4294967296 bytes; at most 1 MiB)",
    "not UTF-8": ":5: is not UTF-8 text (byte 0xff)",
    "unreadable": "is unreadable (Permission denied)",
}
#: Root without capabilities, as the hardened service runs: no CAP_DAC_OVERRIDE.
NO_CAPS = ("setpriv", "--bounding-set=-all", "--inh-caps=-all")


def _make(kind: str, path: Path) -> None:
    if kind == "not UTF-8":
        path.write_bytes(DENY.encode() + b"\xff\n")
    elif kind == "unreadable":
        path.write_text(DENY)
        os.chown(path, 65534, 65534)
        path.chmod(0o600)
    else:
        bad_entries.KINDS[kind](path)


@pytest.mark.reliability
@pytest.mark.parametrize("kind", SAYS)
def test_a_deny_rule_in_a_broken_entry_fails_the_check(
        kind: str, usb_testbed: testbed.UsbTestbed, tmp_path: Path, reliability):
    """Before: "policy OK: 1 rules in 1 files", and the keyboard went to 'work'."""
    usb_testbed.plug("1-2", devnum=5)
    policy_dir = tmp_path / "policy.d"
    policy_dir.mkdir()
    (policy_dir / "20-attach.toml").write_text(ATTACH)
    entry = policy_dir / "10-deny.toml"
    _make(kind, entry)
    argv = [sys.executable, "-m", "phyllod.cli", "check-policy", "--policy-dir", str(policy_dir)]
    if kind == "unreadable":
        argv = [*NO_CAPS, *argv]
    # A hang would be a TimeoutExpired here: the FIFO case used to block forever.
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                            env=child_env(**usb_testbed.env))
    assert (result.returncode, result.stdout) == (1, ""), result
    assert result.stderr.splitlines() == [
        f"{entry}{'' if SAYS[kind].startswith(':') else ': '}{SAYS[kind]}",
        "policy has 1 error(s)"]
    # The entry named on the command line is refused the same way.
    named = subprocess.run([*argv[:-2], str(entry)], capture_output=True, text=True,
                           timeout=30, env=child_env(**usb_testbed.env))
    assert named.returncode == 1 and SAYS[kind] in named.stderr
    reliability.record(f"check-policy: a deny rule in a {kind} entry", exit_code=1,
                       problems=1, message=result.stderr.splitlines()[0].replace(
                           str(tmp_path), "TMP"))


def test_a_broken_policy_directory_fails_the_check(usb_testbed: testbed.UsbTestbed,
                                                   tmp_path: Path):
    a_file = tmp_path / "policy.d"
    a_file.write_text(DENY)
    result = check(usb_testbed, "--policy-dir", str(a_file))
    assert (result.returncode, result.stderr.splitlines()) == (1, [
        f"{a_file}: the policy directory is not a directory", "policy has 1 error(s)"])


def test_hidden_entries_and_symlinks_to_files(usb_testbed: testbed.UsbTestbed, tmp_path: Path):
    """A drop-in shipped as a symlink is read; an editor's lock file is not."""
    usb_testbed.plug("1-2", devnum=5)
    shipped = tmp_path / "shipped.toml"
    shipped.write_text(DENY)
    policy_dir = tmp_path / "policy.d"
    policy_dir.mkdir()
    (policy_dir / "10-deny.toml").symlink_to(shipped)
    (policy_dir / ".#10-deny.toml").symlink_to("root@host.42:1700000000")
    (policy_dir / "20-attach.toml").write_text(ATTACH)
    result = check(usb_testbed, "--policy-dir", str(policy_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:4] == [
        "policy OK: 2 rules in 2 files",
        "unmatched devices plugged in: host; ask_timeout: 30s",
        f"{policy_dir}/10-deny.toml:1: rule 'never the keyboard' (deny)",
        "    matches usb:1-2 (0627:0001 QEMU QEMU USB Keyboard)",
    ]
