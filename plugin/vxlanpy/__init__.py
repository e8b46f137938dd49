"""vxlanpy: a Docker network plugin that builds a VXLAN device and a Linux bridge per network."""

__version__ = "0.1.0"
