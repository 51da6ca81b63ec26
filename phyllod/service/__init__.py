"""The daemon: a root that wires the core, the host adapters and the bus together."""
