"""flannel in Python: a layer-3 network fabric for containers, wire-compatible with upstream Go flannel."""

__version__ = "0.1.0"
UPSTREAM_VERSION = "v0.28.9"
