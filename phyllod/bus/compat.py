"""Make every dbus-fast release read messages whose flags are combined.

dbus-fast before 2.x (Debian 12 ships 1.84) maps a message's flag byte through
a dict holding only 0, 1, 2 and 4, so a call flagged both NO_AUTO_START and
ALLOW_INTERACTIVE_AUTHORIZATION (6: what GDBus clients such as the applet
send) raises KeyError inside the message reader, which drops the whole
connection: phyllod would lose the bus and restart, at the word of any
unprivileged client. Filling in the missing combinations, in place, is what
newer releases do; the reader holds the same dict object, so this applies to it.
"""

from __future__ import annotations

from dbus_fast import constants
from dbus_fast.constants import MessageFlag

for _bits in range(8):
    constants.MESSAGE_FLAG_MAP.setdefault(_bits, MessageFlag(_bits))
