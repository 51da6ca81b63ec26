"""The daemon: a root that wires parts, one kind of state each (see root.py's list).

A part never imports a sibling: the root passes it callables or small
Protocols. journal.py (log fields) is the one helper all parts share;
fault_points.py holds the test seams, handed to the steps by the root.
"""
