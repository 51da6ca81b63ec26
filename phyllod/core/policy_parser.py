"""Policy, the parser: TOML text to rules, with every problem located.

Every mistake a person can make in a file (unknown key, bad hex id, duplicate
name, missing target, TOML syntax) is reported with the file, the line and the
rule, all at once, so a reload can be refused as a whole and the previous
policy kept. Pure: it takes a file's text and its name; reading the files is
:mod:`phyllod.host.policy_files`' job.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from phyllod.core.model import Subsystem
from phyllod.core.policy import Action, Match, OnSleep, Policy, Rule, Settings, Unmatched
from phyllod.core.policy_problems import Locator, PolicyError, Problem, shown
from phyllod.core.safety.verdict import OPT_IN

#: Seconds a rule's or the settings' ``debounce`` may be at most.
MAX_DEBOUNCE = 60.0
#: Characters a rule name or a guest name may have: names go into every device's
#: bus properties, the journal and explain; no real name comes close.
MAX_NAME = 200


_HEX4 = re.compile(r"^[0-9a-f]{4}$")
#: An interface class as USBGuard writes it: ``e0:01:01``, ``e0:01:*``, ``e0:*:*``.
_USBGUARD_CLASS = re.compile(r"^([0-9a-f]{2}):([0-9a-f]{2}|\*):([0-9a-f]{2}|\*)$")
_INTERFACE_KEYS = ("interface_class", "not_interface_class")
_CLASS = re.compile(r"^(?:[0-9a-f]{2}){1,3}$")
_PORT = re.compile(r"^[0-9]+-[0-9]+(?:\.[0-9]+)*$")
_PCI_ADDR = re.compile(r"^(?:([0-9a-f]{4,8}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")

_RULE_KEYS = {"name", "match", "guest", "action", "allow_risks", "on_sleep", "debounce",
              "reset_before_attach"}
#: The PCI risks a rule may accept, one by one (safety.verdict.OPT_IN says why only these).
OPT_IN_RISKS = tuple(sorted(OPT_IN))
_MATCH_KEYS = {f.name for f in fields(Match)} | {"class"}
_MATCH_KEYS.discard("device_class")


def _normalize_pci_address(value: str) -> str | None:
    m = _PCI_ADDR.match(value)
    if not m:
        return None
    domain, bus, slot, fn = m.groups()
    return f"{domain or '0000'}:{bus}:{slot}.{fn}"


def _parse_match(
    raw: Any, file: str, loc: Locator, index: int, rule: str
) -> tuple[Match | None, list[Problem]]:
    problems: list[Problem] = []

    def bad(key: str, message: str) -> None:
        problems.append(Problem(file, loc.key_line(index, key), message, rule))

    if not isinstance(raw, dict) or not raw:
        bad("match", "'match' must be a non-empty table, e.g. match = { vendor = \"1050\" }")
        return None, problems
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _MATCH_KEYS:
            known = ", ".join(sorted(_MATCH_KEYS))
            bad(key, f"unknown match key '{key}' (known: {known})")
            continue
        if key in _INTERFACE_KEYS:
            prefixes, message = _interface_prefixes(key, value)
            if message:
                bad(key, message)
            else:
                values[key] = prefixes
            continue
        if not isinstance(value, str):
            bad(key, f"match key '{key}' must be a string, not {type(value).__name__}")
            continue
        text = value.strip()
        low = text.lower().removeprefix("0x")
        if key == "subsystem":
            if low not in {s.value for s in Subsystem}:
                bad(key, f"subsystem must be 'usb' or 'pci', not {value!r}")
                continue
            text = low
        elif key in ("vendor", "product"):
            if not _HEX4.match(low):
                bad(key, f"{key} must be 4 hex digits (e.g. \"1050\"), not {value!r}")
                continue
            text = low
        elif key == "class":
            if not _CLASS.match(low):
                bad(key, f"class must be 2, 4 or 6 hex digits (e.g. \"0280\"), not {value!r}")
                continue
            key, text = "device_class", low
        elif key in ("port", "port_below"):
            if not _PORT.match(text):
                bad(key, f"{key} must be a USB port path like \"1-2\" or \"1-2.3\", "
                         f"not {value!r}")
                continue
        elif key == "address":
            normalized = _normalize_pci_address(low)
            if normalized is None:
                bad(key, f"address must be a PCI address like \"0000:03:00.0\", not {value!r}")
                continue
            text = normalized
        elif not text:
            bad(key, f"match key '{key}' must not be empty")
            continue
        values[key] = text
    if problems:
        return None, problems
    match = Match(**values)
    usb_only = (match.port or match.port_below or match.interface_class
                or match.not_interface_class)
    if match.subsystem == Subsystem.PCI and usb_only:
        bad("subsystem", "'port', 'port_below', 'interface_class' and 'not_interface_class' "
                         "only apply to USB devices")
    if match.subsystem == Subsystem.USB and match.address:
        bad("subsystem", "'address' only applies to PCI devices (USB uses 'port')")
    if match.address and usb_only:
        bad("address", "a rule cannot match both a PCI address and USB-only keys")
    return (None if problems else match), problems


def _interface_prefixes(key: str, value: Any) -> tuple[tuple[str, ...], str]:
    """An interface class key's prefixes, or the message saying what is wrong.

    One class or a list of them (any one may match); each is 2, 4 or 6 hex
    digits (class, subclass, protocol: ``e00101``), or USBGuard's
    ``e0:01:01`` with ``*`` for the parts that may be anything.
    """
    example = f'{key} must be 2, 4 or 6 hex digits (class, subclass, protocol: "e00101") ' \
              'or a list of them'
    items = value if isinstance(value, list) else [value]
    if not items or len(items) > 64 or not all(isinstance(v, str) for v in items):
        return (), f"{example}, not {shown(value)}"
    prefixes: list[str] = []
    for item in items:
        low = item.strip().lower().removeprefix("0x")
        usbguard = _USBGUARD_CLASS.match(low)
        if usbguard:
            parts = list(usbguard.groups())
            while parts[-1] == "*":
                parts.pop()
            low = "".join(parts)
        if not _CLASS.match(low):
            return (), f"{example}, not {shown(item)}"
        prefixes.append(low)
    return tuple(dict.fromkeys(prefixes)), ""


def _parse_rule(
    raw: Any, file: str, loc: Locator, index: int
) -> tuple[Rule | None, list[Problem]]:
    line = loc.rule_line(index)
    if not isinstance(raw, dict):
        return None, [Problem(file, line, "each [[rule]] must be a table")]
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        return None, [Problem(file, line, f"rule #{index + 1} needs a 'name' (a non-empty string)")]
    name = name.strip()
    if len(name) > MAX_NAME or not name.isprintable():
        return None, [Problem(file, line, f"rule #{index + 1}: a name must be one line of "
                              f"printable text of at most {MAX_NAME} characters, not "
                              f"{shown(name)}")]
    problems: list[Problem] = []

    def bad(key: str, message: str) -> None:
        problems.append(Problem(file, loc.key_line(index, key), message, name))

    for key in raw:
        if key not in _RULE_KEYS:
            bad(key, f"unknown key {shown(key)} (known: {', '.join(sorted(_RULE_KEYS))})")
    match, match_problems = _parse_match(raw.get("match"), file, loc, index, name)
    problems += match_problems
    action_raw = raw.get("action", Action.ATTACH.value)
    try:
        action = Action(action_raw)
    except (ValueError, TypeError):
        allowed = ", ".join(a.value for a in Action)
        bad("action", f"action must be one of {allowed}, not {shown(action_raw)}")
        action = None
    guest = raw.get("guest", "")
    candidates: tuple[str, ...] = ()
    if action is Action.ASK and isinstance(guest, list):
        if not all(isinstance(g, str) and g.strip() for g in guest):
            bad("guest", "an 'ask' rule's 'guest' must be a list of guest names or UUIDs")
        else:
            candidates = tuple(dict.fromkeys(g.strip() for g in guest))
        guest = ""
    elif not isinstance(guest, str):
        hint = " (a list is only for 'ask' rules)" if isinstance(guest, list) else ""
        bad("guest", f"'guest' must be a guest name or UUID (a string){hint}")
        guest = ""
    guest = guest.strip()
    if action is Action.ASK and guest:
        candidates, guest = (guest,), ""
    for named in (guest, *candidates):
        if len(named) > MAX_NAME or not named.isprintable():
            bad("guest", f"a guest name must be one line of printable text of at most "
                         f"{MAX_NAME} characters, not {shown(named)}")
    if action is Action.ATTACH and not guest:
        bad("action", "an 'attach' rule needs a target: guest = \"NAME\" or a UUID")
    if action in (Action.IGNORE, Action.DENY) and guest:
        bad("guest", f"a '{action}' rule applies to every guest; remove 'guest'")
    risks = raw.get("allow_risks", [])
    if not isinstance(risks, list) or not all(isinstance(r, str) for r in risks):
        bad("allow_risks", "'allow_risks' must be a list of risk names")
        risks = []
    for risk in risks:
        if risk not in OPT_IN_RISKS:
            bad("allow_risks", f"{shown(risk)} cannot be allowed (a rule may accept only: "
                               f"{', '.join(OPT_IN_RISKS)}; other risks always block)")
    if risks and action is not Action.ATTACH:
        bad("allow_risks", "'allow_risks' only applies to 'attach' rules")
    on_sleep_raw = raw.get("on_sleep")
    on_sleep = None
    if on_sleep_raw is not None:
        try:
            on_sleep = OnSleep(on_sleep_raw)
        except (ValueError, TypeError):
            bad("on_sleep", f"on_sleep must be 'detach' or 'keep', not {shown(on_sleep_raw)}")
    debounce = raw.get("debounce")
    if debounce is not None and not _seconds(debounce, MAX_DEBOUNCE):
        bad("debounce", f"debounce must be a number of seconds from 0 to {MAX_DEBOUNCE:g}, "
                        f"not {shown(debounce)}")
        debounce = None
    reset = raw.get("reset_before_attach", False)
    if not isinstance(reset, bool):
        bad("reset_before_attach",
            f"reset_before_attach must be true or false, not {shown(reset)}")
    elif reset and match is not None and (match.subsystem == Subsystem.PCI or match.address):
        bad("reset_before_attach", "reset_before_attach is for USB devices (libvirt resets "
                                   "PCI functions itself)")
    if problems or match is None or action is None:
        return None, problems
    return Rule(name=name, match=match, action=action, guest=guest, file=file, line=line,
                allow_risks=frozenset(risks), candidates=candidates, on_sleep=on_sleep,
                debounce=None if debounce is None else float(debounce),
                reset_before_attach=reset), []


def _seconds(value: Any, most: float) -> bool:
    """A number of seconds from 0 to ``most`` (TOML int or float, not a bool)."""
    return (not isinstance(value, bool) and isinstance(value, int | float)
            and 0 <= value <= most)


_SETTINGS_KEYS = {"unmatched", "ask_timeout", "debounce"}


def _parse_settings(raw: Any, file: str, loc: Locator) -> tuple[dict[str, Any], list[Problem]]:
    """The keys of one file's ``[settings]`` table, checked."""
    problems: list[Problem] = []

    def bad(key: str, message: str) -> None:
        problems.append(Problem(file, loc.top_key_line(key) or loc.top_key_line("settings"),
                                message))

    if not isinstance(raw, dict):
        bad("settings", "'settings' must be a table: [settings]")
        return {}, problems
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _SETTINGS_KEYS:
            bad(key, f"unknown setting {shown(key)} "
                     f"(known: {', '.join(sorted(_SETTINGS_KEYS))})")
        elif key == "unmatched":
            try:
                values[key] = Unmatched(value)
            except (ValueError, TypeError):
                bad(key, f"unmatched must be 'host' or 'ask', not {shown(value)}")
        elif key == "debounce":
            if _seconds(value, MAX_DEBOUNCE):
                values[key] = float(value)
            else:
                bad(key, f"debounce must be a number of seconds from 0 to {MAX_DEBOUNCE:g}, "
                         f"not {shown(value)}")
        elif isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 3600:
            bad(key, f"ask_timeout must be a whole number of seconds from 1 to 3600, "
                     f"not {shown(value)}")
        else:
            values[key] = value
    return values, problems


@dataclass(frozen=True, slots=True)
class FileContent:
    """What one policy file says: its rules and its ``[settings]`` keys, if any."""

    rules: tuple[Rule, ...]
    settings: Mapping[str, Any]
    settings_line: int = 0


def parse_policy_text(text: str, file: str) -> tuple[FileContent, list[Problem]]:
    """Parse one file's text; returns what it says and the problems found."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        line = int(m.group(1)) if m else 0
        return FileContent((), {}), [Problem(file, line, f"TOML syntax error: {e}")]
    # tomllib lets these two out as they are: it recurses once per nested array or
    # inline table, and int() refuses a number of more than 4300 digits.
    except RecursionError:
        return FileContent((), {}), [Problem(file, 0, "TOML arrays or tables nested too deeply")]
    except ValueError:
        return FileContent((), {}), [Problem(file, 0, "a number too long to read "
                                             f"(more than {sys.get_int_max_str_digits()} digits)")]
    loc = Locator(text)
    problems: list[Problem] = []
    for key in data:
        if key not in ("rule", "settings"):
            problems.append(
                Problem(file, loc.top_key_line(key), f"unknown top-level key {shown(key)} "
                        "(a policy file holds [[rule]] tables and one [settings] table)")
            )
    settings: dict[str, Any] = {}
    if "settings" in data:
        settings, settings_problems = _parse_settings(data["settings"], file, loc)
        problems += settings_problems
    raw_rules = data.get("rule", [])
    if not isinstance(raw_rules, list):
        problems.append(Problem(file, loc.top_key_line("rule"), "'rule' must be [[rule]] tables"))
        raw_rules = []
    rules: list[Rule] = []
    for index, raw in enumerate(raw_rules):
        rule, rule_problems = _parse_rule(raw, file, loc, index)
        problems += rule_problems
        if rule is not None:
            rules.append(rule)
    # Whether the file has a [settings] table is tomllib's to say (the name may be
    # quoted); the locator only finds its line.
    settings_line = max(loc.top_key_line("settings"), 1) if "settings" in data else 0
    return FileContent(tuple(rules), settings, settings_line), problems


class PolicyBuilder:
    """A policy put together from its files, one at a time in the order they apply.

    Each file is parsed on its own; what only the files together can get wrong
    (a rule name used twice, ``[settings]`` in two files) is checked as each is
    added, so the problems come in file order. :meth:`policy` refuses the whole
    policy if any file had a problem, one that could not be read included.
    """

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.problems: list[Problem] = []
        self.files: list[str] = []
        self.named: dict[str, Rule] = {}
        self.settings: dict[str, Any] = {}
        self.settings_at = ""

    def refuse(self, file: str, problem: Problem) -> None:
        """A file that could not be read: the policy is refused, never used without it."""
        self.files.append(file)
        self.problems.append(problem)

    def add(self, file: str, text: str) -> None:
        """Parse one file's text and add its rules and settings."""
        self.files.append(file)
        content, file_problems = parse_policy_text(text, file)
        self.problems += file_problems
        if content.settings_line:
            if self.settings_at:
                # Two files setting the same global would make the result depend
                # on file names nobody reads together: refuse, name both.
                self.problems.append(Problem(file, content.settings_line, "[settings] may "
                                             f"appear in only one file (already in "
                                             f"{self.settings_at})"))
            else:
                self.settings_at = f"{file}:{content.settings_line}"
                self.settings.update(content.settings)
        for rule in content.rules:
            first = self.named.get(rule.name)
            if first is not None:
                self.problems.append(Problem(file, rule.line, "duplicate rule name (first "
                                             f"defined at {first.file}:{first.line})",
                                             rule.name))
                continue
            self.named[rule.name] = rule
            self.rules.append(rule)

    def policy(self) -> Policy:
        """The policy the files make; raises PolicyError listing every problem."""
        if self.problems:
            raise PolicyError(self.problems)
        return Policy(tuple(self.rules), tuple(self.files), Settings(**self.settings))
