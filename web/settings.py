"""Settings of the web app: the config file's `web` section. Every default of web/ is defined here.

web:
  host: 127.0.0.1
  port: 8000
  token: "${FLASHLIVE_TOKEN:-}"      # bearer token for the API, WHIP and /ws; empty: open
  cors_origins: ["https://ops.example"]
  rate_limit: {per_s: 10, burst: 50}
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from flashlive.memory.messages import DEFAULT_DEADLINE_S, MAX_DEADLINE_S, MAX_QUESTION_CHARS


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class RateLimit(_Settings):
    """A token bucket per client (its address): `per_s` requests per second on average, bursts of
    `burst`. Applies to /api (but thumbnails), /v1, /whip and new /ws connections; 0 turns it off."""

    per_s: float = Field(default=20.0, ge=0, allow_inf_nan=False, title="Requests per second per client")
    burst: int = Field(default=60, ge=1, title="Burst size", description="Requests allowed at once")


class WebSettings(_Settings):
    host: str = Field(default="127.0.0.1", title="Listen address")
    port: int = Field(default=8000, ge=1, le=65535, title="Listen port")
    token: SecretStr | None = Field(
        default=None,
        title="Bearer token",
        description="Required on the API, /v1, WHIP, /ws and /metrics when set (use ${ENV}); empty: open",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        title="CORS origins",
        description='Origins allowed to call the API from a browser ("*" for any); empty: same origin only',
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024, title="Largest request body (bytes)")
    max_question_chars: int = Field(
        default=4000, ge=1, le=MAX_QUESTION_CHARS, title="Longest question (characters)"
    )
    max_ws_message_bytes: int = Field(default=64 * 1024, ge=1024, title="Largest WebSocket message (bytes)")
    rate_limit: RateLimit = Field(default_factory=RateLimit, title="Rate limit per client")
    trust_proxy: bool = Field(
        default=False,
        title="Trust X-Forwarded-For",
        description="Behind a reverse proxy: take the client address from X-Forwarded-For",
    )
    job_timeout_s: float = Field(
        default=DEFAULT_DEADLINE_S,
        gt=0,
        le=MAX_DEADLINE_S,
        title="Answer deadline (s)",
        description="A question nobody answered within this is given up (deadline_exceeded)",
    )
    max_replay_frames: int = Field(default=3600, ge=1, le=100_000, title="Most thumbnails in one replay")
    whip_upstream: str | None = Field(
        default=None,
        title="WHIP upstream",
        description="URL of the ingest service that serves WHIP (docker-compose: http://ingest:8090); "
        "/whip/* is proxied there. Empty: WHIP is served in-process (flashlive serve) or not at all",
    )
    allow_file_sources: bool = Field(
        default=False,
        title="Allow file paths in POST /api/streams",
        description="Off: only rtsp(s):// and http(s):// URLs may be registered through the API",
    )

    @field_validator("token", "whip_upstream", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("whip_upstream")
    @classmethod
    def _upstream_is_http(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v

    @property
    def token_value(self) -> str | None:
        return self.token.get_secret_value() if self.token else None
