"""Settings of ingest. Each default lives here and nowhere else; runtime classes take these objects.

- `IngestSettings`: the config file's `ingest` section: defaults for every stream, the encoder batch,
  thumbnails, reconnects, the WHIP listen address.
- `StreamSettings`: one `streams.NAME` entry; its source part is a `SourceOptions`, the typed options
  of a pulled source (what `AVSource` takes), so a misspelt option fails at `check-config`, with its line.
"""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

Policy = Literal["lower_fps", "skip", "wait"]
POLICIES: tuple[str, ...] = get_args(Policy)
# URL schemes PyAV reads for us (a plain path is a file); `whip` streams are configured with `whip: true`
SOURCE_SCHEMES = frozenset({"file", "rtsp", "rtsps", "http", "https", "rtmp", "rtmps", "srt", "udp", "rtp"})


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class Credentials(_Settings):
    user: str | None = Field(
        default=None, title="User name", description="Put into the source URL, never logged"
    )
    password: SecretStr | None = Field(default=None, title="Password", description="Use ${ENV}; never logged")


class SourceOptions(_Settings):
    """How to open a pulled source (RTSP, HTTP(S), HLS, files): `sources.source_from_options`."""

    transport: Literal["tcp", "udp"] = Field(default="tcp", title="RTSP transport")
    credentials: Credentials | None = Field(default=None, title="Source credentials")
    realtime: bool = Field(
        default=True,
        title="Real-time pacing (files)",
        description="False: backfill a file as fast as possible",
    )
    loop: bool = Field(
        default=False, title="Loop a file", description="Start again at the end (demo sources)"
    )
    open_timeout_s: float = Field(
        default=10.0, gt=0, le=3600, allow_inf_nan=False, title="Connect timeout (s)"
    )
    read_timeout_s: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        title="Read timeout (s)",
        description="No packet this long: reconnect",
    )


class StreamSettings(SourceOptions):
    """One stream: exactly one of `url` (pulled) or `whip: true` (pushed to us)."""

    url: str | None = Field(
        default=None,
        title="Source URL",
        description="rtsp://, rtsps://, http(s)://, an HLS .m3u8, or a file path",
    )
    whip: bool = Field(
        default=False, title="WHIP ingest", description="The stream is published to /whip/NAME"
    )
    fps: float | None = Field(
        default=None,
        gt=0,
        le=30,
        allow_inf_nan=False,
        title="Sample rate",
        description="Frames kept per second (default: ingest.fps)",
    )
    policy: Policy | None = Field(
        default=None,
        title="Backpressure policy",
        description="When encoding falls behind (default: ingest.policy; `wait` for backfilled files)",
    )
    enabled: bool = Field(default=True, title="Enabled")

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if not v:
            raise ValueError("the URL is empty")
        scheme = v.split("://", 1)[0].lower() if "://" in v else "file"
        if scheme == "whip" or v.lower() == "whip":
            raise ValueError("a WHIP stream is configured with `whip: true`, not a URL")
        if scheme not in SOURCE_SCHEMES:
            raise ValueError(
                f"unsupported source URL scheme {scheme!r}: use rtsp://, rtsps://, http(s)://, a file path, "
                "or `whip: true`"
            )
        return v

    @model_validator(mode="after")
    def _one_source(self) -> StreamSettings:
        if self.whip and self.url:
            raise ValueError("give either `url` or `whip: true`, not both")
        if not self.whip and not self.url:
            raise ValueError("needs a source: `url: ...` (rtsp, http(s), HLS or a file) or `whip: true`")
        return self

    @property
    def source(self) -> SourceOptions:
        """The source part of this entry."""
        return SourceOptions.model_validate({k: getattr(self, k) for k in SourceOptions.model_fields})


class IngestSettings(_Settings):
    """Defaults for every stream, the encoder batch, and the reconnect schedule."""

    fps: float = Field(default=1.0, gt=0, le=30, allow_inf_nan=False, title="Default sample rate")
    policy: Policy = Field(default="lower_fps", title="Default backpressure policy")
    min_fps: float = Field(
        default=0.125, gt=0, le=30, allow_inf_nan=False, title="Lowest rate `lower_fps` may reach"
    )
    max_pending_clips: int = Field(default=4, ge=1, le=256, title="Clips a stream may queue for the encoder")
    max_side: int | None = Field(
        default=960,
        ge=16,
        title="Largest sampled frame side",
        description="Bigger frames are shrunk before encoding; empty: keep the size",
    )
    max_batch: int = Field(default=8, ge=1, le=256, title="Clips per encoder batch")
    thumbnail_width: int = Field(default=160, ge=16, le=1024, title="Thumbnail width (px)")
    backoff_initial_s: float = Field(
        default=0.5, gt=0, le=3600, allow_inf_nan=False, title="First reconnect delay (s)"
    )
    backoff_max_s: float = Field(
        default=10.0, gt=0, le=3600, allow_inf_nan=False, title="Longest reconnect delay (s)"
    )
    meta_interval_s: float = Field(
        default=2.0,
        gt=0,
        le=3600,
        allow_inf_nan=False,
        title="Status interval (s)",
        description="How often each stream's state and metrics are written to memory",
    )
    memory_wait_s: float = Field(
        default=120.0,
        gt=0,
        le=86400,
        allow_inf_nan=False,
        title="How long a backfill waits for Redis (s)",
        description="Redis unreachable or refusing (out of memory, cannot persist): a backfill pauses, "
        "dropping nothing, and fails after this long; also how long a stream waits for its write lease "
        "and for its final report",
    )
    lease_ttl_s: float = Field(
        default=10.0,
        ge=1,
        le=600,
        allow_inf_nan=False,
        title="Write lease (s)",
        description="One ingest writes a stream; a crashed one's lease lapses after this long",
    )
    stop_timeout_s: float = Field(
        default=1.0,
        gt=0,
        le=600,
        allow_inf_nan=False,
        title="Stop budget (s)",
        description="On Ctrl-C or SIGTERM, how long to spend storing the clips already cut",
    )
    whip_listen: str = Field(
        default="127.0.0.1:8090",
        pattern=r"^[^\s:]+:\d{1,5}$",
        title="WHIP listen address",
        description="HOST:PORT where `flashlive ingest` serves WHIP for `whip: true` streams (/whip/NAME)",
    )

    @model_validator(mode="after")
    def _backoff(self) -> IngestSettings:
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be at least backoff_initial_s")
        port = int(self.whip_listen.rpartition(":")[2])
        if not 1 <= port <= 65535:
            raise ValueError(f"whip_listen: the port must be 1-65535, not {port}")
        return self
