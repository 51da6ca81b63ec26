"""The load the load tests and bench/memory_bench.py drive: devices behind hubs among
fifty guests with a policy that gives every kind of decision, and udev churn paced
by the daemon's log.

The libvirt test driver file has fifty running guests; the driver refuses every
attach, so the attach rules give real work (calls, failures, backoff).
"""

from __future__ import annotations

import random

from daemon_process import DaemonProcess
from guest_xml import driver_guest, node

GUESTS = 50

# Leaf devices by index (mod 10): (vendor, product, interface triple).
KINDS = [
    ("1050", "0407", "030101"),  # security key: attached to g01
    ("046d", "c52b", "030102"),  # mouse receiver: attached to g02
    ("0781", "5567", "080650"),  # USB stick: denied
    ("8087", "0aaa", "e00101"),  # Bluetooth: asked about (g03 or g04)
    *[("0627", "0001", "030101")] * 6,  # keyboards: no rule, they stay on the host
]

POLICY = """\
[[rule]]
name = "no USB storage"
match = { interface_class = "08" }
action = "deny"

[[rule]]
name = "security keys follow g01"
match = { vendor = "1050", product = "0407" }
guest = "g01"

[[rule]]
name = "mice to g02"
match = { vendor = "046d" }
guest = "g02"

[[rule]]
name = "behind hub 2-3 to g07"
match = { port_below = "2-3" }
guest = "g07"

[[rule]]
name = "Bluetooth: ask"
match = { interface_class = "e0" }
action = "ask"
guest = ["g03", "g04"]
"""

def node_xml(guests: int) -> str:
    """A libvirt test driver file: ``guests`` domains, running (the driver's default)."""
    return node(*(driver_guest(f"g{n:02d}", uuid=f"6c0a9f3e-0000-4000-8000-{n:012d}")
                  for n in range(1, guests + 1)))


def plug_tree(tb, leaves: int) -> set[str]:
    """``leaves`` devices behind hubs: bus b, hubs in root ports b-1…b-10, devices in
    their ports b-h.1…b-h.10 (100 per bus: 110 device numbers, within USB's 127).
    Returns every device id (hubs included: they get objects too)."""
    ids = set()
    for i in range(leaves):
        bus, rest = divmod(i, 100)
        hub, port = divmod(rest, 10)
        bus, hub, port = bus + 1, hub + 1, port + 1
        hub_port = f"{bus}-{hub}"
        if f"usb:{hub_port}" not in ids:
            tb.plug(hub_port, devnum=1 + hub, vendor="05e3", product="0610",
                    product_name="USB2.0 Hub", device_class="09", interfaces=("090000",))
            ids.add(f"usb:{hub_port}")
        vendor, product, triple = KINDS[i % len(KINDS)]
        tb.plug(f"{hub_port}.{port}", devnum=11 + hub * 10 + port, vendor=vendor,
                product=product, serial=f"LOAD{i:05d}", interfaces=(triple,))
        ids.add(f"usb:{hub_port}.{port}")
    return ids


#: Device plugs and unplugs the daemon may be behind. umockdev delivers uevents
#: over a Unix datagram socket, whose queue holds net.unix.max_dgram_qlen (10)
#: messages, and aborts the test process when a listener's queue is full (a
#: kernel would drop the event, and phyllod rescan on ENOBUFS). With 3, at most
#: 2 unlogged operations (4 uevents) plus the one being sent (2) and the last
#: logged one's interface (1) can be queued: 7.
WINDOW = 3


class Churn:
    """Devices that come and go at random in ports of bus 9 (hub 9-1 and root ports),
    each replug with a new device number, as the kernel gives; counts the uevents.

    Flow control: once the daemon runs (``follow``), each plug or unplug waits
    until the daemon has logged all but ``WINDOW`` of those sent before it.
    """

    def __init__(self, tb, ports: int = 16, seed: int = 10) -> None:
        self.tb = tb
        self.rng = random.Random(seed)
        self.daemon: DaemonProcess | None = None
        self.markers: tuple[str, ...] = ()
        self.sent = self.seen = self.scanned = 0
        tb.plug("9-1", devnum=2, vendor="05e3", product="0610", product_name="USB2.0 Hub",
                device_class="09", interfaces=("090000",))
        half = ports // 2
        self.ports = [f"9-1.{n}" for n in range(1, half + 1)] + \
                     [f"9-{n}" for n in range(2, ports - half + 2)]
        self.kind = {port: KINDS[i % len(KINDS)] for i, port in enumerate(self.ports)}
        self.devnum: dict[str, int] = {}
        self.next_devnum = 3
        self.events = 0
        for port in self.ports:
            self.plug(port)

    @property
    def present(self) -> set[str]:
        """Device ids the testbed has on bus 9, the hub included."""
        return {"usb:9-1"} | {f"usb:{p}" for p in self.devnum}

    def follow(self, daemon: DaemonProcess, *markers: str) -> None:
        """Pace by ``daemon``'s log: each plug or unplug shows as a line with one of
        ``markers`` (which differ with the debounce)."""
        self.daemon, self.markers = daemon, markers
        self.sent = self.seen = 0
        self.scanned = daemon.mark()

    def _caught_up(self) -> bool:
        assert self.daemon is not None
        lines = self.daemon.lines
        for line in lines[self.scanned:]:
            self.seen += any(m in line for m in self.markers)
        self.scanned = len(lines)
        return self.seen > self.sent - WINDOW

    def settle(self, timeout: float = 120.0) -> None:
        """Wait until the daemon logged every plug and unplug sent."""
        assert self.daemon is not None
        self.daemon.wait_for("the daemon to log every plug and unplug",
                             lambda: self._caught_up() and self.seen >= self.sent, timeout)

    def _pace(self) -> None:
        if self.daemon is not None:
            self.daemon.wait_for("the daemon to catch up with the uevents", self._caught_up,
                                 timeout=60)
            self.sent += 1

    def plug(self, port: str, devnum: int = 0) -> None:
        self._pace()
        if not devnum:
            used = set(self.devnum.values()) | {1, 2}
            while self.next_devnum in used:
                self.next_devnum = self.next_devnum % 127 + 1
            devnum = self.next_devnum
        vendor, product, triple = self.kind[port]
        path = self.tb.plug(port, devnum=devnum, vendor=vendor, product=product,
                            serial=f"CHURN-{port}", interfaces=(triple,))
        # The kernel's bind, as a real plug has: the daemon takes a plug at it, so
        # its remove, which the kernel's monitor may hand over before udev's copy
        # of the add, never meets a plug still unheard of (a plug and an unplug
        # that came together collapse into nothing, which the pace cannot count).
        self.tb.tb.uevent(path, "bind")
        self.devnum[port] = devnum
        self.events += 3  # the device's add, its interface's add, the device's bind

    def unplug(self, port: str) -> None:
        self._pace()
        self.tb.unplug(port)
        del self.devnum[port]
        self.events += 2  # the interface's remove, the device's remove

    def toggle(self, events: int) -> None:
        """``events`` uevents of random plugs and unplugs."""
        stop = self.events + events
        while self.events < stop:
            port = self.rng.choice(self.ports)
            if port in self.devnum:
                self.unplug(port)
            else:
                self.plug(port)

    def flap(self, events: int) -> None:
        """Unplug and at once plug back, same device number: a flaky cable, a KVM switch."""
        stop = self.events + events
        while self.events < stop:
            port = self.rng.choice(sorted(self.devnum))
            devnum = self.devnum[port]
            self.unplug(port)
            self.plug(port, devnum)

    def fill(self) -> None:
        """Every port taken again: the same set as after the warm-up, for a fair comparison."""
        for port in self.ports:
            if port not in self.devnum:
                self.plug(port)
