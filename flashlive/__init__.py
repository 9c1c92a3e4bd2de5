"""FlashLive: ask questions about live video while it streams."""

__version__ = "0.1.0"
