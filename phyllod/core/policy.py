"""Policy, the model: rules that say which device goes to which guest, and matching.

The first matching rule wins (files in lexical order, rules in file order); a
device no rule matches stays on the host, or, with ``[settings] unmatched =
"ask"``, is asked about when it is plugged in. What a rule's words mean lives
here; turning TOML text into rules is :mod:`phyllod.core.policy_parser`'s job,
and reading the drop-in directory :mod:`phyllod.host.policy_files`'.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from phyllod.core.model import Device, Subsystem


class Action(StrEnum):
    ATTACH = "attach"
    IGNORE = "ignore"
    DENY = "deny"
    ASK = "ask"


class OnSleep(StrEnum):
    """What happens to a device a guest holds when the host goes to sleep."""

    DETACH = "detach"  # taken back before sleep, attached again after resume
    KEEP = "keep"  # left in the guest (the guest sleeps or copes)


class Unmatched(StrEnum):
    """What a device no rule matches gets when it is plugged in (never at start-up)."""

    HOST = "host"
    ASK = "ask"


#: Seconds a request waits for an answer unless ``[settings] ask_timeout`` says otherwise.
DEFAULT_ASK_TIMEOUT = 30
#: Seconds a vanished device is waited for before its guest is told it is gone
#: (``[settings] debounce``, or a rule's own ``debounce``). A KVM switch or a
#: flaky cable makes devices vanish and return at once; within this window the
#: return is one move, not an unplug and a plug.
DEFAULT_DEBOUNCE = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Match:
    """Conditions on a device's identity; every field given must hold.

    ``class`` is a prefix of the device class (USB ``bDeviceClass``, two hex
    digits; PCI class code, six), so ``0280`` means any PCI network controller.
    ``interface_class`` holds if any USB interface's class, subclass and
    protocol (``e00101``) begins with one of its prefixes (2, 4 or 6 hex
    digits), and ``not_interface_class`` if none does: USBGuard's
    ``with-interface one-of {…}`` and ``none-of {…}``. So "any Bluetooth
    adapter" is ``e00101`` (``e0`` alone also takes a phone tethering over
    RNDIS, ``e00103``), and "headsets, not webcams" is ``01`` but not ``0e``.
    ``port`` and ``port_below`` hold for the device's own port path or any the
    kernel pairs with it (the two halves of a USB 3 port, ``peer_ports``);
    ``port_below`` holds for the device in that port and everything behind it,
    at any depth (a hub, a KVM switch, a dock); hubs themselves only route, so
    it never matches a hub.
    """

    subsystem: str = ""
    vendor: str = ""
    product: str = ""
    serial: str = ""
    manufacturer: str = ""
    product_name: str = ""
    port: str = ""
    port_below: str = ""
    device_class: str = ""
    interface_class: tuple[str, ...] = ()
    not_interface_class: tuple[str, ...] = ()
    address: str = ""

    def matches(self, device: Device) -> bool:
        if self.subsystem and self.subsystem != device.subsystem:
            return False
        # Spelled out, not a loop over names: this runs for every rule and device
        # (policy matching is most of a reconcile's time).
        if ((self.vendor and self.vendor != device.vendor)
                or (self.product and self.product != device.product)
                or (self.serial and self.serial != device.serial)
                or (self.manufacturer and self.manufacturer != device.manufacturer)
                or (self.product_name and self.product_name != device.product_name)):
            return False
        usb = device.subsystem is Subsystem.USB
        ports = (device.port, *device.peer_ports) if usb else ()
        if self.port and self.port not in ports:
            return False
        if self.port_below and (device.is_hub or not any(
                is_below(port, self.port_below) for port in ports)):
            return False
        if self.address and (
            device.subsystem is not Subsystem.PCI or self.address != device.address
        ):
            return False
        if self.device_class and not device.device_class.startswith(self.device_class):
            return False
        if self.interface_class and not _any_interface(self.interface_class, device):
            return False
        return not (self.not_interface_class
                    and _any_interface(self.not_interface_class, device))


def _any_interface(prefixes: tuple[str, ...], device: Device) -> bool:
    """Whether one of ``device``'s interface triplets begins with one of ``prefixes``."""
    return any(c.startswith(prefixes) for c in device.interface_classes)


def is_below(port: str, top: str) -> bool:
    """Whether USB port ``port`` is ``top`` or behind it (``1-2.3.1`` is below ``1-2``)."""
    return port == top or port.startswith(top + ".")


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    name: str
    match: Match
    action: Action
    guest: str
    file: str
    line: int
    #: PCI risks this rule accepts by name (safety.verdict.OPT_IN); never "all".
    allow_risks: frozenset[str] = frozenset()
    #: An ``ask`` rule's candidate guests (names or UUIDs); empty: any running guest.
    candidates: tuple[str, ...] = ()
    #: None: the default for the device (detach USB devices, keep PCI functions).
    on_sleep: OnSleep | None = None
    #: Seconds to wait for a vanished device to return; None: ``[settings] debounce``.
    debounce: float | None = None
    #: USB: reset the device's port before each attach (Bluetooth adapters that
    #: come back broken from a guest or from sleep need it).
    reset_before_attach: bool = False

    def on_sleep_for(self, device: Device) -> OnSleep:
        """What this rule does with ``device`` when the host sleeps."""
        return self.on_sleep if self.on_sleep is not None else default_on_sleep(device)

    def targets(self, name: str, uuid: str) -> bool:
        """Whether this rule's guest designates the guest ``name``/``uuid``."""
        return self.guest == name or self.guest.lower() == uuid.lower()


def default_on_sleep(device: Device) -> OnSleep:
    """USB devices leave their guests for the host's sleep (they come back broken
    otherwise, Bluetooth above all); PCI functions stay, the guest sleeps with them."""
    return OnSleep.DETACH if device.subsystem is Subsystem.USB else OnSleep.KEEP


@dataclass(frozen=True, slots=True)
class Settings:
    """The policy's global settings (``[settings]``, in at most one file)."""

    unmatched: Unmatched = Unmatched.HOST
    ask_timeout: int = DEFAULT_ASK_TIMEOUT
    debounce: float = DEFAULT_DEBOUNCE


@dataclass(frozen=True, slots=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    files: tuple[str, ...] = ()
    settings: Settings = Settings()

    def match(self, device: Device) -> Rule | None:
        """The first rule that matches ``device``, in file then rule order."""
        for rule in self.rules:
            if rule.match.matches(device):
                return rule
        return None

    def debounce(self, device: Device) -> float:
        """Seconds to wait for ``device`` to return after it vanished."""
        rule = self.match(device)
        if rule is not None and rule.debounce is not None:
            return rule.debounce
        return self.settings.debounce
