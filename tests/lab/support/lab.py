"""The nested-QEMU lab: a Debian host "L1" booted under QEMU, with a tiny guest "L2" inside it.

Why a lab at all: the machines this project runs on have no USB bus and no VFIO,
so the only way to see phyllod move a real (emulated) device from a host into a
libvirt guest end to end is to make a host. L1 is a Debian bookworm VM with
libvirtd, the Debian builds of phyllod's Python dependencies and the project
checkout shared read-only over 9p at /opt/phyllod, so a code change needs no
image rebuild. Tests hot-plug emulated devices into L1 over QMP (as if a user
plugged them in) and check, through the guest agent, what L1 and L2 see.

Why TCG only: under KVM on these machines L1 hangs during boot, and TCG needs no
/dev/kvm, so the lab runs anywhere qemu-system-x86_64 does. L2 is a QEMU guest
of L1 (``<domain type='qemu'>``) that boots nothing: it only needs to exist and
hold USB devices. PCI tests need an L2 that runs Linux (lab_pci.py).

L1's PCI topology (qemu_argv), as lspci and /sys/kernel/iommu_groups in L1
show it; ports get their secondary bus from L1's enumeration, in argv order:

=========  ============  ========  ===========================================
qdev id    L1 address    sec. bus  IOMMU group
=========  ============  ========  ===========================================
xhci       0000:00:01.0  -         its own (L1's USB bus)
rp1..rp5   00:02.0-06.0  01..05    one each; a device plugged into rpN is
                                   0000:0N:00.0, alone in its own group
rpbr       0000:00:07.0  06        its own
pcibr      0000:06:00.0  07        one group with everything behind it
l1nic      0000:07:01.0  -         pcibr's; L1 binds it to e1000 (a user
                                   netdev with restrict=on: no way out)
=========  ============  ========  ===========================================

Nothing here is thread-safe; one Lab is driven from one thread (pytest's).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import hashlib
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

log = logging.getLogger("phyllod.lab")

#: The project checkout shared into L1 (tests/lab/support/lab.py -> repo root).
REPO_ROOT = Path(__file__).resolve().parents[3]

QEMU = "qemu-system-x86_64"

# ---------------------------------------------------------------------------
# The image recipe. Everything that decides the image's content is here, and
# the cache key is a sha256 of it: change any of it and the image is rebuilt.
# ---------------------------------------------------------------------------

#: Bump to force a rebuild when the build procedure (not the recipe) changes.
RECIPE_FORMAT = 1

SUITE = "bookworm"

MIRRORS = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)

#: minbase has no init, kernel or udev; these make it a bootable libvirt host.
#: procps for pgrep/ps (minbase lacks them), python3-* are phyllod's deps.
#: busybox-static and cpio make the initramfs of the Linux L2 (lab_pci.py).
#: The desktop part (Xvfb, a notification server, GTK and the applet's
#: introspection bindings) lets test_lab_ask.py answer from a notification.
PACKAGES = (
    "systemd-sysv",
    "udev",
    "dbus",
    "linux-image-amd64",
    "initramfs-tools",
    "kmod",
    "procps",
    "usbutils",
    "pciutils",
    "python3",
    "python3-libvirt",
    "python3-pyudev",
    "python3-systemd",
    "python3-dbus-fast",
    "libvirt-daemon-system",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
    "qemu-system-x86",
    "qemu-guest-agent",
    "busybox-static",
    "cpio",
    "xvfb",
    "dunst",
    "python3-gi",
    "gir1.2-gtk-3.0",
    "gir1.2-notify-0.7",
    "gir1.2-ayatanaappindicator3-0.1",
    "librsvg2-common",
    "fonts-dejavu-core",
)

IMAGE_SIZE = "3G"

#: Files written into the rootfs after mmdebstrap (path -> content).
CONFIG_FILES: dict[str, str] = {
    "/etc/hostname": "l1\n",
    "/etc/hosts": "127.0.0.1 localhost\n127.0.1.1 l1\n",
    # The checkout over virtio-9p; nofail so a lab started without the share
    # still boots (and says so in `systemctl --failed`).
    "/etc/fstab": (
        "/dev/vda / ext4 rw,errors=remount-ro 0 1\n"
        "phyllod /opt/phyllod 9p trans=virtio,version=9p2000.L,ro,msize=262144,nofail 0 0\n"
    ),
    # dmesg -n 1: kernel messages stay off the serial console so the log shows
    # systemd's progress and the login prompt, not every device probe.
    "/etc/sysctl.d/10-lab-quiet-console.conf": "kernel.printk = 1 4 1 7\n",
    # Debian's libvirtd exits after 120 s idle (--timeout 120); a lab test
    # that polls `systemctl is-active libvirtd` would then see it inactive.
    "/etc/default/libvirtd": 'LIBVIRTD_ARGS=""\n',
    # A root shell on the serial console for whoever debugs a lab by hand.
    "/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf": (
        "[Service]\n"
        "ExecStart=\n"
        "ExecStart=-/sbin/agetty --autologin root --noclear --keep-baud"
        " 115200,57600,38400,9600 %I $TERM\n"
    ),
    # The lab has no network; don't wait for one.
    "/etc/systemd/system/systemd-networkd-wait-online.service.d/lab.conf": (
        "[Unit]\nConditionPathExists=/nonexistent\n"
    ),
}

#: Run with chroot inside the rootfs after CONFIG_FILES are written.
SETUP_SCRIPT = """\
set -eu
passwd -d root
mkdir -p /opt/phyllod
systemctl enable libvirtd.service virtlogd.socket
# Debian starts qemu-ga from a udev rule when its virtio port appears; also
# pull it in at boot so the lab does not depend on that rule alone.
mkdir -p /etc/systemd/system/multi-user.target.wants
ln -sf /lib/systemd/system/qemu-guest-agent.service \
    /etc/systemd/system/multi-user.target.wants/qemu-guest-agent.service
systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    fstrim.timer man-db.timer dpkg-db-backup.timer 2>/dev/null || true
rm -rf /var/cache/apt/archives/*.deb /var/lib/apt/lists/*
"""

#: Host tools build_image needs, and the Debian packages that provide them.
HOST_TOOLS = {"mmdebstrap": "mmdebstrap", "mke2fs": "e2fsprogs", QEMU: "qemu-system-x86"}


def recipe_text() -> str:
    """The canonical text of the recipe: what the cache key is a hash of."""
    return json.dumps(
        {
            "format": RECIPE_FORMAT,
            "suite": SUITE,
            "mirrors": MIRRORS,
            "packages": PACKAGES,
            "files": CONFIG_FILES,
            "script": SETUP_SCRIPT,
            "size": IMAGE_SIZE,
        },
        indent=1,
        sort_keys=True,
    )


def recipe_key() -> str:
    return hashlib.sha256(recipe_text().encode()).hexdigest()


class LabError(RuntimeError):
    """The lab could not be built, booted or driven."""


class LabDied(LabError):
    """L1's QEMU exited; the message carries the tail of its logs."""


class AgentError(LabError):
    """The guest agent or QMP answered with an error."""


@dataclass(frozen=True)
class LabImage:
    """A built L1: raw ext4 root, the kernel and initrd booted directly by QEMU."""

    key: str
    rootfs: Path
    kernel: Path
    initrd: Path
    #: Seconds spent in each build step; empty when the image came from the cache.
    timings: dict[str, float] = field(default_factory=dict)


def host_env() -> dict[str, str]:
    """The environment for host tools, without umockdev's preload.

    The test suite runs under umockdev-wrapper; its LD_PRELOAD fakes sysfs and
    ioctls for libudev, which QEMU and mmdebstrap must not see.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "UMOCKDEV_DIR")}
    env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    if "/usr/sbin" not in env["PATH"].split(":"):
        env["PATH"] += ":/usr/sbin:/sbin"
    return env


def _which(tool: str) -> str | None:
    return shutil.which(tool, path=host_env()["PATH"])


def _run_host(argv: list[str], what: str, timeout: float = 1800) -> None:
    """Run a host command; on failure raise with the tail of its output."""
    log.info("lab: %s", " ".join(shlex.quote(a) for a in argv))
    proc = subprocess.run(
        argv,
        env=host_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise LabError(f"{what} failed (exit {proc.returncode}):\n{tail}")


def ensure_host_tools() -> dict[str, float]:
    """Install mmdebstrap, e2fsprogs and QEMU with apt-get when missing.

    Returns {"apt": seconds} when it installed something, else {}.
    """
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if not _which(tool)})
    if not missing:
        return {}
    if os.geteuid() != 0:
        raise LabError(f"the lab needs {' '.join(missing)}; install them as root")
    start = time.monotonic()
    _run_host(["apt-get", "update", "-q"], "apt-get update")
    env_argv = ["env", "DEBIAN_FRONTEND=noninteractive"]
    _run_host(
        [*env_argv, "apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
        "apt-get install " + " ".join(missing),
    )
    return {"apt": time.monotonic() - start}


def image_cached(cache_dir: Path) -> bool:
    """Whether build_image(cache_dir) would reuse an image instead of building."""
    return (cache_dir / recipe_key()[:16] / "recipe.txt").exists()


def unavailable(cache_dir: Path | None = None) -> str | None:
    """Why the lab cannot run here, in one sentence; None when it can.

    Checks that QEMU exists and really starts (a TCG machine answering QMP),
    since a binary that is present but broken would otherwise show up as a
    boot timeout minutes later. Booting needs no root, building does
    (mmdebstrap --mode=root, chroot, apt-get).
    """
    qemu = _which(QEMU)
    if not qemu:
        return f"{QEMU} is not installed (apt-get install qemu-system-x86)"
    if os.geteuid() != 0 and not (cache_dir and image_cached(cache_dir)):
        return "building the lab image needs root, and no cached image was found"
    try:
        proc = subprocess.run(
            [
                qemu,
                "-machine",
                "none",
                "-accel",
                "tcg",
                "-nodefaults",
                "-display",
                "none",
                "-qmp",
                "stdio",
            ],
            input='{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n',
            env=host_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{QEMU} cannot run: {exc}"
    if proc.returncode != 0 or '"return"' not in proc.stdout:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"{QEMU} cannot run a TCG machine: {err}"
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive flock, so parallel sessions build one image, not two."""
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_config(root: Path) -> None:
    for name, content in CONFIG_FILES.items():
        target = root / name.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_text(content)


def _one(root: Path, pattern: str) -> Path:
    found = sorted((root / "boot").glob(pattern))
    if len(found) != 1:
        raise LabError(f"expected one /boot/{pattern} in the rootfs, found {found}")
    return found[0]


def build_image(cache_dir: Path) -> LabImage:
    """Build L1's image, or reuse the one whose recipe hash matches.

    The image is cached under ``cache_dir/<sha256 of recipe_text()>/`` because a
    build costs a minute or two (mmdebstrap downloads and installs ~1 GB); a
    recipe change gives a new key, so a stale image is never booted. Booting
    uses snapshot=on, so the cached files stay pristine.
    """
    key = recipe_key()
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / key[:16]
    image = LabImage(key, final / "rootfs.img", final / "vmlinuz", final / "initrd.img")
    with _locked(cache_dir / ".lock"):
        if (final / "recipe.txt").exists():
            return image
        timings = ensure_host_tools()
        work = Path(tempfile.mkdtemp(prefix=f"build-{key[:16]}-", dir=cache_dir))
        try:
            root = work / "rootfs"
            start = time.monotonic()
            _run_host(
                [
                    "mmdebstrap",
                    "--variant=minbase",
                    "--mode=root",
                    '--aptopt=APT::Install-Recommends "false"',
                    '--aptopt=Acquire::Retries "3"',
                    "--include=" + ",".join(PACKAGES),
                    SUITE,
                    str(root),
                    *MIRRORS,
                ],
                "mmdebstrap",
            )
            timings["mmdebstrap"] = time.monotonic() - start
            start = time.monotonic()
            _write_config(root)
            _run_host(["chroot", str(root), "/bin/sh", "-c", SETUP_SCRIPT], "rootfs setup")
            shutil.copy(_one(root, "vmlinuz-*"), work / "vmlinuz")
            shutil.copy(_one(root, "initrd.img-*"), work / "initrd.img")
            _run_host(
                [
                    "mke2fs",
                    "-q",
                    "-t",
                    "ext4",
                    "-L",
                    "l1root",
                    "-d",
                    str(root),
                    str(work / "rootfs.img"),
                    IMAGE_SIZE,
                ],
                "mke2fs",
            )
            timings["image"] = time.monotonic() - start
            shutil.rmtree(root)
            (work / "recipe.txt").write_text(recipe_text())
            work.rename(final)
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    log.info("lab: built image %s in %s", final, timings)
    return LabImage(key, image.rootfs, image.kernel, image.initrd, timings)


# ---------------------------------------------------------------------------
# Running L1.
# ---------------------------------------------------------------------------

#: L1's kernel command line. panic=-1 with QEMU's -no-reboot turns a kernel
#: panic (or the initramfs giving up on its root) into QEMU exiting, which the
#: harness notices at once instead of waiting out its boot timeout.
KERNEL_APPEND = "root=/dev/vda rw console=ttyS0 intel_iommu=on iommu=pt quiet panic=-1"

#: The environment of commands run in L1 (guest-exec replaces qemu-ga's own).
GUEST_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LANG=C.UTF-8",
    "LIBVIRT_DEFAULT_URI=qemu:///system",
)

#: L2: no disk, no display, just a machine with an xHCI controller and two free
#: PCIe root ports (libvirt hot-plugs a PCIe hostdev only into a free port).
#: With no OS it never acknowledges a PCI unplug: see lab_pci's Linux L2.
L2_XML = """\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='qemu-xhci' ports='15'/>
    <controller type='pci' index='0' model='pcie-root'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""

_PR_SET_PDEATHSIG = 1

T = TypeVar("T")


def _die_with_parent() -> None:
    """In the QEMU child: get SIGKILL when pytest dies, so no L1 outlives a run."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path.name} unreadable)"
    return "\n".join(text.splitlines()[-lines:]) or f"({path.name} empty)"


class _JsonSocket:
    """Line-delimited JSON over a unix socket, with a deadline on every read."""

    def __init__(self, path: Path, alive: Callable[[], None]) -> None:
        self.path = path
        self._alive = alive
        self._sock: socket.socket | None = None
        self._buf = b""

    def connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self._alive()
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(str(self.path))
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if time.monotonic() > deadline:
                    raise LabError(f"{self.path} did not accept a connection") from None
                time.sleep(0.1)
                continue
            self._sock = sock
            self._buf = b""
            return

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def send(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(data)

    def send_json(self, msg: dict[str, Any]) -> None:
        self.send(json.dumps(msg).encode() + b"\n")

    def read_line(self, timeout: float) -> bytes:
        """One line, checking every half second that QEMU still lives."""
        assert self._sock is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            self._alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no answer on {self.path.name} within {timeout:.0f} s")
            self._sock.settimeout(min(left, 0.5))
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                self.close()
                self._alive()
                raise LabError(f"{self.path.name} closed by QEMU")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line


#: Where L1 mounts the checkout (virtio-9p), and the driver behind it.
SHARE = "/opt/phyllod"
_9P_DRIVER = "/sys/bus/virtio/drivers/9pnet_virtio"


class Lab:
    """L1 running under QEMU/TCG, driven over QMP (as its hardware) and qemu-ga (as root in it).

    Use as a context manager: QEMU is killed on exit whatever happened, and the
    QEMU child also gets SIGKILL if this process dies (PR_SET_PDEATHSIG).
    """

    def __init__(
        self,
        image: LabImage,
        *,
        share: Path = REPO_ROOT,
        memory_mib: int = 2048,
        smp: int = 2,
        boot_timeout: float = 300.0,
        run_dir: Path | None = None,
        keep_run_dir: bool = False,
    ) -> None:
        self.image = image
        self.share = share
        self.memory_mib = memory_mib
        self.smp = smp
        self.boot_timeout = boot_timeout
        self._run_dir_given = run_dir
        self.keep_run_dir = keep_run_dir
        # A short path: unix socket paths are limited to 108 bytes.
        self.run_dir = Path("/nonexistent")
        self._proc: subprocess.Popen[bytes] | None = None
        self._qmp: _JsonSocket | None = None
        self._qga: _JsonSocket | None = None
        self._qga_synced = False
        self._sync_id = int(time.time()) & 0xFFFFFF
        #: QMP events received while waiting for replies, oldest first.
        self.events: list[dict[str, Any]] = []
        #: Seconds for boot and L2 start, for reports.
        self.timings: dict[str, float] = {}

    # -- lifecycle ---------------------------------------------------------

    def __enter__(self) -> Lab:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def serial_path(self) -> Path:
        return self.run_dir / "serial.log"

    def qemu_argv(self) -> list[str]:
        """QEMU's command line; see the module docstring for why TCG."""
        rd = self.run_dir
        img = self.image
        return [
            QEMU,
            "-name", "phyllod-lab-l1",
            "-accel", "tcg",
            "-cpu", "max",
            "-machine", "q35,kernel-irqchip=split",
            # First, before any other PCI device, as QEMU wants for the IOMMU.
            "-device", "intel-iommu,intremap=on,caching-mode=on",
            "-m", str(self.memory_mib),
            "-smp", str(self.smp),
            "-nodefaults",
            "-display", "none",
            "-no-reboot",
            "-kernel", str(img.kernel),
            "-initrd", str(img.initrd),
            "-append", KERNEL_APPEND,
            # snapshot=on: writes go to a temp file, the cached image stays pristine.
            "-drive", f"file={img.rootfs},if=virtio,format=raw,snapshot=on",
            "-device", "qemu-xhci,id=xhci",
            "-device", "pcie-root-port,id=rp1,chassis=1,slot=1",
            "-device", "pcie-root-port,id=rp2,chassis=2,slot=2",
            # Empty ports for PCI hot-plug (lab_pci.plug_pci): a PCIe port
            # takes one device, and QEMU cannot add root ports at run time.
            "-device", "pcie-root-port,id=rp3,chassis=3,slot=3",
            "-device", "pcie-root-port,id=rp4,chassis=4,slot=4",
            "-device", "pcie-root-port,id=rp5,chassis=5,slot=5",
            # A conventional PCI segment: everything behind a PCIe-to-PCI
            # bridge shares one IOMMU group, and L1 itself uses l1nic there,
            # so a device hot-plugged beside it (l1nic2, lab_pci.py) must not
            # be passed: libvirt finds its group not viable.
            "-device", "pcie-root-port,id=rpbr,chassis=6,slot=6",
            "-device", "pcie-pci-bridge,id=pcibr,bus=rpbr",
            "-netdev", "user,id=l1net,restrict=on",
            "-device", "e1000,id=l1nic,bus=pcibr,addr=1,netdev=l1net",
            "-virtfs",
            f"local,path={self.share},mount_tag=phyllod,security_model=none,readonly=on",
            "-qmp", f"unix:{rd / 'qmp.sock'},server=on,wait=off",
            "-chardev", f"socket,id=qga0,path={rd / 'qga.sock'},server=on,wait=off",
            "-device", "virtio-serial-pci,id=vser0",
            "-device", "virtserialport,bus=vser0.0,chardev=qga0,name=org.qemu.guest_agent.0",
            "-serial", f"file:{self.serial_path}",
        ]  # fmt: skip

    def start(self) -> None:
        """Start QEMU (returns at once; wait_ready() waits for L1 to be usable)."""
        if self._run_dir_given is not None:
            self.run_dir = self._run_dir_given
            self.run_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.run_dir = Path(tempfile.mkdtemp(prefix="phyllod-lab-", dir="/tmp"))
        argv = self.qemu_argv()
        (self.run_dir / "qemu.argv").write_text(shlex.join(argv) + "\n")
        log.info("lab: starting L1 in %s", self.run_dir)
        with (self.run_dir / "qemu.log").open("wb") as out:
            self._proc = subprocess.Popen(
                argv,
                env=host_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self._started = time.monotonic()
        self._qmp = _JsonSocket(self.run_dir / "qmp.sock", self.check_alive)
        self._qga = _JsonSocket(self.run_dir / "qga.sock", self.check_alive)

    def close(self) -> None:
        """Kill QEMU and forget the sockets. Safe to call twice."""
        for sock in (self._qmp, self._qga):
            if sock is not None:
                sock.close()
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
        if (
            not self.keep_run_dir
            and self._run_dir_given is None
            and self.run_dir.name.startswith("phyllod-lab-")
        ):
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def check_alive(self) -> None:
        """Raise LabDied, with the tails of QEMU's and the serial log, if QEMU exited."""
        if self._proc is None:
            raise LabError("the lab is not running")
        rc = self._proc.poll()
        if rc is None:
            return
        raise LabDied(
            f"L1's QEMU exited with {rc}\n"
            f"--- qemu.log ---\n{_tail(self.run_dir / 'qemu.log', 20)}\n"
            f"--- serial.log (tail) ---\n{_tail(self.serial_path)}"
        )

    def serial_log(self) -> str:
        """Everything L1 wrote on its serial console so far."""
        try:
            return self.serial_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float | None = None) -> float:
        """Wait until qemu-ga answers guest-ping and libvirtd is active in L1.

        Returns seconds since QEMU started. Raises LabDied at once if QEMU exits.
        """
        deadline = time.monotonic() + (timeout or self.boot_timeout)
        last: Exception | None = None
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                self._qga_call("guest-ping", timeout=5)
                rc, out, _ = self.run("systemctl is-active libvirtd", timeout=30)
                if out.strip() == "active":
                    self.timings["boot_to_ready"] = time.monotonic() - self._started
                    return self.timings["boot_to_ready"]
                last = LabError(f"libvirtd is {out.strip() or rc!r}")
            except (TimeoutError, AgentError, OSError) as exc:
                last = exc
            time.sleep(1)
        raise LabError(
            f"L1 not ready after {timeout or self.boot_timeout:.0f} s ({last})\n"
            f"--- serial.log (tail) ---\n{_tail(self.serial_path)}"
        )

    # -- QMP: L1's hardware ------------------------------------------------

    def qmp(self, command: str, timeout: float = 60, **args: Any) -> Any:
        """Run a QMP command on L1's QEMU; returns its "return" value.

        Example: ``lab.qmp("device_add", driver="usb-kbd", bus="xhci.0", id="kbd1")``.
        Events that arrive meanwhile are appended to ``self.events``.
        """
        sock = self._qmp
        if sock is None:
            raise LabError("the lab is not running")
        if not sock.connected:
            sock.connect(timeout=30)
            greeting = json.loads(sock.read_line(timeout=30))
            if "QMP" not in greeting:
                raise LabError(f"not a QMP greeting: {greeting}")
            self._qmp_exchange(sock, "qmp_capabilities", {}, timeout=30)
        return self._qmp_exchange(sock, command, args, timeout)

    def _qmp_exchange(
        self, sock: _JsonSocket, command: str, args: dict[str, Any], timeout: float
    ) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if args:
            msg["arguments"] = args
        sock.send_json(msg)
        while True:
            reply = json.loads(sock.read_line(timeout))
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise AgentError(f"QMP {command} {args}: {reply['error']}")
            return reply.get("return")

    # -- qemu-ga: root inside L1 -------------------------------------------

    def _qga_sync(self, sock: _JsonSocket, timeout: float) -> None:
        """Resynchronise with qemu-ga, discarding stale replies.

        Requests sent before qemu-ga ran (or whose replies we gave up on) may
        still be answered; guest-sync-delimited with a fresh id, preceded by
        0xFF to reset qemu-ga's parser, tells our answer apart from theirs.
        """
        self._sync_id += 1
        want = self._sync_id
        sock.send(b"\xff")
        sock.send_json({"execute": "guest-sync-delimited", "arguments": {"id": want}})
        deadline = time.monotonic() + timeout
        while True:
            line = sock.read_line(max(0.1, deadline - time.monotonic()))
            line = line.rpartition(b"\xff")[2].strip()
            if not line:
                continue
            with contextlib.suppress(ValueError):
                if json.loads(line).get("return") == want:
                    self._qga_synced = True
                    return

    def _qga_call(self, command: str, timeout: float = 30, **args: Any) -> Any:
        sock = self._qga
        if sock is None:
            raise LabError("the lab is not running")
        if not sock.connected:
            sock.connect(timeout=30)
            self._qga_synced = False
        try:
            if not self._qga_synced:
                self._qga_sync(sock, timeout=min(timeout, 5))
            msg: dict[str, Any] = {"execute": command}
            if args:
                msg["arguments"] = args
            sock.send_json(msg)
            reply = json.loads(sock.read_line(timeout))
        except BaseException:
            self._qga_synced = False
            raise
        if "error" in reply:
            raise AgentError(f"guest agent {command}: {reply['error']}")
        return reply.get("return")

    def run(
        self, cmd: str, timeout: float = 120, input: str | bytes | None = None
    ) -> tuple[int, str, str]:
        """Run ``sh -c cmd`` as root in L1; returns (exit code, stdout, stderr).

        A command killed by a signal returns -signal. On timeout the command is
        killed in L1 and TimeoutError raised.
        """
        # setsid makes the shell a process group leader, so a timeout can kill
        # the command's whole tree, not just the shell.
        args: dict[str, Any] = {
            "path": "/usr/bin/setsid",
            "arg": ["/bin/sh", "-c", cmd],
            "env": list(GUEST_ENV),
            "capture-output": True,
        }
        if input is not None:
            data = input.encode() if isinstance(input, str) else input
            args["input-data"] = base64.b64encode(data).decode()
        pid = self._qga_call("guest-exec", **args)["pid"]
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            status = self._qga_call("guest-exec-status", pid=pid)
            if status.get("exited"):
                break
            if time.monotonic() > deadline:
                with contextlib.suppress(LabError, TimeoutError):
                    self.run(f"/usr/bin/kill -KILL -- -{pid}", timeout=10)
                    self._qga_call("guest-exec-status", pid=pid)  # reaped: qemu-ga forgets it
                raise TimeoutError(f"L1: {cmd!r} still running after {timeout:.0f} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
        out = base64.b64decode(status.get("out-data", "")).decode(errors="replace")
        err = base64.b64decode(status.get("err-data", "")).decode(errors="replace")
        rc = status["exitcode"] if "exitcode" in status else -int(status.get("signal", 0))
        return rc, out, err

    def check(self, cmd: str, timeout: float = 120, input: str | bytes | None = None) -> str:
        """run() that raises unless the command succeeds; returns its stdout."""
        rc, out, err = self.run(cmd, timeout=timeout, input=input)
        if rc != 0:
            raise LabError(f"L1: {cmd!r} exited {rc}\nstdout: {out}\nstderr: {err}")
        return out

    def write_file(self, path: str, content: str | bytes) -> None:
        """Write a file in L1 (through the command's stdin)."""
        self.check(f"cat > {shlex.quote(path)}", input=content)

    def wait_for(
        self, probe: Callable[[], T | None], timeout: float = 30, what: str = "condition"
    ) -> T:
        """Poll probe() until it returns something truthy; QEMU dying ends the wait."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            result = probe()
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"L1: {what} not reached within {timeout:.0f} s")
            time.sleep(0.3)

    def suspend_resume(self, asleep: float = 2.0) -> None:
        """A real S3 of L1 (``systemctl suspend``), woken by QMP ``system_wakeup``.

        QEMU's wakeup from S3 resets every device, and Linux's 9pnet_virtio
        has no freeze/restore: a share mounted across it is left without a
        virtqueue and any later access blocks for good (D state, immune to
        SIGKILL). So the checkout's share is unmounted and its driver unbound
        first, bound and mounted again after.
        """
        dev = self.check(f"basename $(readlink -f {_9P_DRIVER}/virtio*)").strip()
        self.check(f"umount {SHARE} && echo {dev} > {_9P_DRIVER}/unbind")
        try:
            # QEMU 7.2's ICH9 loses its ACPI PM base on resume; without it a
            # later suspend only pretends (the kernel goes through S3, QEMU never sleeps).
            self.check("setpci -s 00:1f.0 40.l=0x601 44.b=0x80")
            self.check("systemd-run --no-block systemctl suspend")
            self.wait_for(lambda: self.qmp("query-status")["status"] == "suspended", 60,
                          "L1 suspended")
            time.sleep(asleep)
            self.qmp("system_wakeup")
            self.wait_for(lambda: self.qmp("query-status")["status"] == "running", 60,
                          "L1 running again")
        finally:
            if self.qmp("query-status")["status"] == "suspended":
                self.qmp("system_wakeup")
            self.check(f"echo {dev} > {_9P_DRIVER}/bind && mount {SHARE}", timeout=60)

    # -- in-L1 helpers -----------------------------------------------------

    def usb_addresses(self, vendor: str, product: str) -> list[tuple[int, int]]:
        """(bus, device) of L1's USB devices with this vendor:product, from sysfs."""
        script = (
            "for d in /sys/bus/usb/devices/*; do "
            '[ -f "$d/idVendor" ] || continue; '
            'echo "$(cat $d/idVendor) $(cat $d/idProduct) $(cat $d/busnum) $(cat $d/devnum)"; '
            "done"
        )
        found = []
        for line in self.check(script).splitlines():
            vid, pid, bus, dev = line.split()
            if vid == vendor.lower() and pid == product.lower():
                found.append((int(bus), int(dev)))
        return sorted(found)

    def define_l2(self, name: str = "l2", xml: str | None = None) -> float:
        """Define and start the L2 guest in L1 (replacing one of that name).

        Returns the seconds `virsh start` took.
        """
        q = shlex.quote(name)
        self.run(f"virsh destroy {q}; virsh undefine {q}", timeout=60)
        self.write_file(f"/tmp/{name}.xml", xml or L2_XML.format(name=name))
        self.check(f"virsh define /tmp/{q}.xml", timeout=60)
        start = time.monotonic()
        self.check(f"virsh start {q}", timeout=180)
        self.timings[f"{name}_start"] = time.monotonic() - start
        return self.timings[f"{name}_start"]

    def l2_monitor(self, hmp: str, name: str = "l2") -> str:
        """An HMP command (e.g. 'info usb') on L2's QEMU, through libvirt in L1."""
        return self.check(
            f"virsh qemu-monitor-command {shlex.quote(name)} --hmp {shlex.quote(hmp)}",
            timeout=60,
        )
