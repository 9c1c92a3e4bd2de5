"""Which clips an ask job's answer reads: its window, sampled by the job's rule, or why there are none.

Two rules (`AskJob.sampling`):

- `uniform` (the default): `budget // clip_frames` whole clips spread uniformly over the window, first
  and last included (`VideoMemory.read_window`); `recent=K` always keeps the newest K.
- `release`: the release `chat()`'s frame-count rule (`model/sampling.py::release_window_clips`) on the
  1 fps video the memory holds, with the job's budget as the maximum: N = 8·⌊4n/8⌋ frames of n clips,
  at least 64 when the window has them, at most the budget; the N/4 clips are the middles of equal
  intervals, the last one repeated when N/4 exceeds them (a one-clip window). The time message states
  the window's seconds (its clips' frames at the memory's rate, gaps closed), as `chat()` would for a
  recording of those frames. It cannot give what `chat()` gives for the original file under 64 s (more
  than 1 fps): the memory never kept those frames (docs/model.md, "Live windows"); `file_frames` says
  what that would have been.

Errors are `WindowRefused(code, message)`: the worker answers the job with them and goes on.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

from flashlive.memory.errors import (
    EmptyStreamError,
    EncoderMismatchError,
    InvalidRequestError,
    RangeOutsideMemoryError,
    UnknownStreamError,
)
from flashlive.memory.messages import AskJob, ErrorCode
from flashlive.memory.store import VideoMemory
from flashlive.memory.types import Clip, ClipInfo
from flashlive.model.errors import SamplingError
from flashlive.model.sampling import CHAT_SAMPLING, FrameSampling, release_window_clips

_ONE_MS = 0.001  # an end bound just past a clip's start (ids are whole milliseconds)


class WindowRefused(Exception):
    """The job's window cannot be read: `code` and `message` go into its error record."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class JobWindow:
    clips: list[Clip]  # in time order; the last may repeat (the release's padding)
    duration: float | None = None  # the time message's seconds when not the clips' span
    file_frames: int | None = None  # release sampling: frames chat() would take from a file this long


async def read_job_window(
    memory: VideoMemory, job: AskJob, *, encoder_id: str, clip_frames: int
) -> JobWindow:
    """The clips `job` is answered from. Raises WindowRefused."""
    try:
        if job.sampling == "release":
            return await _release(memory, job, encoder_id, clip_frames)
        return JobWindow(await _uniform(memory, job, encoder_id, clip_frames))
    except UnknownStreamError as exc:
        raise WindowRefused(ErrorCode.UNKNOWN_STREAM, str(exc)) from None
    except EmptyStreamError as exc:
        raise WindowRefused(ErrorCode.EMPTY_MEMORY, str(exc)) from None
    except RangeOutsideMemoryError as exc:
        raise WindowRefused(ErrorCode.WINDOW_OUTSIDE_MEMORY, str(exc)) from None
    except EncoderMismatchError as exc:
        raise WindowRefused(ErrorCode.ENCODER_MISMATCH, str(exc)) from None
    except InvalidRequestError as exc:
        raise WindowRefused(ErrorCode.INVALID_REQUEST, str(exc)) from None


def _empty(job: AskJob) -> WindowRefused:
    return WindowRefused(
        ErrorCode.WINDOW_EMPTY,
        f"no clip of stream {job.stream!r} starts in {job.window.describe()}: the stream paused there",
    )


async def _uniform(memory: VideoMemory, job: AskJob, encoder_id: str, clip_frames: int) -> list[Clip]:
    budget = max(1, job.budget // clip_frames)
    if job.recent > budget:
        raise WindowRefused(
            ErrorCode.INVALID_REQUEST,
            f"recent={job.recent} clips is more than the budget of {budget} clips ({job.budget} frames, "
            f"{clip_frames} per clip)",
        )
    w = job.window
    clips = await memory.read_window(
        job.stream, encoder_id=encoder_id, start=w.start, end=w.end, last=w.last, budget=budget,
        recent=job.recent,
    )  # fmt: skip
    if not clips:
        raise _empty(job)
    return clips


def release_rule(budget: int, clip_frames: int) -> FrameSampling:
    """chat()'s rule with the job's frame budget as its maximum."""
    if budget % clip_frames:
        raise WindowRefused(
            ErrorCode.INVALID_REQUEST,
            f"release sampling takes whole {clip_frames}-frame clips: the budget must be a multiple of "
            f"{clip_frames} frames, not {budget}",
        )
    rule = FrameSampling(min_frames=CHAT_SAMPLING.min_frames, max_frames=budget, step=CHAT_SAMPLING.step)
    try:
        rule.check(clip_frames)
    except SamplingError as exc:
        raise WindowRefused(ErrorCode.INVALID_REQUEST, f"release sampling: {exc}") from None
    return rule


async def _release(memory: VideoMemory, job: AskJob, encoder_id: str, clip_frames: int) -> JobWindow:
    rule = release_rule(job.budget, clip_frames)
    w = job.window
    infos = await memory.list_clips(job.stream, start=w.start, end=w.end, last=w.last)
    if not infos:
        raise _empty(job)
    seconds = sum(i.end - i.start for i in infos)
    fps = sum(i.frames for i in infos) / seconds if seconds > 0 else 1.0
    try:
        plan = release_window_clips(len(infos), clip_frames=clip_frames, fps=fps, rule=rule)
    except SamplingError as exc:
        raise WindowRefused(ErrorCode.INVALID_REQUEST, f"release sampling: {exc}") from None
    picked = await _read_positions(memory, job.stream, encoder_id, infos, sorted(set(plan.clips)))
    return JobWindow([picked[i] for i in plan.clips], duration=plan.duration, file_frames=plan.file_frames)


async def _read_positions(
    memory: VideoMemory, stream: str, encoder_id: str, infos: list[ClipInfo], positions: list[int]
) -> dict[int, Clip]:
    """The clips at `positions` of `infos`, tokens included: one read per run of neighbours, at once."""
    runs = [
        [p for _, p in group]
        for _, group in itertools.groupby(enumerate(positions), key=lambda ip: ip[1] - ip[0])
    ]
    reads = [
        memory.read_window(
            stream, encoder_id=encoder_id, start=infos[r[0]].start, end=infos[r[-1]].start + _ONE_MS
        )
        for r in runs
    ]
    try:
        results = await asyncio.gather(*reads)
    except RangeOutsideMemoryError:
        results = []
    out: dict[int, Clip] = {}
    for run, clips in zip(runs, results, strict=False):
        by_start = {round(c.start * 1000): c for c in clips}
        for p in run:
            clip = by_start.get(round(infos[p].start * 1000))
            if clip is not None:
                out[p] = clip
    missing = [p for p in positions if p not in out]
    if missing:
        raise WindowRefused(
            ErrorCode.WINDOW_OUTSIDE_MEMORY,
            f"{len(missing)} clip(s) of the window were trimmed from the memory while it was read; ask again",
        )
    return out
