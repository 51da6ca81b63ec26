"""Policy, the model: rules that say which device goes to which guest, and matching.

The first matching rule wins (files in lexical order, rules in file order); a
device no rule matches stays on the host, or, with ``[settings] unmatched =
"ask"``, is asked about when it is plugged in. What a rule's words mean lives
here; turning TOML text into rules is :mod:`phyllod.core.policy_parser`'s job,
and reading the drop-in directory :mod:`phyllod.host.policy_files`'.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from operator import attrgetter

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
        if self.port or self.port_below:
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
    """Whether one of ``device``'s interface triplets begins with one of ``prefixes``.

    A loop, not ``any()`` over a generator, which costs more than the test itself.
    """
    for c in device.interface_classes:  # noqa: SIM110  (see above)
        if c.startswith(prefixes):
            return True
    return False


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


# ------------------------------------------------------------------ the rule index
# Every device is matched at every reconcile (each udev event, guest event, reload),
# and trying each rule in turn made matching most of a reconcile's time: 1,000
# devices under 200 rules that mostly miss are 200,000 tries. So each rule is filed
# under one condition its match gives (the most selective kind first: its serial,
# its vendor:product, its port...), and a device tries only the rules filed under its
# own values, plus the few rules that give none (only ``not_interface_class``).
#
# Why this finds what trying every rule finds: a rule is filed under keys that every
# device it matches looks up (each filing's device keys include the rule's key
# whenever the rule's condition holds), so no matching rule is left out; the rules
# looked up are tried with Match.matches itself, in rule order, and the lowest
# position that matches wins. A key is a necessary condition only, never the
# verdict, so a match word the index does not know is simply not filed under.

#: The keys a device looks up in a filing whose keys are many (its ports, the
#: prefixes of its interfaces), given the lengths of the keys filed there, ascending
#: (what a prefix filing cuts the device's values to).
_DeviceKeys = Callable[[Device, tuple[int, ...]], Iterable[Hashable]]


def _given(value: str) -> tuple[str, ...]:
    """A condition's one key; none when it is not given (an empty field holds always)."""
    return (value,) if value else ()


def _ports(device: Device, _lengths: tuple[int, ...]) -> tuple[str, ...]:
    """The device's port and its peers: ``port`` holds for one of them (USB only,
    which Match.matches checks)."""
    return (device.port, *device.peer_ports)


def _port_tops(device: Device, lengths: tuple[int, ...]) -> list[str]:
    """Every port a ``port_below`` rule the device is behind can name: each of its
    ports and the hub ports above them (``1-2.3.1``, ``1-2.3``, ``1-2``), cut to the
    longest the rules name, so a hostile port string costs no more than the policy's."""
    most = lengths[-1]
    tops = []
    for port in (device.port, *device.peer_ports):
        dot = port.find(".", 0, most + 1)
        while dot != -1:
            tops.append(port[:dot])
            dot = port.find(".", dot + 1, most + 1)
        if len(port) <= most:
            tops.append(port)
    return tops


def _interface_prefixes(device: Device, lengths: tuple[int, ...]) -> set[str]:
    """The prefixes of the device's interface triplets an ``interface_class`` rule can give."""
    return {c[:n] for c in device.interface_classes for n in lengths if n <= len(c)}


def _class_prefixes(device: Device, lengths: tuple[int, ...]) -> set[str]:
    """The prefixes of the device class a ``class`` rule can give."""
    dc = device.device_class
    return {dc[:n] for n in lengths if n <= len(dc)}


@dataclass(frozen=True, slots=True)
class _Kind:
    """One kind of condition a rule can be filed under: the rule's keys, and the
    device's one key (``key``, read in C by an attrgetter) or its many (``keys``)."""

    rule_keys: Callable[[Match], tuple[Hashable, ...]]
    key: Callable[[Device], Hashable] | None = None
    keys: _DeviceKeys | None = None


#: What a rule can be filed under, most selective first (a rule goes under the first
#: its match gives). A prefix key (``interface_class``, ``class``) is looked up by
#: cutting the device's value to each length filed, ``port_below`` by each port above
#: the device's; an interface list goes under each of its prefixes.
#: ``not_interface_class`` rules out, so it files nothing.
_KINDS = (
    _Kind(lambda m: _given(m.address), key=attrgetter("address")),
    _Kind(lambda m: _given(m.serial), key=attrgetter("serial")),
    _Kind(lambda m: ((m.vendor, m.product),) if m.vendor and m.product else (),
          key=attrgetter("vendor", "product")),
    _Kind(lambda m: _given(m.port), keys=_ports),
    _Kind(lambda m: _given(m.product_name), key=attrgetter("product_name")),
    _Kind(lambda m: _given(m.vendor), key=attrgetter("vendor")),
    _Kind(lambda m: _given(m.manufacturer), key=attrgetter("manufacturer")),
    _Kind(lambda m: _given(m.product), key=attrgetter("product")),
    _Kind(lambda m: _given(m.port_below), keys=_port_tops),
    _Kind(lambda m: m.interface_class, keys=_interface_prefixes),
    _Kind(lambda m: _given(m.device_class), keys=_class_prefixes),
    _Kind(lambda m: _given(m.subsystem), key=attrgetter("subsystem")),
)

#: Rule positions filed under each key, ascending.
_Buckets = Mapping[Hashable, tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class _RuleIndex:
    """Where a device's first matching rule can be among a policy's rules (see above)."""

    tries: tuple[Callable[[Device], bool], ...]
    by_key: tuple[tuple[Callable[[Device], Hashable], _Buckets], ...]
    by_keys: tuple[tuple[_DeviceKeys, _Buckets, tuple[int, ...]], ...]
    unfiled: tuple[int, ...]

    @classmethod
    def of(cls, rules: Sequence[Rule]) -> _RuleIndex:
        filed: list[dict[Hashable, list[int]]] = [{} for _ in _KINDS]
        unfiled: list[int] = []
        for position, rule in enumerate(rules):
            for kind, buckets in zip(_KINDS, filed, strict=True):
                keys = kind.rule_keys(rule.match)
                if keys:
                    for key in dict.fromkeys(keys):
                        buckets.setdefault(key, []).append(position)
                    break
            else:
                unfiled.append(position)
        by_key, by_keys = [], []
        for kind, buckets in zip(_KINDS, filed, strict=True):
            frozen = {k: tuple(v) for k, v in buckets.items()}
            if kind.key is not None and frozen:
                by_key.append((kind.key, frozen))
            elif kind.keys is not None and frozen:
                lengths = tuple(sorted({len(k) for k in frozen if isinstance(k, str)}))
                by_keys.append((kind.keys, frozen, lengths))
        return cls(tuple(rule.match.matches for rule in rules), tuple(by_key), tuple(by_keys),
                   tuple(unfiled))

    def first(self, device: Device) -> int | None:
        """The position of the first rule that matches ``device``; None if none does."""
        end = best = len(self.tries)
        # One-key filings first (a lookup each), then the many-key ones, then the rules
        # filed under nothing: each find cuts the later tries short.
        for key_of, buckets in self.by_key:
            positions = buckets.get(key_of(device))
            if positions is not None and positions[0] < best:
                best = self._first_of(positions, device, best)
        for keys_of, buckets, lengths in self.by_keys:
            for key in keys_of(device, lengths):
                positions = buckets.get(key)
                if positions is not None and positions[0] < best:
                    best = self._first_of(positions, device, best)
        if self.unfiled and self.unfiled[0] < best:
            best = self._first_of(self.unfiled, device, best)
        return best if best < end else None

    def _first_of(self, positions: tuple[int, ...], device: Device, best: int) -> int:
        """The first of ``positions`` before ``best`` whose rule matches, else ``best``."""
        for position in positions:
            if position >= best:
                break
            if self.tries[position](device):
                return position
        return best


@dataclass(frozen=True, slots=True)
class Policy:
    """The rules in force, in file then rule order, and the settings.

    The rule index is built with the policy, once per load: a policy is matched
    against every device at every turn, and built whole or not at all, so it is
    never half indexed and the index needs no check on each match.
    """

    rules: tuple[Rule, ...] = ()
    files: tuple[str, ...] = ()
    settings: Settings = Settings()
    _index: _RuleIndex = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", _RuleIndex.of(self.rules))

    def match(self, device: Device) -> Rule | None:
        """The first rule that matches ``device``, in file then rule order."""
        position = self._index.first(device)
        return None if position is None else self.rules[position]

    def debounce(self, device: Device) -> float:
        """Seconds to wait for ``device`` to return after it vanished."""
        rule = self.match(device)
        if rule is not None and rule.debounce is not None:
            return rule.debounce
        return self.settings.debounce
