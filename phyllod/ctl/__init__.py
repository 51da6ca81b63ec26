"""phyllodctl: the command line over phyllod's system-bus API (see contract.py)."""
