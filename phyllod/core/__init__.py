"""The pure core: what phyllod decides, with no I/O.

Nothing here touches a file, a socket, the clock or the event loop, and
nothing imports asyncio, dbus-fast, libvirt, pyudev or systemd: every
function takes frozen values and returns frozen values, so the decisions are
tested as tables (tests/unit/core/). A test checks these import rules.

- model: devices, guests, assignments; errors: what a caller can get;
  bounds: hostile strings made short and safe to show
- policy (rules and matching), policy_parser (TOML text to rules),
  policy_problems (located, bounded problems)
- decide: THE precedence ladder (deny > override > answer > remembered > rule)
- plan (World in, Plan of steps out), reconcile (the hub), planner (one
  device at a time), holdings (who holds what), guest_runs (one run of a guest)
- safety/: verdict (the shared vocabulary), pci, usb
- hostdev_xml, explain, serial_trust, device_text, kernel_values
"""
