"""PCI in the lab: hot-plug PCI devices into L1, and an L2 that boots Linux to see them.

Why a second L2: the firmware-only L2 of lab.py never acknowledges a PCIe
unplug (design.md, "PCI hot-unplug needs a guest OS"), so a PCI detach from it
"succeeds" while the device stays. The Linux L2 here boots L1's own kernel with
a busybox initramfs built in L1 at first use, and reports on its serial console
(a file in L1) what it sees, every ~2 s::

    L2PCI: 00:00.0 8086:29c0 0600 -; 01:00.0 8086:10d3 0200 -; ...
    L2USB: 1d6b:0002 1d6b:0003 0627:0001

L1's PCI topology and addresses are in lab.py's docstring. The
pcie-pci-bridge there takes hot-plugged devices too (QMP device_add with
``bus="pcibr"``: L1's kernel picks the device up as on a root port and
acknowledges device_del), so the device that must be refused, ``l1nic2`` at
0000:07:02.0, is hot-plugged (plug_pci(lab, "l1nic2", "e1000", "pcibr",
addr="2")) rather than present from boot: it lands in pcibr's group with
l1nic, which L1 keeps using, so libvirt finds the group "not viable".

Measured (L1 under TCG on 2 cores, L2 under TCG inside it, 2026-11-24):

- Linux L2, `virsh start` to its first report: 111.6 s with
  ``console=ttyS0 panic=-1 quiet``; 99.7 s and 90.5 s (the pytest run) with
  ``mitigations=off nokaslr`` added (and two more root ports and a bridge in
  the same change: one run each, not a clean A/B). Building the initramfs
  in L1: 2.8 s.
- A report costs ~0.5 s of L2's time (builtins only; a first version forking
  per attribute took 8 s), so L2's view lags reality by up to ~2.5 s.
- e1000e in rp3: `virsh attach-device` 3.7 s (L1 driver vfio-pci, in L2's
  report a few seconds later); `virsh detach-device` 1.2 s, gone from L2's
  QEMU at 1.8 s, from L2's report at 3.4 s, back on e1000e in L1 at 3.6 s.
- xhci2 with usb-kbd: attach 1.2 s, keyboard in L2's report at 4.9 s;
  detach 2.2 s, back on xhci_hcd in L1 at 2.7 s.
- l1nic2 behind the bridge: refused in 1.1 s with "internal error: unable to
  execute QEMU command 'device_add': vfio 0000:07:02.0: group 12 is not
  viable"; libvirt rebinds it to e1000 itself.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import time
from typing import Any

from lab import Lab, LabError

#: Where L2's console goes, in L1 (libvirt truncates it at each start).
L2_SERIAL = "/var/log/{name}-serial.log"

#: Where the initramfs is written in L1 (libvirt's qemu user can read it there).
L2_BOOT_DIR = "/var/lib/libvirt/boot"

#: Modules L2 loads, with their dependencies resolved by L1's modprobe: the
#: xHCI driver for a passed controller and HID for the keyboard behind it.
#: PCIe native (pciehp) and ACPI (acpiphp) hot-plug are built into Debian's
#: kernel, so PCI needs none.
L2_MODULES = ("xhci_pci", "usbhid", "hid_generic")

#: L2's /init: mount, load modules, then report forever. One report line per
#: bus keeps parsing trivial; "-" stands for "no driver".
L2_INIT = r"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
dmesg -n 1
for m in $(cat /modules/order); do insmod /modules/$m; done
# Shell builtins only inside the loop (read, cd -P): under TCG in TCG every
# fork+exec costs ~0.1 s, and with a command per attribute a report took 8 s.
while :; do
    line=""
    for d in /sys/bus/pci/devices/*; do
        read v < $d/vendor; read p < $d/device; read c < $d/class
        drv=-
        if [ -e $d/driver ]; then cd -P $d/driver; drv=${PWD##*/}; cd /; fi
        c=${c#0x}
        line="$line${line:+; }${d##*/0000:} ${v#0x}:${p#0x} ${c%??} $drv"
    done
    echo "L2PCI: $line"
    line=""
    for d in /sys/bus/usb/devices/*; do
        [ -f $d/idVendor ] || continue
        read v < $d/idVendor; read p < $d/idProduct
        line="$line${line:+ }$v:$p"
    done
    echo "L2USB: $line"
    sleep 2
done
"""

#: Builds the initramfs in L1 ($1: output file): busybox, the modules in
#: dependency order (modprobe repeats shared deps; keep the first), /init.
BUILD_INITRAMFS = r"""set -eu
out=$1
w=$(mktemp -d)
mkdir -p $w/bin $w/modules
cp /usr/bin/busybox $w/bin/busybox
modprobe --show-depends -a {modules} | awk '$1 == "insmod" && !seen[$2]++ {{print $2}}' |
while read -r ko; do
    cp $ko $w/modules/
    basename $ko >> $w/modules/order
done
cp /tmp/l2-init $w/init
chmod 755 $w/init
mkdir -p $(dirname $out)
(cd $w && find . | cpio -o -H newc --quiet) > $out.tmp
mv $out.tmp $out
rm -rf $w
"""

#: An L2 that boots Linux: q35 (ACPI on, or PCI hot-plug has no way in); six
#: root ports, one for its own xHCI (for USB hostdevs), one for a
#: pcie-to-pci-bridge and four free, because libvirt hot-plugs a PCIe hostdev
#: only into a free root port and a conventional PCI one (e1000) only into a
#: bridge slot (without the bridge: "No more available PCI slots", before
#: libvirt even looks at the IOMMU group); no disk. on_reboot=destroy so a
#: kernel panic (panic=-1) stops the domain instead of boot-looping.
L2_LINUX_XML = """\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <on_reboot>destroy</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='pci' model='pcie-root'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-to-pci-bridge'/>
    <controller type='usb' model='qemu-xhci' ports='15'/>
    <serial type='file'><source path='{serial}'/><target port='0'/></serial>
    <console type='file'><source path='{serial}'/><target type='serial' port='0'/></console>
    <memballoon model='none'/>
  </devices>
</domain>
"""

#: L2's kernel command line: what makes it boot fastest under TCG in TCG.
L2_CMDLINE = "console=ttyS0 panic=-1 quiet mitigations=off nokaslr"

#: The name lab tests give the Linux L2 (the firmware-only one is "l2").
L2_LINUX = "l2linux"

PCI_HOSTDEV_XML = """\
<hostdev mode='subsystem' type='pci' managed='yes'>
  <source>
    <address domain='0x{domain}' bus='0x{bus}' slot='0x{slot}' function='0x{function}'/>
  </source>
</hostdev>
"""


# ---------------------------------------------------------------------------
# L1's PCI hardware, over QMP.
# ---------------------------------------------------------------------------


def _walk_query_pci(buses: list[dict[str, Any]]) -> dict[str, str]:
    """qdev id -> L1 address, for every device QEMU has, behind bridges too."""
    found: dict[str, str] = {}
    for bus in buses:
        for dev in bus["devices"]:
            address = f"0000:{dev['bus']:02x}:{dev['slot']:02x}.{dev['function']:x}"
            if dev.get("qdev_id"):
                found[dev["qdev_id"]] = address
            behind = dev.get("pci_bridge", {}).get("devices")
            if behind is not None:
                found |= _walk_query_pci([{"devices": behind}])
    return found


def l1_pci_address(lab: Lab, qdev_id: str) -> str:
    """L1's PCI address (0000:bb:dd.f) of the device with this QMP id.

    QEMU's query-pci reports the bus numbers L1's kernel programmed into the
    bridges, so this is what lspci in L1 shows, for ports and bridges too.
    """
    addresses = _walk_query_pci(lab.qmp("query-pci"))
    if qdev_id not in addresses:
        raise LabError(f"no PCI device {qdev_id!r} in L1 (have {sorted(addresses)})")
    return addresses[qdev_id]


def _l1_has(lab: Lab, address: str) -> bool:
    return lab.run(f"test -e /sys/bus/pci/devices/{address}")[0] == 0


def plug_pci(lab: Lab, qdev_id: str, driver: str = "e1000e", bus: str = "rp3", **props: str) -> str:
    """Hot-plug a PCI device into L1 (QMP device_add); returns its L1 address.

    Returns once L1's kernel has the device in sysfs; its driver may bind a
    moment later (wait_l1_driver). ``props`` go to device_add as they are,
    e.g. ``addr="2"`` for a slot behind the pcie-pci-bridge.
    """
    lab.qmp("device_add", driver=driver, bus=bus, id=qdev_id, **props)
    address = l1_pci_address(lab, qdev_id)
    lab.wait_for(lambda: _l1_has(lab, address), what=f"{qdev_id} at {address} in L1's sysfs")
    return address


def unplug_pci(lab: Lab, qdev_id: str, timeout: float = 60) -> None:
    """Hot-unplug a device from L1 and wait until QEMU no longer has it.

    A PCIe unplug is a request to the guest: QEMU drops the device only once
    L1's kernel let it go, so after this it is gone from L1 too. Devices
    behind it (a controller's USB devices) go with it. This polls query-pci
    rather than waiting for DEVICE_DELETED because QEMU 7.2 sent that event
    for xhci2's keyboard but never for xhci2 itself.
    """
    lab.qmp("device_del", id=qdev_id)
    lab.wait_for(
        lambda: qdev_id not in _walk_query_pci(lab.qmp("query-pci")),
        timeout=timeout,
        what=f"{qdev_id} gone from L1's QEMU",
    )


#: The USB controller passed whole, and the keyboard behind it.
XHCI2, XHCI2_KBD = "xhci2", "xhci2kbd"


def plug_xhci_with_keyboard(lab: Lab, bus: str = "rp4") -> str:
    """Hot-plug a second xHCI (id xhci2) with a usb-kbd (0627:0001) on it; its L1 address.

    A controller is how a whole USB bus, whatever is plugged into it, goes to
    a guest. Waits until L1's xhci_hcd drives it and the keyboard enumerated,
    so a test starts from the state a real host would be in. unplug_pci(lab,
    XHCI2) removes both.
    """
    address = plug_pci(lab, XHCI2, "qemu-xhci", bus)
    wait_l1_driver(lab, address, "xhci_hcd")
    lab.qmp("device_add", driver="usb-kbd", bus=f"{XHCI2}.0", id=XHCI2_KBD)
    lab.wait_for(
        lambda: lab.run(f"grep -qx 0627 /sys/bus/pci/devices/{address}/usb*/*/idVendor")[0] == 0,
        what="the keyboard on xhci2 in L1",
    )
    return address


# ---------------------------------------------------------------------------
# L1's view: drivers and IOMMU groups.
# ---------------------------------------------------------------------------


def l1_driver(lab: Lab, address: str) -> str:
    """The L1 driver bound to a PCI device ("" when none)."""
    rc, out, _ = lab.run(f"readlink /sys/bus/pci/devices/{address}/driver")
    return out.strip().rsplit("/", 1)[-1] if rc == 0 else ""


def wait_l1_driver(lab: Lab, address: str, driver: str, timeout: float = 60) -> None:
    """Wait until L1 binds ``driver`` ("" for none) to the device."""
    lab.wait_for(
        lambda: l1_driver(lab, address) == driver,
        timeout=timeout,
        what=f"{address} bound to {driver or 'no driver'} in L1",
    )


def iommu_group(lab: Lab, address: str) -> list[str]:
    """The L1 addresses in the device's IOMMU group (itself included), sorted.

    What decides whether a device can be passed: VFIO takes a whole group.
    """
    out = lab.check(f"ls /sys/bus/pci/devices/{address}/iommu_group/devices")
    return sorted(out.split())


# ---------------------------------------------------------------------------
# The Linux L2.
# ---------------------------------------------------------------------------


def prepare_l2_linux(lab: Lab, name: str = L2_LINUX) -> str:
    """The domain XML of a Linux L2, after building its initramfs in L1 if needed.

    The initramfs is named by a hash of its recipe, so it is built once per
    L1 boot (L1 boots from a snapshot) and rebuilt if /init changes.
    """
    recipe = L2_INIT + BUILD_INITRAMFS + " ".join(L2_MODULES)
    initrd = f"{L2_BOOT_DIR}/l2-initrd-{hashlib.sha256(recipe.encode()).hexdigest()[:12]}.img"
    if lab.run(f"test -s {initrd}")[0] != 0:
        lab.write_file("/tmp/l2-init", L2_INIT)
        lab.write_file("/tmp/l2-mkinitramfs", BUILD_INITRAMFS.format(modules=" ".join(L2_MODULES)))
        lab.check(f"sh /tmp/l2-mkinitramfs {initrd}", timeout=300)
    kernel = "/boot/vmlinuz-" + lab.check("uname -r").strip()
    return L2_LINUX_XML.format(
        name=name,
        kernel=kernel,
        initrd=initrd,
        cmdline=L2_CMDLINE,
        serial=L2_SERIAL.format(name=name),
    )


def start_l2_linux(lab: Lab, name: str = L2_LINUX, timeout: float = 600) -> float:
    """Define and start the Linux L2, and wait for its first report.

    Returns seconds from `virsh start` to the first report (also in
    ``lab.timings[name + "_boot"]``).
    """
    xml = prepare_l2_linux(lab, name)
    start = time.monotonic()
    lab.define_l2(name, xml)
    wait_l2_booted(lab, name, timeout)
    lab.timings[f"{name}_boot"] = time.monotonic() - start
    return lab.timings[f"{name}_boot"]


def remove_l2(lab: Lab, name: str = L2_LINUX) -> None:
    """Destroy and undefine an L2 (whatever its state), as a test's cleanup."""
    q = shlex.quote(name)
    lab.run(f"virsh destroy {q}; virsh undefine {q}", timeout=120)


def _serial(lab: Lab, name: str) -> str:
    rc, out, _ = lab.run(f"tail -n 40 {L2_SERIAL.format(name=name)}")
    return out if rc == 0 else ""


def _last_report(text: str, marker: str) -> str | None:
    """The rest of the last complete ``marker`` line, None before the first.

    A line is complete once a newline follows it: the log may end mid-line.
    """
    for line in reversed(text.splitlines(keepends=True)):
        if line.endswith("\n") and line.startswith(marker):
            return line[len(marker) :].strip()
    return None


def wait_l2_booted(lab: Lab, name: str = L2_LINUX, timeout: float = 600) -> None:
    """Wait for L2's first report; raise at once if the domain stopped (panic)."""

    def booted() -> bool:
        if _last_report(_serial(lab, name), "L2USB:") is not None:
            return True
        state = lab.run(f"virsh domstate {shlex.quote(name)}")[1].strip()
        if state != "running":
            raise LabError(f"L2 {name} is {state!r} before reporting:\n{_serial(lab, name)}")
        return False

    lab.wait_for(booted, timeout=timeout, what=f"L2 {name}'s first report")


def l2_pci_view(lab: Lab, name: str = L2_LINUX) -> dict[str, tuple[str, str, str]]:
    """L2's PCI devices from its last report: address -> (vendor:device, class, driver).

    Addresses are L2's own (bb:dd.f), class is 4 hex digits (0200 Ethernet,
    0c03 USB), driver "" when none.
    """
    report = _last_report(_serial(lab, name), "L2PCI:")
    if report is None:
        raise LabError(f"L2 {name} has not reported yet")
    view = {}
    for item in filter(None, report.split("; ")):
        address, ids, cls, driver = item.split()
        view[address] = (ids, cls, "" if driver == "-" else driver)
    return view


def l2_usb_view(lab: Lab, name: str = L2_LINUX) -> list[str]:
    """vendor:product of every USB device in L2's last report (root hubs too)."""
    report = _last_report(_serial(lab, name), "L2USB:")
    if report is None:
        raise LabError(f"L2 {name} has not reported yet")
    return report.split()


def l2_info_pci(lab: Lab, name: str = L2_LINUX) -> str:
    """HMP ``info pci`` of L2's QEMU: does L2's QEMU hold the hostdev (cheaper than a report)."""
    return lab.l2_monitor("info pci", name)


def pci_hostdev_xml(address: str) -> str:
    """A managed PCI <hostdev> for an L1 address (libvirt binds vfio-pci itself)."""
    m = re.fullmatch(r"([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])", address)
    if m is None:
        raise ValueError(f"not a PCI address: {address!r}")
    domain, bus, slot, function = m.groups()
    return PCI_HOSTDEV_XML.format(domain=domain, bus=bus, slot=slot, function=function)
