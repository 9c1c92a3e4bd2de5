"""One validation path for numbers and names given on the command line.

Options that are settings of the config file (`--fps`, `--max-batch`, `--policy`, ...) are put into the
config's data and validated by the config's own models (`flashlive.config.config_from_data`). Options
that only exist on the command line (`ask-file --temperature`, `memory export --fps`, `demo-video
--seconds`) are validated by the small models below, with the same rules (finite numbers, bounds) and
the same messages. Either way a problem becomes one line naming the option:

    flashlive ingest: error: --fps: Input should be greater than 0
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flashlive.config import ConfigError, Problem, problems_of
from flashlive.errors import CommandError

M = TypeVar("M", bound=BaseModel)


def options_error(problems: list[Problem], flags: Mapping[str, str], *, source: str = "") -> CommandError:
    """A CommandError of one line: each problem as `--flag: message` (or `path: message` when no
    option set it), joined by "; "."""
    parts = []
    for p in problems:
        flag = flag_for(p.path, flags) or _list_item_flag(p.path, flags)
        where = flag or p.path or source
        parts.append(f"{where}: {p.message}" if where else p.message)
    return CommandError("; ".join(" ".join(part.split()) for part in parts))


def flag_for(path: str, flags: Mapping[str, str]) -> str | None:
    """The option behind a dotted settings path: the longest suffix of the path that `flags` names."""
    parts = path.split(".")
    for i in range(len(parts)):
        found = flags.get(".".join(parts[i:]))
        if found:
            return found
    return None


def _list_item_flag(path: str, flags: Mapping[str, str]) -> str | None:
    """`--lengths (item 2)` for a problem with the second value of a list option (path `lengths.1`)."""
    head, _, last = path.rpartition(".")
    flag = flag_for(head, flags) if head and last.isdigit() else None
    return f"{flag} (item {int(last) + 1})" if flag else None


def check_options(model: type[M], values: Mapping[str, Any], flags: Mapping[str, str]) -> M:
    """`model` built from the command line's `values`; CommandError (one line) naming the option."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        raise options_error(problems_of(exc, {}), flags) from None


def config_error(exc: ConfigError, flags: Mapping[str, str]) -> CommandError:
    return options_error(exc.problems, flags, source=exc.source)


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AskFileOptions(_Options):
    """`flashlive ask-file`'s numbers (None: the model's or the release's default)."""

    max_new_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float | None = Field(default=None, ge=0, le=100, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1, allow_inf_nan=False)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    max_frames: int | None = Field(default=None, ge=1, le=100_000)
    min_frames: int | None = Field(default=None, ge=1, le=100_000)
    frame_step: int | None = Field(default=None, ge=1, le=1024)


ASK_FILE_FLAGS = {
    "max_new_tokens": "--max-new-tokens",
    "temperature": "--temperature",
    "top_p": "--top-p",
    "seed": "--seed",
    "max_frames": "--max-frames",
    "min_frames": "--min-frames",
    "frame_step": "--frame-step",
}


class WindowOptions(_Options):
    """`flashlive memory show|export`'s window (times are parsed before: seconds or ISO-8601)."""

    start: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    end: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    last: float | None = Field(default=None, gt=0, le=10 * 365 * 86400, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_window(self) -> WindowOptions:
        if self.last is not None and (self.start is not None or self.end is not None):
            raise ValueError("give either --last or --start/--end, not both")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError(f"--start ({self.start:g}) is after --end ({self.end:g})")
        return self


class ExportOptions(WindowOptions):
    """`flashlive memory export`'s numbers."""

    fps: float = Field(gt=0, le=120, allow_inf_nan=False)
    columns: int = Field(ge=1, le=64)


MEMORY_FLAGS = {"start": "--start", "end": "--end", "last": "--last", "fps": "--fps", "columns": "--columns"}


class DemoVideoOptions(_Options):
    """`flashlive demo-video`'s numbers and file."""

    seconds: float = Field(gt=0, le=24 * 3600, allow_inf_nan=False)
    fps: int = Field(ge=1, le=120)
    out: str

    @field_validator("out")
    @classmethod
    def _video_file(cls, v: str) -> str:
        if not v.lower().endswith((".mp4", ".mkv")):
            raise ValueError("the demo video is written as .mp4 or .mkv: give a file name ending so")
        return v


DEMO_FLAGS = {"seconds": "--seconds", "fps": "--fps", "out": "OUT"}


EVAL_FLAGS = {
    "items": "--items",
    "offset": "--offset",
    "frames": "--frames",
    "lengths": "--lengths",
    "depths": "--depths",
    "hops": "--hops",
    "data": "--data",
    "out": "--out",
}


class TrainOptions(_Options):
    """`flashlive train`'s options that are not settings of the config file."""

    time_limit: float | None = Field(default=None, gt=0, le=30 * 86400, allow_inf_nan=False)
    out: str = Field(min_length=1)
    weights: str | None = Field(default=None, min_length=1)


TRAIN_FLAGS = {
    "time_limit": "--time-limit",
    "out": "--out",
    "weights": "--weights",
    "seed": "--seed",
    "device": "--device",
    "workers": "--workers",
    "model": "--model",
}
