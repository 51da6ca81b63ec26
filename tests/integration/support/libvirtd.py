"""A private, real libvirtd for tests, isolated in its own mount namespace.

libvirt 9.0's QEMU driver resolves its build-time user ``libvirt-qemu``
before reading qemu.conf and writes under /etc, /run, /var/lib and
/var/cache/libvirt. So the daemon runs under ``unshare --mount`` with those
directories and patched /etc/passwd and /etc/group bind-mounted from a temp
dir: the host's files are untouched and a system libvirtd is never disturbed.
Its socket lives outside the bind mounts, where tests can reach it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import libvirt
from guest_xml import qemu_guest

_BINDS = {
    "/etc/libvirt": "etc",
    "/run/libvirt": "run",
    "/var/lib/libvirt": "lib",
    "/var/log/libvirt": "log",
    "/var/cache/libvirt": "cache",
}

_LIBVIRTD_CONF = """\
unix_sock_dir = "{sock}"
unix_sock_group = "root"
unix_sock_ro_perms = "0770"
unix_sock_rw_perms = "0770"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:{base}/libvirtd.log"
"""

# root so KVM guests can open /dev/kvm; stdio to files so no virtlogd is needed;
# no security driver or cgroups (CI machines have neither AppArmor nor systemd).
_QEMU_CONF = """\
user = "root"
group = "root"
stdio_handler = "file"
security_driver = "none"
cgroup_controllers = [ ]
remember_owner = 0
"""



def clean_env() -> dict[str, str]:
    """The environment without umockdev's preload (libvirtd dies under it)."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "UMOCKDEV_DIR")}


def _patched_nss(base: Path) -> None:
    passwd = Path("/etc/passwd").read_text()
    group = Path("/etc/group").read_text()
    if not re.search(r"^libvirt-qemu:", passwd, re.M):
        passwd += "libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin\n"
    for name, gid in (("libvirt-qemu", 64055), ("kvm", 64056), ("libvirt", 64057)):
        if not re.search(rf"^{name}:", group, re.M):
            group += f"{name}:x:{gid}:\n"
    (base / "passwd").write_text(passwd)
    (base / "group").write_text(group)


def available() -> str:
    """Why a private libvirtd cannot run here, or "" if it can."""
    if os.geteuid() != 0:
        return "a private libvirtd needs root (mount namespace)"
    for tool in ("libvirtd", "unshare", "qemu-system-x86_64"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (run scripts/bootstrap)"
    return ""


class PrivateLibvirtd:
    def __init__(self, base: Path, cache: Path) -> None:
        self.base = base
        self.cache = cache
        self.sock = base / "sock" / "libvirt-sock"
        self.uri = f"qemu+unix:///system?socket={self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> PrivateLibvirtd:
        (self.base / "sock").mkdir(parents=True, exist_ok=True)
        for sub in _BINDS.values():
            (self.base / sub).mkdir(exist_ok=True)
        self.cache.mkdir(parents=True, exist_ok=True)
        etc = self.base / "etc"
        (etc / "libvirtd.conf").write_text(
            _LIBVIRTD_CONF.format(sock=self.sock.parent, base=self.base))
        (etc / "qemu.conf").write_text(_QEMU_CONF)
        _patched_nss(self.base)
        script = ["set -e", f"mount --bind {self.base}/passwd /etc/passwd",
                  f"mount --bind {self.base}/group /etc/group"]
        for host, sub in _BINDS.items():
            source = self.cache if sub == "cache" else self.base / sub
            script += [f"mkdir -p {host}", f"mount --bind {source} {host}"]
        script.append(f"exec libvirtd -f {etc}/libvirtd.conf --pid-file {self.base}/libvirtd.pid")
        with open(self.base / "stdout.log", "ab") as out:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script)],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=clean_env())
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"libvirtd exited ({self.proc.returncode}):\n{self.log()}")
            if self.sock.exists():
                try:
                    libvirt.open(self.uri).close()
                    return self
                except libvirt.libvirtError:
                    pass
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"libvirtd did not come up:\n{self.log()}")
            time.sleep(0.02)

    def log(self) -> str:
        path = self.base / "libvirtd.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop libvirtd only; its guests' QEMU processes live on (as in real life)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def kill_guests(self) -> None:
        """Kill the QEMU processes this libvirtd started (they outlive it)."""
        for pidfile in (self.base / "run" / "qemu").glob("*.pid"):
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


@contextlib.contextmanager
def frozen(lv: PrivateLibvirtd) -> Iterator[int]:
    """libvirtd stopped (SIGSTOP): calls made now wait in its socket. Thawed on exit
    unless the test killed it meanwhile."""
    pid = int((lv.base / "libvirtd.pid").read_text().strip())
    os.kill(pid, signal.SIGSTOP)
    try:
        yield pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def start_guest(uri: str, name: str) -> None:
    conn = libvirt.open(uri)
    try:
        dom = conn.defineXML(qemu_guest(name))
        dom.create()
    finally:
        conn.close()
