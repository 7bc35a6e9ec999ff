"""autosched: auto-scheduling of TVM compute declarations."""

__version__ = "0.1.0"
WIRE_FORMAT_VERSION = 1
