"""Small builders for model values, so each test states only what matters."""

from __future__ import annotations

from phyllod.core.model import Device, Guest, GuestState, Hostdev, HostFacts, PciFunction, Subsystem
from phyllod.core.policy import Policy, Settings
from phyllod.core.policy_parser import parse_policy_text


def usb(port: str = "1-2", devnum: int = 5, vendor: str = "0627", product: str = "0001",
        serial: str = "", interfaces: tuple[str, ...] = ("030101",),
        device_class: str = "00", **kw: object) -> Device:
    bus = int(port.split("-", 1)[0])
    return Device(subsystem=Subsystem.USB, sys_path=f"/sys/devices/pci0000:00/usb{bus}/{port}",
                  port=port,
                  busnum=bus, devnum=devnum, vendor=vendor, product=product, serial=serial,
                  interface_classes=interfaces, device_class=device_class, **kw)  # type: ignore[arg-type]


def guest(name: str = "work", state: GuestState = GuestState.RUNNING,
          hostdevs: tuple[Hostdev, ...] = (), uuid: str = "", run: int = 1) -> Guest:
    """A guest; ``run`` is libvirt's domain id of its current run (-1 when not running)."""
    uuid = uuid or f"00000000-0000-0000-0000-{abs(hash(name)) % 10**12:012d}"
    return Guest(name=name, uuid=uuid, state=state, hostdevs=hostdevs,
                 run=run if state.active else -1)


def held(device: Device, owned: bool = True) -> Hostdev:
    """The hostdev a guest holds for ``device`` (placed by phyllod or by hand)."""
    alias = device.alias if owned else "hostdev0"
    return Hostdev(alias=alias, vendor=device.vendor, product=device.product, bus=device.busnum,
                   device=device.devnum)


def policy(text: str) -> Policy:
    content, problems = parse_policy_text(text, "test.toml")
    assert not problems, problems
    return Policy(content.rules, ("test.toml",), Settings(**content.settings))


def pci(address: str = "0000:03:00.0", vendor: str = "8086", product: str = "2723",
        device_class: str = "028000", group: int | None = 5, driver: str = "iwlwifi") -> Device:
    return Device(subsystem=Subsystem.PCI,
                  sys_path=f"/sys/devices/pci0000:00/0000:00:1c.0/{address}",
                  address=address, vendor=vendor, product=product, device_class=device_class,
                  iommu_group=group, driver=driver)


def host(*devices: Device, bridges: dict[str, int] | None = None, acs_override: bool = False,
         boot_vga: str = "", iommu: bool = True, drivers: dict[str, str] | None = None,
         mounted: dict[str, str] | None = None) -> HostFacts:
    """Host facts in which ``devices`` (PCI) and ``bridges`` (address → group) exist."""
    functions = {d.address: PciFunction(address=d.address, vendor=d.vendor, device=d.product,
                                        class_code=d.device_class,
                                        driver=(drivers or {}).get(d.address, d.driver),
                                        iommu_group=d.iommu_group,
                                        boot_vga=d.address == boot_vga)
                 for d in devices}
    for address, group in (bridges or {}).items():
        functions[address] = PciFunction(address=address, vendor="8086", device="a110",
                                         class_code="060400",
                                         driver="pcieport", iommu_group=group)
    groups: dict[int, list[str]] = {}
    for f in functions.values():
        if f.iommu_group is not None:
            groups.setdefault(f.iommu_group, []).append(f.address)
    return HostFacts(iommu_enabled=iommu, acs_override=acs_override, functions=functions,
                     groups={g: tuple(sorted(m)) for g, m in groups.items()}, mounted=mounted or {})
