"""Process-wide settings shared by every command."""

from __future__ import annotations

import os

REDIS_URL_ENV = "FLASHLIVE_REDIS_URL"


def redis_url_from_env(explicit: str | None = None) -> str | None:
    """The Redis URL to use: the --redis flag, else $FLASHLIVE_REDIS_URL, else None (embedded)."""
    return explicit or os.environ.get(REDIS_URL_ENV) or None
