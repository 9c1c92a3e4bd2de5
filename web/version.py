"""The package version, from its metadata (web/ imports nothing of the app layer, `flashlive` itself)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("flashlive")
except PackageNotFoundError:  # run from a tree that was never installed
    VERSION = "0+unknown"
