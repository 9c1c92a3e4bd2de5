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
    memory:
      redis: {url: "${FLASHLIVE_REDIS_URL}"}
      retention: {seconds: 86400}

Each library owns the schema of its section, defaults included (`stream.settings`, `model.settings`,
`memory.settings`, `web.settings`); this module composes them, adds the app's own section (worker) and
reads the file. `${NAME}` is replaced by the environment variable NAME (`${NAME:-default}` gives a
default, `$${` is a literal `${`), after YAML parsing, so secrets stay out of the file and never change
its structure.
Every error names the line it came from: `lobby.yaml:4: streams.lobby.fps: ...`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
)

from flashlive.memory.keys import NAME_RULE, STREAM_NAME
from flashlive.memory.settings import MemorySettings
from flashlive.model.device import DEVICE_RULE, Device
from flashlive.model.settings import ModelSettings
from flashlive.model.train.settings import TrainSettings
from flashlive.stream.settings import IngestSettings, StreamSettings
from flashlive.web.settings import WebSettings

Path_ = tuple[str | int, ...]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class WorkerConfig(_Section):
    """The query workers `flashlive serve` starts, and what each worker process runs. (The worker's
    timings — heartbeat, lease, drain — are `WorkerSettings` in model/worker/service.py.)"""

    device: Device = Field(default="auto", title="Device", description=DEVICE_RULE)
    concurrency: int = Field(default=1, ge=1, le=64, title="Jobs at once per worker")
    processes: int = Field(
        default=1, ge=0, le=64, title="Worker processes `flashlive serve` starts", description="0: none"
    )
    threads: int | None = Field(
        default=None,
        ge=1,
        le=1024,
        title="CPU threads per worker",
        description="torch's CPU threads in each worker process. Empty: `flashlive worker` alone keeps "
        "torch's default (one per core); the workers `flashlive serve` starts share the cores with it "
        "(app/serve.py, serve_threads)",
    )


StreamName = Annotated[str, StringConstraints(pattern=STREAM_NAME.pattern)]


class FlashliveConfig(_Section):
    """The whole file. Each library owns the section of what it runs (`stream.settings`,
    `model.settings`, `memory.settings`, `web.settings`); the worker section belongs to the app."""

    streams: dict[StreamName, StreamSettings] = Field(default_factory=dict, title="Streams, keyed by name")
    ingest: IngestSettings = Field(default_factory=IngestSettings, title="Ingest defaults")
    model: ModelSettings = Field(default_factory=ModelSettings, title="Model")
    memory: MemorySettings = Field(default_factory=MemorySettings, title="Memory")
    worker: WorkerConfig = Field(default_factory=WorkerConfig, title="Query workers")
    web: WebSettings = Field(default_factory=WebSettings, title="Web server")
    train: TrainSettings = Field(default_factory=TrainSettings, title="Training (flashlive train)")


# settings that moved; a file that still uses the old place gets told the new one
MOVED: dict[Path_, str] = {
    ("memory", "redis_url"): "memory.redis.url",
    ("memory", "data_dir"): "memory.redis.data_dir",
    ("memory", "retention_s"): "memory.retention.seconds",
    ("memory", "max_bytes"): "memory.retention.max_bytes",
    ("model", "max_batch"): "ingest.max_batch",
    ("web", "whip_token"): "web.token (one token for the API, WHIP and /ws)",
    ("worker", "job_timeout_s"): "web.job_timeout_s (the web app sets each question's deadline)",
}


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

# A config is a page of settings. These bounds keep a hostile file (an alias bomb, /dev/zero, a
# thousand nested brackets) from costing more than a moment: the file is read up to MAX_CONFIG_BYTES,
# and its YAML may use MAX_ALIASES aliases, nest MAX_DEPTH deep and hold MAX_NODES values once its
# aliases are expanded (the expansion is counted, never performed, before anything walks the data).
MAX_CONFIG_BYTES = 1 << 20
MAX_ALIASES = 64
MAX_DEPTH = 64
MAX_NODES = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with a budget on aliases and nesting (PyYAML itself has none)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases = 0
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                mark = self.peek_event().start_mark
                raise _TooBig(mark.line + 1, f"more than {MAX_ALIASES} aliases (*name); write the values out")
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise _TooBig(mark.line + 1, f"nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _TooBig(Exception):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _expanded_size(root: yaml.Node) -> int:
    """How many values the document holds once its aliases are expanded, counted per distinct node
    (an alias is the same node object again), so a bomb is measured, not built."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(n: yaml.Node) -> int:
        known = sizes.get(id(n))
        if known is not None:
            return known
        if id(n) in open_:
            raise _TooBig(n.start_mark.line + 1, "an alias refers to a value that contains it")
        open_.add(id(n))
        total = 1
        if isinstance(n, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in n.value)
        elif isinstance(n, yaml.SequenceNode):
            total += sum(size(v) for v in n.value)
        total = min(total, MAX_NODES + 1)
        sizes[id(n)] = total
        open_.discard(id(n))
        return total

    return size(root)


def _dotted(path: Path_) -> str:
    return ".".join(str(p) for p in path)


def _compose(text: str, source: str) -> tuple[Any, dict[Path_, int]]:
    """Parse YAML; returns the data and the 1-based line of every key and item, by path."""
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return {}, {}
        if _expanded_size(node) > MAX_NODES:
            raise _TooBig(None, f"more than {MAX_NODES} values once its aliases are expanded")
        lines: dict[Path_, int] = {}
        problems: list[Problem] = []
        walked: set[int] = set()

        def walk(n: yaml.Node, path: Path_) -> None:
            if id(n) in walked:  # an alias of a node already walked: its lines are those of the anchor
                return
            walked.add(id(n))
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
    except _TooBig as exc:
        raise ConfigError(source, [Problem(exc.line, "", f"too large: {exc.message}")]) from None
    except RecursionError:
        raise ConfigError(source, [Problem(None, "", "too large: nested too deeply")]) from None
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
    return config_from_data(data, source=source, lines=lines)


def config_from_data(
    data: Mapping[str, Any], *, source: str = "<config>", lines: Mapping[Path_, int] | None = None
) -> FlashliveConfig:
    """Validate parsed data (a file's, or one the command line built): ConfigError with every problem,
    with its line when `lines` knows it."""
    try:
        return FlashliveConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, problems_of(exc, lines or {})) from None


def problems_of(exc: ValidationError, lines: Mapping[Path_, int]) -> list[Problem]:
    """pydantic's errors as Problems: dotted path, plain message, the line it came from."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        msg = err["msg"]
        if loc and loc[-1] == "[key]":
            loc = loc[:-1]
            msg = f"bad name {loc[-1]!r}: {NAME_RULE}"
        elif err["type"] == "extra_forbidden":
            moved = MOVED.get(loc)
            msg = (
                f"moved to {moved}"
                if moved
                else "unknown setting (check the spelling; see docs/ingest.md for the schema)"
            )
        elif err["type"] == "missing":
            msg = "required setting is missing"
        elif msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        problems.append(Problem(_line_for(loc, lines), _dotted(loc), msg))
    return problems


def read_config_text(path: str | Path) -> str:
    """The text of a config file, read up to MAX_CONFIG_BYTES (a device like /dev/zero is never read
    to its end); ConfigError for a missing, unreadable, oversized or non-text file."""
    path = Path(path)

    def fail(message: str) -> ConfigError:
        return ConfigError(str(path), [Problem(None, "", message)])

    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise fail("no such file") from None
    except IsADirectoryError:
        raise fail("is a directory, not a config file") from None
    except OSError as exc:
        raise fail(f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise fail(f"too large: a config file has at most {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"not UTF-8 text (byte {exc.start})") from None
    if "\x00" in text:
        raise fail("not a text file (it holds NUL bytes)")
    return text


def load_config(path: str | Path, *, env: Mapping[str, str] | None = None) -> FlashliveConfig:
    return parse_config(read_config_text(path), source=str(path), env=env)
