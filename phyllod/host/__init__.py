"""Adapters over the machine: udev, libvirt, sysfs, systemd, the state and policy files.

Each turns one outside thing into core values (or core values into calls) and
decides nothing. They import the core only, never each other (safe_read is
the one shared helper: bounded, non-blocking reads of files we do not trust).
"""
