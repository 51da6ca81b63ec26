"""``phyllod``: run the daemon, or check policy files offline."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from phyllod import __version__
from phyllod.core.model import Device
from phyllod.core.policy import Policy
from phyllod.core.policy_problems import PolicyError
from phyllod.core.serial_trust import with_identities
from phyllod.host.policy_files import DEFAULT_POLICY_DIR, load_policy, policy_files
from phyllod.host.systemd_glue import setup_logging
from phyllod.host.textfile import NODE_EXPORTER_DIR, default_path
from phyllod.service.root import Config, run_daemon


def _state_dir() -> Path:
    """systemd's StateDirectory= sets $STATE_DIRECTORY (colon-separated if several)."""
    from_systemd = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(from_systemd or "/var/lib/phyllod")


def _options(suppress: bool) -> argparse.ArgumentParser:
    """Options valid before and after the subcommand (``phyllod check-policy --policy-dir``)."""
    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--policy-dir", type=Path, default=default(
        Path(os.environ.get("PHYLLOD_POLICY_DIR", DEFAULT_POLICY_DIR))),
        help=f"drop-in directory of *.toml policy files (default: {DEFAULT_POLICY_DIR})")
    p.add_argument("--connect", default=default(
        os.environ.get("PHYLLOD_LIBVIRT_URI", "qemu:///system")),
        help="libvirt URI (default: qemu:///system)")
    p.add_argument("--bus", default=default(os.environ.get("PHYLLOD_BUS", "system")),
                   help="system (default), session, a D-Bus address (unix:path=…), or none")
    p.add_argument("--state-dir", type=Path, default=default(_state_dir()),
                   help="where manual overrides are kept (default: $STATE_DIRECTORY, "
                        "else /var/lib/phyllod)")
    p.add_argument("--metrics-file", default=default(
        os.environ.get("PHYLLOD_METRICS_FILE", "auto")), metavar="auto|none|FILE",
        help=f"node_exporter textfile (*.prom) for the metrics; auto (default): "
             f"{NODE_EXPORTER_DIR}/phyllod.prom if that directory exists, else none")
    p.add_argument("--log-level", default=default("INFO"))
    p.add_argument("--log-target", choices=("auto", "stderr"), default=default("auto"),
                   help="auto: the journal when journald runs, else stderr")
    return p


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="phyllod", parents=[_options(False)], description=(
        "Pass USB devices to libvirt guests by policy (see phyllod.policy(5))."))
    p.add_argument("--version", action="version", version=f"phyllod {__version__}")
    sub = p.add_subparsers(dest="command")
    sub.add_parser("run", parents=[_options(True)], help="run the daemon (the default)")
    check = sub.add_parser("check-policy", parents=[_options(True)], help=(
        "validate policy files offline and show what each rule matches among the devices "
        "present"))
    check.add_argument("files", nargs="*", type=Path,
                       help="files to check (default: the policy directory)")
    return p


def _present_devices() -> list[Device]:
    from phyllod.host.udev_source import present_devices

    try:
        return present_devices()
    except Exception as e:  # no udev here (a build chroot): still check the syntax
        print(f"(cannot list devices: {e})", file=sys.stderr)
        return []


def _doubt(d: Device) -> str:
    """A second line for a device whose serial is no identity (serial_trust)."""
    return f"\n        ({d.serial_doubt}; identified by its port)" if d.serial_doubt else ""


def check_policy(files: list[Path], policy_dir: Path) -> int:
    try:
        paths = files or policy_files(policy_dir)
        if not paths:
            print(f"no policy files in {policy_dir}: every device stays on the host")
            return 0
        policy: Policy = load_policy(paths)
    except PolicyError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        print(f"policy has {e.total} error(s)", file=sys.stderr)
        return 1
    print(f"policy OK: {len(policy.rules)} rules in {len(paths)} files")
    settings = policy.settings
    print(f"unmatched devices plugged in: {settings.unmatched}; "
          f"ask_timeout: {settings.ask_timeout}s")
    devices = list(with_identities({d.id: d for d in _present_devices()}).values())
    # Each device under its first matching rule, as the daemon finds it (Policy.match);
    # by the rule's identity, since two rules may be equal (a file given twice).
    claimed: dict[int, list[Device]] = {}
    rest: list[Device] = []
    for d in devices:
        first = policy.match(d)
        if first is None:
            rest.append(d)
        else:
            claimed.setdefault(id(first), []).append(d)
    for rule in policy.rules:
        target = f"{rule.action} to {rule.guest}" if rule.guest else str(rule.action)
        if rule.candidates:
            target = f"{rule.action}: {', '.join(rule.candidates)} or the host"
        print(f"{rule.file}:{rule.line}: rule '{rule.name}' ({target})")
        for d in claimed.get(id(rule), ()):
            print(f"    matches {d.describe()}{_doubt(d)}")
    if rest:
        fate = "asked about when plugged in" if settings.unmatched == "ask" \
            else "they stay on the host"
        print(f"no rule matches ({fate}):")
        for d in rest:
            print(f"    {d.describe()}{_doubt(d)}")
    return 0


def _metrics_file(value: str) -> Path | None:
    """``--metrics-file``: auto, none (or empty), or a path."""
    if value == "auto":
        return default_path()
    return Path(value) if value not in ("none", "") else None


#: Seconds a thread may hold the GIL while another waits (CPython's default: 0.005).
GIL_SWITCH_INTERVAL = 0.0005


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-policy":
        return check_policy(args.files, args.policy_dir)
    setup_logging(args.log_level, force_stderr=args.log_target == "stderr")
    # The libvirt worker thread needs the GIL for a moment before and after each
    # call, while the loop thread plans and publishes; by default it waits up to
    # 5 ms for a busy loop thread to let go, on the way to every attach.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    return asyncio.run(run_daemon(Config(policy_dir=args.policy_dir, uri=args.connect,
                                         bus=args.bus, state_dir=args.state_dir,
                                         metrics_file=_metrics_file(args.metrics_file))))


if __name__ == "__main__":
    sys.exit(main())
