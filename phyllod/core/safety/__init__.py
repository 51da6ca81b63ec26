"""Risk verdicts: what may move to a guest, and why not (PCI groups, USB devices the host needs)."""
