"""The pure core: what phyllod decides, with no I/O.

Nothing here touches a file, a socket, the clock or the event loop, and
nothing imports asyncio, dbus-fast, libvirt, pyudev or systemd: every
function takes frozen values and returns frozen values, so the decisions are
tested as tables (tests/unit/core/). A test checks these import rules.
"""
