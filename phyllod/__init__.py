"""phyllod: policy-driven USB and PCI passthrough for libvirt guests."""

__version__ = "0.1.0"
