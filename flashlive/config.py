"""The project's YAML config file: one file for streams, model, memory, workers and the web server.

    streams:
      lobby:
        url: rtsp://10.0.0.7/stream1
        credentials: {user: viewer, password: "${LOBBY_PASSWORD}"}
        transport: tcp
      phone:
        whip: true            # published by a browser or OBS through WHIP
      archive:
        url: /videos/monday.mp4
        realtime: false       # backfill as fast as the encoder goes
    model: {name: tiny, device: cpu}
    memory: {redis_url: "${FLASHLIVE_REDIS_URL}", retention_s: 86400}

`${NAME}` is replaced by the environment variable NAME (`${NAME:-default}` gives a default, `$${` is a
literal `${`), after YAML parsing, so secrets stay out of the file and never change its structure.
Every error names the line it came from: `lobby.yaml:4: streams.lobby.fps: ...`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from flashlive.memory.keys import STREAM_NAME

Path_ = tuple[str | int, ...]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class Credentials(_Section):
    user: str | None = Field(
        default=None, title="User name", description="Put into the source URL, never logged"
    )
    password: SecretStr | None = Field(default=None, title="Password", description="Use ${ENV}; never logged")


class StreamConfig(_Section):
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
        title="Sample rate",
        description="Frames kept per second (default: ingest.fps)",
    )
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
    policy: Literal["lower_fps", "skip", "wait"] | None = Field(
        default=None,
        title="Backpressure policy",
        description="When encoding falls behind (default: ingest.policy)",
    )
    open_timeout_s: float = Field(default=10.0, gt=0, title="Connect timeout (s)")
    read_timeout_s: float = Field(
        default=5.0, gt=0, title="Read timeout (s)", description="No packet this long: reconnect"
    )
    enabled: bool = Field(default=True, title="Enabled")

    @model_validator(mode="after")
    def _one_source(self) -> StreamConfig:
        if self.whip and self.url:
            raise ValueError("give either `url` or `whip: true`, not both")
        if not self.whip and not self.url:
            raise ValueError("needs a source: `url: ...` (rtsp, http(s), HLS or a file) or `whip: true`")
        return self


class IngestConfig(_Section):
    """Defaults for every stream, and the reconnect schedule."""

    fps: float = Field(default=1.0, gt=0, le=30, title="Default sample rate")
    policy: Literal["lower_fps", "skip", "wait"] = Field(
        default="lower_fps", title="Default backpressure policy"
    )
    min_fps: float = Field(default=0.125, gt=0, title="Lowest rate `lower_fps` may reach")
    max_pending_clips: int = Field(default=4, ge=1, le=256, title="Clips a stream may queue for the encoder")
    max_side: int | None = Field(
        default=960,
        ge=16,
        title="Largest sampled frame side",
        description="Bigger frames are shrunk before encoding",
    )
    backoff_initial_s: float = Field(default=0.5, gt=0, title="First reconnect delay (s)")
    backoff_max_s: float = Field(default=10.0, gt=0, title="Longest reconnect delay (s)")
    thumbnail_width: int = Field(default=160, ge=16, le=1024, title="Thumbnail width (px)")
    whip_listen: str = Field(
        default="127.0.0.1:8090",
        pattern=r"^[^\s:]+:\d{1,5}$",
        title="WHIP listen address",
        description="HOST:PORT where `flashlive ingest` serves WHIP for `whip: true` streams (/whip/NAME)",
    )


class ModelConfig(_Section):
    name: str = Field(
        default="tiny", title="Model", description="Preset name, checkpoint directory or repo id"
    )
    device: str = Field(default="cpu", title="Device", description="cpu, cuda, cuda:N or auto")
    max_batch: int = Field(default=8, ge=1, le=256, title="Clips per encoder batch")


class MemoryConfig(_Section):
    redis_url: str | None = Field(
        default=None,
        title="Redis URL",
        description="redis://host:port/db; empty: an embedded server in data_dir",
    )
    data_dir: str | None = Field(default=None, title="Embedded Redis data directory")
    retention_s: float | None = Field(
        default=None, gt=0, title="Keep clips this long (s)", description="Empty: forever"
    )
    max_bytes: int | None = Field(default=None, gt=0, title="Byte budget per stream")

    @field_validator("redis_url", "data_dir", mode="before")
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v


class WorkerConfig(_Section):
    device: str = Field(default="auto", title="Device")
    concurrency: int = Field(default=1, ge=1, le=64, title="Jobs at once per worker")
    job_timeout_s: float = Field(default=300.0, gt=0, title="Job timeout (s)")


class WebConfig(_Section):
    host: str = Field(default="127.0.0.1", title="Listen address")
    port: int = Field(default=8000, ge=1, le=65535, title="Listen port")
    whip_token: SecretStr | None = Field(
        default=None, title="WHIP bearer token", description="Empty: no token"
    )


StreamName = Annotated[str, StringConstraints(pattern=STREAM_NAME.pattern)]
NAME_RULE = "use letters, digits, '_', '.', '-', starting with a letter or digit, at most 128"


class FlashliveConfig(_Section):
    streams: dict[StreamName, StreamConfig] = Field(default_factory=dict, title="Streams, keyed by name")
    ingest: IngestConfig = Field(default_factory=IngestConfig, title="Ingest defaults")
    model: ModelConfig = Field(default_factory=ModelConfig, title="Model")
    memory: MemoryConfig = Field(default_factory=MemoryConfig, title="Memory")
    worker: WorkerConfig = Field(default_factory=WorkerConfig, title="Query workers")
    web: WebConfig = Field(default_factory=WebConfig, title="Web server")

    @model_validator(mode="after")
    def _backoff(self) -> FlashliveConfig:
        if self.ingest.backoff_max_s < self.ingest.backoff_initial_s:
            raise ValueError("ingest.backoff_max_s must be at least ingest.backoff_initial_s")
        return self


# ---- loading ----------------------------------------------------------------------------------------


@dataclass
class Problem:
    line: int | None  # 1-based
    path: str  # dotted, e.g. streams.lobby.fps
    message: str


class ConfigError(ValueError):
    """The config file cannot be used. `problems` lists every finding with its line."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = []
        for p in self.problems:
            where = f"{self.source}:{p.line}" if p.line else self.source
            lines.append(f"{where}: {p.path + ': ' if p.path else ''}{p.message}")
        return "\n".join(lines)


_ENV = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path)


def _compose(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML; returns the data and the 1-based line of every key and item, by path."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        lines: dict[Path_, int] = {}
        problems: list[Problem] = []

        def walk(n: yaml.Node, path: Path_) -> None:
            if isinstance(n, yaml.MappingNode):
                seen: dict[object, int] = {}
                for key_node, value_node in n.value:
                    key = loader.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line + 1
                    if isinstance(key, list | dict):
                        problems.append(Problem(line, _dotted(path), "keys must be plain names"))
                        continue
                    if key in seen:
                        problems.append(
                            Problem(
                                line,
                                _dotted((*path, key)),
                                f"duplicate key (first given on line {seen[key]})",
                            )
                        )
                    seen[key] = line
                    lines[(*path, key)] = line
                    walk(value_node, (*path, key))
            elif isinstance(n, yaml.SequenceNode):
                for i, item in enumerate(n.value):
                    lines[(*path, i)] = item.start_mark.line + 1
                    walk(item, (*path, i))

        lines[()] = node.start_mark.line + 1
        walk(node, ())
        if problems:
            raise ConfigError(source, problems)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        what = " ".join(x for x in (exc.context, exc.problem) if x) or "invalid YAML"
        raise ConfigError(source, [Problem(line, "", f"YAML syntax: {what}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError(source, [Problem(None, "", f"YAML syntax: {exc}")]) from None
    finally:
        loader.dispose()
    return data, lines


def _line_for(path: Path_, lines: Mapping[Path_, int]) -> int | None:
    """The line of the deepest part of `path` the file contains (a missing key: its parent's line)."""
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def substitute_env(data: Any, lines: Mapping[Path_, int], env: Mapping[str, str], source: str) -> Any:
    problems: list[Problem] = []

    def sub(value: Any, path: Path_) -> Any:
        if isinstance(value, dict):
            return {k: sub(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [sub(v, (*path, i)) for i, v in enumerate(value)]
        if not isinstance(value, str) or "$" not in value:
            return value

        def one(m: re.Match[str]) -> str:
            if m.group(0) == "$${":
                return "${"
            name, default = m.group(1), m.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems.append(
                Problem(_line_for(path, lines), _dotted(path), f"environment variable {name} is not set")
            )
            return ""

        return _ENV.sub(one, value)

    out = sub(data, ())
    if problems:
        raise ConfigError(source, problems)
    return out


def parse_config(
    text: str, *, source: str = "<config>", env: Mapping[str, str] | None = None
) -> FlashliveConfig:
    """Validate YAML text. Raises ConfigError listing every problem with its line."""
    data, lines = _compose(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [Problem(lines.get(()), "", "the config must be a mapping of sections")])
    data = substitute_env(data, lines, os.environ if env is None else env, source)
    streams = data.get("streams")
    if isinstance(streams, dict):  # `7:` is a fine stream name, but YAML reads it as a number
        data["streams"] = {
            str(k) if isinstance(k, int) and not isinstance(k, bool) else k: v for k, v in streams.items()
        }
        lines = {
            (*p[:1], str(p[1]), *p[2:])
            if len(p) > 1 and p[0] == "streams" and isinstance(p[1], int)
            else p: n
            for p, n in lines.items()
        }
    try:
        return FlashliveConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            msg = err["msg"]
            if loc and loc[-1] == "[key]":
                loc = loc[:-1]
                msg = f"bad name {loc[-1]!r}: {NAME_RULE}"
            elif err["type"] == "extra_forbidden":
                msg = "unknown setting (check the spelling; see docs/ingest.md for the schema)"
            elif err["type"] == "missing":
                msg = "required setting is missing"
            elif msg.startswith("Value error, "):
                msg = msg.removeprefix("Value error, ")
            problems.append(Problem(_line_for(loc, lines), _dotted(loc), msg))
        raise ConfigError(source, problems) from None


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> FlashliveConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [Problem(None, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [Problem(None, "", f"cannot read: {exc}")]) from None
    return parse_config(text, source=str(path), env=env)
