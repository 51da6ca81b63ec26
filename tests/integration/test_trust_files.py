"""The daemon and the files it trusts: policy entries and state files (issue 16 §2, §3).

phyllod as a subprocess on a private system bus (phyllod_on_bus), with a
keyboard in port 1-2 and libvirt's test driver. Policy: an entry of any file
type refuses the policy at start-up and on a bus Reload, the previous policy
staying in force. State: the daemon starts with every kind of bad state file
(none holds up READY=1), sets each aside with one log line, removes what an
interrupted save left, and answers the bus while a save waits for a slow disk.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import bad_entries
import pytest
from daemon_process import child_env
from phyllod_on_bus import MANAGER, ROOT, Phyllod, poll

pytestmark = pytest.mark.integration

KBD = "/me/phyllo/Phyllod1/devices/usb_1_2"
ATTACH = '[[rule]]\nname = "keyboard to test"\nmatch = { vendor = "0627" }\nguest = "test"\n'
DENY = '[[rule]]\nname = "never the keyboard"\nmatch = { vendor = "0627" }\naction = "deny"\n'


def _state(phyllod: Phyllod) -> str:
    return str(phyllod.prop(KBD, "State"))


# ---------------------------------------------------------------- policy entries


@pytest.mark.reliability
def test_a_broken_entry_refuses_the_policy_at_start_and_on_every_reload(phyllod: Phyllod,
                                                                       reliability):
    (phyllod.policy_dir / "20-attach.toml").write_text(ATTACH)
    entry = phyllod.policy_dir / "10-deny.toml"
    bad_entries.dangling_symlink(entry)
    phyllod.start()
    assert phyllod.proc is not None
    # At start: nothing moves (before, the deny rule was skipped and the keyboard went
    # to 'test' by the attach rule).
    phyllod.proc.wait_log(rf"policy: {entry}: is a dangling symlink, not a regular file")
    phyllod.proc.wait_log(r"no usable policy: phyllod moves nothing")
    assert phyllod.prop(ROOT, "PolicyStatus", MANAGER) == "error"
    assert poll(lambda: _state(phyllod) == "host")
    assert "attaching" not in phyllod.proc.log()
    # Fixed and reloaded: the deny rule decides.
    entry.unlink()
    entry.write_text(DENY)
    assert phyllod.call("Reload").returncode == 0
    assert poll(lambda: _state(phyllod) == "denied")
    # Each kind of broken entry: the reload is refused, the deny rule stays in force.
    refused = 0
    for kind, make in bad_entries.KINDS.items():
        entry.unlink() if not entry.is_dir() or entry.is_symlink() else entry.rmdir()
        entry.with_name("partner").unlink(missing_ok=True)
        make(entry)
        r = phyllod.busctl("--timeout=30", "call", "me.phyllo.Phyllod1", ROOT, MANAGER,
                           "Reload")
        assert r.returncode != 0, (kind, r.stdout)
        assert f"{entry}: is " in r.stderr and "the previous policy stays" in r.stderr, \
            (kind, r.stderr)
        assert _state(phyllod) == "denied", kind
        assert phyllod.prop(ROOT, "PolicyStatus", MANAGER) == "error"
        refused += 1
    assert phyllod.proc.alive and "Traceback" not in phyllod.proc.log()
    reliability.record("policy entry of every file type: refused at start and on reload",
                       kinds=refused, reloads_refused=refused, device_state="denied")


# ---------------------------------------------------------------- state files

def _deep(path: Path) -> None:
    path.write_text("[" * 100_000 + "]" * 100_000)


def _not_utf8(path: Path) -> None:
    path.write_bytes(b'{"version": 1, "\xff\xfe": []}')


def _wrong_shape(path: Path) -> None:
    path.write_text(json.dumps({"version": 1, path.stem: [{"identity": ["x"], "kind": 1}]}))


def _symlink_to_secret(path: Path) -> None:
    secret = path.parent.parent / f"secret-{path.stem}"
    secret.write_text(json.dumps({"version": 1, path.stem: [
        {"identity": "usb:1-2", "kind": "attach", "guest": "test"}]}))
    secret.chmod(0o600)
    path.symlink_to(secret)


#: Pairs (overrides.json, answers.json) of bad files, one daemon start each.
STARTS = [
    ("FIFO", bad_entries.fifo, "deep nesting", _deep),
    ("symlink to a secret", _symlink_to_secret, "directory", bad_entries.directory),
    ("huge", bad_entries.huge, "invalid UTF-8", _not_utf8),
    ("wrong shape", _wrong_shape, "socket", bad_entries.unix_socket),
]
LEFTOVERS = (".overrides.json.a1b2c3d4", ".answers.json.zz_9y8x7")


@pytest.mark.reliability
@pytest.mark.parametrize("start", STARTS, ids=[f"{s[0]}+{s[2]}" for s in STARTS])
def test_the_daemon_starts_with_bad_state_files_and_serves(phyllod: Phyllod, start,
                                                          reliability):
    over_kind, make_over, ans_kind, make_ans = start
    phyllod.state_dir.mkdir()
    make_over(phyllod.state_dir / "overrides.json")
    make_ans(phyllod.state_dir / "answers.json")
    for name in LEFTOVERS:  # a SIGKILL between write and rename, twice
        (phyllod.state_dir / name).write_text('{"version": 1, "overr')
    began = time.monotonic()
    phyllod.start()  # waits for READY=1 (15 s): a FIFO used to hold start-up forever
    ready_s = time.monotonic() - began
    assert phyllod.proc is not None
    log = phyllod.proc.log()
    for name in ("overrides.json", "answers.json"):
        lines = [ln for ln in log.splitlines() if f"cannot read {phyllod.state_dir}/{name} (" in ln]
        assert len(lines) == 1, (name, lines)
        assert "; set aside as " in lines[0] and len(lines[0]) < 600, lines[0][:300]
    assert f"removed 2 temporary files in {phyllod.state_dir}" in log
    assert not [p for p in phyllod.state_dir.iterdir() if p.name in LEFTOVERS]
    # Serving: reads answer, and the first change writes a fresh regular file.
    assert phyllod.ctl("list").returncode == 0
    assert _state(phyllod) == "host"  # the secret's "attach" override was never read
    assert phyllod.ctl("detach", "usb:1-2").returncode == 0
    saved = phyllod.state_dir / "overrides.json"
    assert saved.is_file() and not saved.is_symlink()
    assert [e["kind"] for e in json.loads(saved.read_text())["overrides"]] == ["host"]
    if over_kind == "symlink to a secret":
        secret = phyllod.state_dir.parent / "secret-overrides"
        assert json.loads(secret.read_text())["overrides"][0]["kind"] == "attach"  # untouched
    assert phyllod.proc.alive and "Traceback" not in phyllod.proc.log()
    reliability.record(f"state files {over_kind} + {ans_kind}: set aside at start",
                       set_aside=2, leftovers_removed=2, ready=True,
                       ready_s=round(ready_s, 2))


SLOW_FSYNC = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* fsync held while the file $SLOW_FSYNC_GATE exists: a disk as slow as a test wants.
   It says it is holding by creating $SLOW_FSYNC_GATE.held. */
int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    const char *gate = getenv("SLOW_FSYNC_GATE");
    if (gate && access(gate, F_OK) == 0) {
        char held[4096];
        snprintf(held, sizeof held, "%s.held", gate);
        close(open(held, O_CREAT | O_WRONLY, 0600));
        while (access(gate, F_OK) == 0) usleep(10000);
    }
    return real(fd);
}
"""


@pytest.fixture
def slow_fsync(tmp_path: Path) -> Path:
    """An LD_PRELOAD library whose fsync waits on a gate file (see SLOW_FSYNC)."""
    source = tmp_path / "slow_fsync.c"
    source.write_text(SLOW_FSYNC)
    library = tmp_path / "slow_fsync.so"
    try:
        subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source), "-ldl"],
                       check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"no C compiler for the slow-disk library: {e}")
    return library


@pytest.mark.reliability
def test_bus_answers_while_a_save_waits_for_a_slow_disk(phyllod: Phyllod, slow_fsync: Path,
                                                         tmp_path: Path, reliability):
    gate = tmp_path / "fsync-gate"
    preload = f"{phyllod.tb.env['LD_PRELOAD']}:{slow_fsync}"
    phyllod.start(extra_env={"LD_PRELOAD": preload, "SLOW_FSYNC_GATE": str(gate)})
    gate.touch()
    detach = subprocess.Popen(
        [sys.executable, "-m", "phyllod.ctl", "--bus", phyllod.bus.address, "detach",
         "usb:1-2"], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert poll(lambda: gate.with_name("fsync-gate.held").exists()), "the save never ran"
        # The save is held in fsync. Before, it ran on the event loop, so every read
        # below waited with it (and timed out); now each is answered meanwhile.
        answered = 0
        for _ in range(20):
            r = subprocess.run([sys.executable, "-m", "phyllod.ctl", "--bus",
                                phyllod.bus.address, "--json", "list"], env=child_env(),
                               capture_output=True, text=True, timeout=10)
            assert r.returncode == 0, r.stderr
            answered += 1
        assert detach.poll() is None, "the detach returned before its save was on disk"
        assert not (phyllod.state_dir / "overrides.json").exists()
    finally:
        gate.unlink(missing_ok=True)
    _, err = detach.communicate(timeout=30)
    assert detach.returncode == 0, err
    saved = json.loads((phyllod.state_dir / "overrides.json").read_text())
    assert [e["kind"] for e in saved["overrides"]] == ["host"]
    assert _state(phyllod) == "host"
    reliability.record("a save held in fsync: the bus answers meanwhile",
                       reads_answered_while_held=answered, detach_waited_for_save=True)
