"""Structured journal fields, read off the journal's native protocol.

Where no journald runs (CI machines, containers), the test binds a datagram
socket at journald's path and parses what JournalHandler sends, so the real
systemd-python code path is exercised. Where journald runs, it is left alone.
"""

from __future__ import annotations

import shutil
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import testbed
from daemon_process import DaemonProcess, NotifySocket, child_env

from phyllod.host.systemd_glue import JOURNAL_SOCKET, MessageId

pytestmark = pytest.mark.integration


def parse_native(datagram: bytes) -> dict[str, str]:
    """journald's native format: KEY=value lines, or KEY\\n<le64 size><value>\\n."""
    fields: dict[str, str] = {}
    rest = datagram
    while rest:
        line, sep, after = rest.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value.decode(errors="replace")
            rest = after
        else:
            (size,) = struct.unpack("<Q", after[:8])
            fields[line.decode()] = after[8:8 + size].decode(errors="replace")
            rest = after[8 + size + 1:]
        if not sep:
            break
    return fields


@pytest.fixture
def fake_journald() -> Iterator[socket.socket]:
    path = Path(JOURNAL_SOCKET)
    if path.exists():
        pytest.skip("a real journald is listening here; not replacing it")
    # Remove afterwards exactly the directories we had to create.
    top = next((p for p in reversed(path.parents) if not p.exists()), None)
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.2)
    try:
        yield sock
    finally:
        sock.close()
        path.unlink()
        if top is not None:
            shutil.rmtree(top)


def test_decisions_carry_device_guest_and_rule_fields(
        fake_journald: socket.socket, usb_testbed: testbed.UsbTestbed, tmp_path: Path):
    policy_dir = tmp_path / "policy.d"
    policy_dir.mkdir()
    (policy_dir / "10.toml").write_text(
        '[[rule]]\nname = "no sticks"\nmatch = { interface_class = "08" }\naction = "deny"\n')
    usb_testbed.plug("1-3", devnum=6, vendor="0781", product="5581", interfaces=("080650",))
    notify = NotifySocket(tmp_path / "notify")
    proc = DaemonProcess(["--policy-dir", str(policy_dir), "--connect", "test:///default",
                          "--log-target", "auto"],
                         child_env(**usb_testbed.env, NOTIFY_SOCKET=str(notify.path)))
    try:
        notify.wait_for("READY=1")
        records = []
        while True:
            try:
                records.append(parse_native(fake_journald.recv(65536)))
            except TimeoutError:
                break
        denied = [r for r in records if r.get("PHYLLOD_STATE") == "denied"]
        assert len(denied) == 1, records
        r = denied[0]
        assert r["PHYLLOD_DEVICE"] == "usb:1-3"
        assert r["PHYLLOD_RULE"] == "no sticks"
        assert r["SYSLOG_IDENTIFIER"] == "phyllod"
        assert r["PRIORITY"] == "6"
        assert r["MESSAGE"].endswith("denied: denied by rule 'no sticks'")
        assert r["MESSAGE_ID"] == MessageId.DECISION
        ids = {rec.get("MESSAGE_ID") for rec in records}
        assert {MessageId.POLICY_LOADED, MessageId.LIBVIRT_CONNECTED, MessageId.STARTED} <= ids
        assert proc.lines == [], "with the journal there, nothing goes to stderr"
    finally:
        proc.stop()
        notify.close()
