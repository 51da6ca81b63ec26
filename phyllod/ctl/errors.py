"""phyllodctl's exit codes and the one mapping from D-Bus error names to them.

Kept apart from the D-Bus code (and free of dbus-fast) so the mapping a script
relies on is pure and tested on its own.
"""

from __future__ import annotations

from enum import IntEnum

from phyllod.contract import (
    ACCESS_DENIED,
    BUS_NAME,
    DBUS_ERROR_PREFIX,
    DISCONNECTED,
    INTERACTIVE_AUTHORIZATION_REQUIRED,
    NAME_HAS_NO_OWNER,
    NO_SERVER,
    NO_SUCH_DEVICE,
    NO_SUCH_GUEST,
    NO_SUCH_REQUEST,
    NOT_AUTHORIZED,
    SERVICE_UNKNOWN,
)


class ExitCode(IntEnum):
    """What ``phyllodctl`` exits with; scripts branch on these, so they never change."""

    OK = 0
    FAILED = 1  # the daemon refused or could not do it (Failed, Denied, Busy, anything else)
    USAGE = 2  # argparse's own code for a bad command line
    NOT_FOUND = 3  # no such device or guest
    NOT_AUTHORIZED = 4  # polkit or the bus policy said no
    UNREACHABLE = 5  # phyllod is not running, or the bus cannot be reached


EXIT_CODES_HELP = """\
exit status:
  0  success
  1  the operation failed (refused by policy, busy, libvirt error, ...)
  2  usage error
  3  no such device, guest or request
  4  not authorized
  5  phyllod is not running, or the bus cannot be reached"""

_BY_NAME: dict[str, ExitCode] = {
    NO_SUCH_DEVICE: ExitCode.NOT_FOUND,
    NO_SUCH_GUEST: ExitCode.NOT_FOUND,
    NO_SUCH_REQUEST: ExitCode.NOT_FOUND,
    NOT_AUTHORIZED: ExitCode.NOT_AUTHORIZED,
    ACCESS_DENIED: ExitCode.NOT_AUTHORIZED,
    INTERACTIVE_AUTHORIZATION_REQUIRED: ExitCode.NOT_AUTHORIZED,
    SERVICE_UNKNOWN: ExitCode.UNREACHABLE,
    NAME_HAS_NO_OWNER: ExitCode.UNREACHABLE,
    DISCONNECTED: ExitCode.UNREACHABLE,
    NO_SERVER: ExitCode.UNREACHABLE,
}


def exit_code_for(error_name: str) -> ExitCode:
    """The exit code for a D-Bus error reply; unknown names are plain failures."""
    return _BY_NAME.get(error_name, ExitCode.FAILED)


class CtlError(Exception):
    """An outcome that ends the command: ``phyllodctl: <message>`` and ``code``."""

    def __init__(self, code: ExitCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_from_dbus(error_name: str, text: str) -> CtlError:
    """Turn an error reply into what the user sees.

    The bus's own text for a missing service talks about .service files, which
    does not tell an admin that the daemon is down; phyllod's texts are meant for
    people and are shown as they are.
    """
    code = exit_code_for(error_name)
    if error_name in (SERVICE_UNKNOWN, NAME_HAS_NO_OWNER):
        return CtlError(code, f"phyllod is not running (nobody owns {BUS_NAME} on this bus)")
    if code is ExitCode.UNREACHABLE:
        return CtlError(code, f"cannot reach phyllod: {text or error_name}")
    if error_name.startswith(DBUS_ERROR_PREFIX) and code is ExitCode.NOT_AUTHORIZED:
        return CtlError(code, f"not authorized: {text or error_name}")
    return CtlError(code, text or error_name)
