"""Settings of the memory: where Redis is (`RedisSettings`) and how long clips stay (`Retention`).

`MemorySettings` is the config file's `memory` section, made of both:

    memory:
      redis: {url: "${FLASHLIVE_REDIS_URL:-}", data_dir: null, prefix: fl}
      retention: {seconds: 86400, max_bytes: null}

Every process (ingest, workers, web, each `flashlive` command), the tests and the benchmarks reach Redis
through one `RedisSettings`, built from a URL (`RedisSettings.from_dsn`, as arq does), the config, the
environment ($FLASHLIVE_REDIS_URL) or `--redis` (`resolve` applies the last two in that order). No URL
means the embedded server (`flashlive.memory.server`) on `data_dir`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from flashlive.memory.keys import DEFAULT_PREFIX

REDIS_URL_ENV = "FLASHLIVE_REDIS_URL"
DATA_DIR_ENV = "FLASHLIVE_DATA_DIR"
REDIS_SCHEMES = ("redis", "rediss", "unix")


def default_data_dir(env: Mapping[str, str] | None = None) -> Path:
    """$FLASHLIVE_DATA_DIR/redis, else $XDG_DATA_HOME/flashlive/redis (~/.local/share/...)."""
    env = os.environ if env is None else env
    base = env.get(DATA_DIR_ENV)
    if base:
        return Path(base) / "redis"
    xdg = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "flashlive" / "redis"


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class RedisSettings(_Settings):
    """How to reach the memory's Redis. Frozen: derive variants with `resolve` or `model_copy`."""

    url: str | None = Field(
        default=None,
        title="Redis URL",
        description="redis://host:port/db, rediss://… or unix:///path; empty: the embedded server",
    )
    data_dir: str | None = Field(
        default=None,
        title="Embedded Redis data directory",
        description=f"Without a URL; empty: ${DATA_DIR_ENV}/redis, else ~/.local/share/flashlive/redis",
    )
    prefix: str = Field(
        default=DEFAULT_PREFIX,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$",
        title="Key prefix",
        description="Every key starts with it (several deployments can share one Redis)",
    )
    connect_timeout_s: float = Field(default=2.0, gt=0, allow_inf_nan=False, title="Connect timeout (s)")
    socket_timeout_s: float = Field(
        default=10.0,
        gt=0,
        allow_inf_nan=False,
        title="Reply timeout (s)",
        description="A reply slower than this counts as a lost connection (appends are then buffered)",
    )

    @field_validator("url", "data_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            parts = urlsplit(v)
        except ValueError as exc:
            raise ValueError(f"not a URL: {exc}") from None
        if parts.scheme not in REDIS_SCHEMES:
            raise ValueError(
                f"a Redis URL starts with redis://, rediss:// or unix://, not {v.split(':', 1)[0]!r}"
            )
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("the Redis URL has no host (redis://HOST:PORT/DB)")
        return v

    @classmethod
    def from_dsn(cls, dsn: str, **fields: Any) -> RedisSettings:
        """Settings for the Redis at `dsn` (a URL); other fields as keywords."""
        return cls(url=dsn, **fields)

    def resolve(
        self, url: str | None = None, *, data_dir: str | None = None, env: Mapping[str, str] | None = None
    ) -> RedisSettings:
        """These settings (the config's) with the command line and environment applied.

        The URL is `url` (--redis), else $FLASHLIVE_REDIS_URL, else this object's, else none (embedded);
        `data_dir` (--data-dir) replaces the configured directory. Raises pydantic's ValidationError
        for a URL that is not a Redis URL.
        """
        env = os.environ if env is None else env
        update: dict[str, Any] = {"url": url or env.get(REDIS_URL_ENV) or self.url}
        if data_dir:
            update["data_dir"] = data_dir
        return type(self).model_validate({**self.model_dump(), **update})

    @property
    def embedded(self) -> bool:
        """No URL: commands attach to (or start) the embedded server on `data_path`."""
        return self.url is None

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir) if self.data_dir else default_data_dir()

    def where(self) -> str:
        """For messages: the URL, or which embedded server."""
        return self.url or f"the embedded server in {self.data_path}"


class Retention(_Settings):
    """Per-stream retention, enforced atomically on every append (docs/memory.md). Empty: no limit.

    `seconds`: keep clips that start at or after (newest clip's start - seconds), on the stream timeline.
    `max_bytes`: token + thumbnail bytes per stream; the oldest clips go first, the newest always stays.
    The default keeps everything: limits are a choice made in the config.
    """

    seconds: float | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        title="Keep clips this long (s)",
        description="Empty: forever",
    )
    max_bytes: int | None = Field(
        default=None, gt=0, title="Byte budget per stream", description="Empty: no limit"
    )

    @property
    def script_args(self) -> tuple[int, int]:
        """(milliseconds, bytes) for the append script, 0 for a limit that is off."""
        return (round(self.seconds * 1000) if self.seconds else 0, self.max_bytes or 0)


class MemorySettings(_Settings):
    """The config file's `memory` section."""

    redis: RedisSettings = Field(default_factory=RedisSettings, title="Redis")
    retention: Retention = Field(default_factory=Retention, title="Retention per stream")
    buffer_clips: int = Field(
        default=512,
        ge=1,
        le=100_000,
        title="Clips held while Redis is away",
        description="Live streams, per process (~130 KB a clip): the oldest is dropped, and counted, "
        "when it is full; backfills wait instead",
    )
