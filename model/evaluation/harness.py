"""The evaluation parts: held-out worlds, NIAH, multi-hop NIAH, the dropout comparison.

Each `run_*` takes an `AnswerSource` and its settings, asks every item, scores every answer
(scoring.py) and returns a JSON-ready dict: the tallies the report needs and every answer given, so a
result can be checked by hand. Items come seed by seed and are built lazily, so a long grid holds no
more than the haystack tokens tokens.py keeps. `plan` resolves a part's defaults for a model from its
config alone, so a run that cannot work fails before weights load; `run_plan` runs it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from tqdm import tqdm

from flashlive.model.config import DropoutConfig
from flashlive.model.evaluation import niah_video
from flashlive.model.evaluation.errors import EvalError
from flashlive.model.evaluation.items import (
    Item,
    check_chains_fit,
    mhniah_count,
    mhniah_items,
    niah_count,
    niah_items,
    world_items,
)
from flashlive.model.evaluation.modes import describe, dropout_modes
from flashlive.model.evaluation.niah_video import NiahVideoData
from flashlive.model.evaluation.scoring import GROUPS, score
from flashlive.model.evaluation.settings import DEFAULT_LENGTHS, PARTS, EvalSettings
from flashlive.model.evaluation.sources import Answers, AnswerSource, Context
from flashlive.model.world import CLIP_FRAMES

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Tally:
    n: int = 0
    correct: int = 0

    def add(self, ok: bool) -> None:
        self.n += 1
        self.correct += int(ok)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.n if self.n else None

    def to_dict(self) -> dict[str, Any]:
        acc = self.accuracy
        return {"n": self.n, "correct": self.correct, "accuracy": None if acc is None else round(acc, 4)}


@dataclass(frozen=True)
class Record:
    """One question asked and scored."""

    item: str
    kind: str
    question: str
    truth: str
    answer: str
    correct: bool
    cell: dict[str, Any] = field(default_factory=dict)
    needs_hires: bool = False


def ask(
    source: AnswerSource, item: Item, dropout: DropoutConfig | None = None
) -> tuple[list[Record], Answers]:
    """Ask `item`'s questions and score the answers."""
    answers = source.answer(item, dropout)
    if len(answers.texts) != len(item.questions):
        raise EvalError(
            f"{source.name} gave {len(answers.texts)} answers to the {len(item.questions)} questions "
            f"of {item.id}"
        )
    records = [
        Record(item.id, q.kind, q.text, q.truth.answer, a, score(q.truth, a), item.cell, q.needs_hires)
        for q, a in zip(item.questions, answers.texts, strict=True)
    ]
    return records, answers


def check_lengths(source: Context, lengths: Sequence[int], extra_frames: int = 0) -> None:
    """EvalError naming the haystack lengths too long for the source's context."""
    limit = source.max_frames
    if limit is None:
        return
    too_long = [n for n in lengths if n + extra_frames > limit]
    if too_long:
        raise EvalError(
            f"haystacks of {', '.join(f'{n:,}' for n in too_long)} frames do not fit {source.name}'s context "
            f"(at most about {max(0, limit - extra_frames):,} frames with a question); ask for shorter ones"
        )


def fitting(source: Context, lengths: Sequence[int], extra_frames: int = 0) -> list[int]:
    limit = source.max_frames
    return [n for n in lengths if limit is None or n + extra_frames <= limit]


def _bar(items: Iterable[T], total: int, desc: str, progress: bool) -> Iterator[T]:
    return iter(tqdm(items, total=total, desc=desc, unit="item", disable=not progress, file=sys.stderr))


def _tallies(records: Iterable[Record], key: Any) -> dict[Any, Tally]:
    out: dict[Any, Tally] = {}
    for r in records:
        out.setdefault(key(r), Tally()).add(r.correct)
    return out


def _overall(records: Sequence[Record]) -> dict[str, Any]:
    t = Tally()
    for r in records:
        t.add(r.correct)
    return t.to_dict()


# --- held-out worlds ------------------------------------------------------------------------------------
def run_world(
    source: AnswerSource, *, items: int, frames: int, offset: int = 0, progress: bool = False
) -> dict[str, Any]:
    """Accuracy per question kind on `items` held-out worlds, `frames` frames each."""
    check_lengths(source, [frames])
    records: list[Record] = []
    for item in _bar(world_items(items, frames, offset=offset), 3 * items, "worlds", progress):
        records += ask(source, item)[0]
    kinds = _tallies(records, lambda r: r.kind)
    groups = {name: _overall([r for r in records if r.kind in members]) for name, members in GROUPS.items()}
    return {
        "part": "world",
        "settings": {"items": items, "frames": frames, "offset": offset},
        "kinds": {k: kinds[k].to_dict() for k in sorted(kinds)},
        "groups": groups,
        "small_objects": _overall([r for r in records if r.needs_hires]),
        "overall": _overall(records),
        "records": [asdict(r) for r in records],
    }


# --- NIAH -------------------------------------------------------------------------------------------------
def grid(records: Sequence[Record], rows: str, cols: str) -> dict[str, Any]:
    """Accuracy per (row value, column value) cell, as a matrix for the heatmap."""
    tallies = _tallies(records, lambda r: (r.cell[rows], r.cell[cols]))
    row_values = sorted({k[0] for k in tallies})
    col_values = sorted({k[1] for k in tallies})
    return {
        "rows": rows,
        "cols": cols,
        "row_values": row_values,
        "col_values": col_values,
        "accuracy": [
            [tallies[(r, c)].accuracy if (r, c) in tallies else None for c in col_values] for r in row_values
        ],
        "cells": [{rows: r, cols: c, **tallies[(r, c)].to_dict()} for r, c in sorted(tallies)],
    }


def run_niah(
    source: AnswerSource,
    *,
    items: int,
    lengths: Sequence[int],
    depths: Sequence[float],
    offset: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Single-hop needle in a haystack: accuracy per (needle depth, haystack length) cell."""
    settings = {"items": items, "lengths": list(lengths), "depths": list(depths), "offset": offset}
    chosen = niah_items(items, lengths, depths, offset=offset)
    total = niah_count(items, lengths, depths)
    cells = _Cells(part="niah", label="niah", key="depth", by="by_length", tally=lambda r: r.cell["frames"])
    return _run_cells(source, cells, settings, chosen, total, lengths, progress)


def run_mhniah(
    source: AnswerSource,
    *,
    items: int,
    lengths: Sequence[int],
    hops: Sequence[int],
    offset: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Multi-hop NIAH: accuracy per (hops, haystack length) cell."""
    settings = {"items": items, "lengths": list(lengths), "hops": list(hops), "offset": offset}
    chosen = mhniah_items(items, lengths, hops, offset=offset)
    total = mhniah_count(items, lengths, hops)
    cells = _Cells(part="mhniah", label="mh-niah", key="hops", by="by_hops", tally=lambda r: r.cell["hops"])
    return _run_cells(source, cells, settings, chosen, total, lengths, progress)


@dataclass(frozen=True)
class _Cells:
    """How a needle part reports: its grid's row key (against haystack length) and one tally."""

    part: str
    label: str  # of the progress bar
    key: str
    by: str  # the tally's name in the report
    tally: Callable[[Record], Any]


def _run_cells(
    source: AnswerSource,
    cells: _Cells,
    settings: dict[str, Any],
    chosen: Iterable[Item],
    total: int,
    lengths: Sequence[int],
    progress: bool,
) -> dict[str, Any]:
    """Ask every item; report the (key, haystack length) grid and the tally."""
    check_lengths(source, lengths)
    records: list[Record] = []
    for item in _bar(chosen, total, cells.label, progress):
        records += ask(source, item)[0]
    per = _tallies(records, cells.tally)
    return {
        "part": cells.part,
        "settings": settings,
        "grid": grid(records, cells.key, "frames"),
        cells.by: {str(k): per[k].to_dict() for k in sorted(per)},
        "overall": _overall(records),
        "records": [asdict(r) for r in records],
    }


# --- dropout ----------------------------------------------------------------------------------------------
@dataclass
class _ModeRun:
    name: str
    dropout: DropoutConfig | None
    records: list[Record] = field(default_factory=list)
    wall: dict[str, float] = field(default_factory=dict)  # prefill seconds per item set
    cpu: dict[str, float] = field(default_factory=dict)
    kept: dict[int, tuple[int, ...]] = field(default_factory=dict)  # visual tokens -> kept per stage

    def seconds(self, sets: Sequence[str]) -> tuple[float, float]:
        return sum(self.wall.get(s, 0.0) for s in sets), sum(self.cpu.get(s, 0.0) for s in sets)


def _timing(mode: tuple[float, float], off: tuple[float, float]) -> dict[str, float | None]:
    """Prefill seconds (wall, CPU) of a mode and its speed-up over dropout off."""
    return {
        "prefill_s": round(mode[0], 4),
        "prefill_cpu_s": round(mode[1], 4),
        "speedup": round(off[0] / mode[0], 3) if mode[0] > 0 else None,
        "speedup_cpu": round(off[1] / mode[1], 3) if mode[1] > 0 else None,
    }


def run_dropout(
    source: AnswerSource,
    *,
    items: int,
    frames: int,
    lengths: Sequence[int],
    depths: Sequence[float],
    offset: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """The same items (held-out world questions and NIAH haystacks) with dropout off, the model card's
    recipe and a harsher one: accuracy, and prefill seconds measured in this run, mode after mode on
    each item (the order rotating from item to item), so the ratios compare like with like."""
    check_lengths(source, [frames, *lengths])
    runs = [_ModeRun(name, d) for name, d in dropout_modes(source.num_layers)]
    set_names = ("world", "niah")

    def tagged() -> Iterator[tuple[str, Item]]:
        yield from (("world", it) for it in world_items(items, frames, offset=offset))
        yield from (("niah", it) for it in niah_items(items, lengths, depths, offset=offset))

    total = 3 * items + niah_count(items, lengths, depths)
    for n, (set_name, item) in enumerate(_bar(tagged(), total, "dropout", progress)):
        if n == 0:  # the first call pays one-off costs (allocations, kernels): keep it out of the timing
            source.answer(item, None)
        for k in range(len(runs)):
            run = runs[(n + k) % len(runs)]
            records, answers = ask(source, item, run.dropout)
            run.records += [Record(**{**asdict(r), "cell": {**r.cell, "set": set_name}}) for r in records]
            run.wall[set_name] = run.wall.get(set_name, 0.0) + answers.prefill_s
            run.cpu[set_name] = run.cpu.get(set_name, 0.0) + answers.prefill_cpu_s
            run.kept.setdefault(answers.visual_tokens, answers.visual_kept)
    off = runs[0]
    base = _overall(off.records)
    modes = []
    for run in runs:
        acc = _overall(run.records)
        by_set = {
            name: {
                **_overall([r for r in run.records if r.cell["set"] == name]),
                **_timing(run.seconds([name]), off.seconds([name])),
            }
            for name in set_names
        }
        points = None
        if acc["accuracy"] is not None and base["accuracy"] is not None:
            points = round(100 * (acc["accuracy"] - base["accuracy"]), 2)
        modes.append(
            {
                "name": run.name,
                "dropout": describe(run.dropout),
                **acc,
                "points_vs_off": points,
                **_timing(run.seconds(set_names), off.seconds(set_names)),
                "by_set": by_set,
                "visual_kept": {str(k): list(v) for k, v in sorted(run.kept.items())},
            }
        )
    return {
        "part": "dropout",
        "settings": {
            "items": items,
            "frames": frames,
            "lengths": list(lengths),
            "depths": list(depths),
            "offset": offset,
            "num_layers": source.num_layers,
        },
        "modes": modes,
        "records": {run.name: [asdict(r) for r in run.records] for run in runs},
    }


# --- NIAH-Video (the paper's data) ------------------------------------------------------------------------
def run_niah_video(
    source: AnswerSource,
    data: NiahVideoData,
    *,
    lengths: Sequence[int],
    depths: Sequence[float],
    items: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The paper's single-hop grid (needle depth x haystack length) and, when the folder has chains, its
    multi-hop test per length (caption and QA questions), on the given haystack and needle images."""
    single = data.single[:items]
    chains = data.multi[:items]
    most_needles = max((len(c.images) for c in chains), default=1)
    check_lengths(source, lengths, extra_frames=CLIP_FRAMES * most_needles)
    records: list[Record] = []
    total = len(single) * len(lengths) * len(depths)
    for item in _bar(niah_video.single_items(data, lengths, depths, items), total, "niah-video", progress):
        records += ask(source, item)[0]
    out: dict[str, Any] = {
        "part": "niah-video",
        "settings": {
            "data": str(data.root),
            "haystack": str(data.haystack),
            "needles": len(single),
            "chains": len(chains),
            "lengths": list(lengths),
            "depths": list(depths),
        },
        "single": {"grid": grid(records, "depth", "frames"), "overall": _overall(records)},
    }
    multi: list[Record] = []
    chain_items = niah_video.multi_items(data, lengths, items)
    for item in _bar(chain_items, len(chains) * len(lengths), "niah-video chains", progress):
        multi += ask(source, item)[0]
    if multi:
        per = _tallies(multi, lambda r: (r.cell["frames"], r.kind))
        out["multi"] = {
            "by_length": [
                {"frames": f, **{k: per[(f, k)].to_dict() for k in ("niah_video_caption", "niah_video_qa")}}
                for f in sorted({f for f, _ in per})
            ],
            "overall": _overall(multi),
        }
    out["records"] = [asdict(r) for r in records + multi]
    return out


# --- one entry point per part -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Plan:
    """A part with its settings resolved for one model: items, haystack lengths, the data folder."""

    part: str
    settings: EvalSettings
    items: int | None
    lengths: tuple[int, ...] = ()
    data: NiahVideoData | None = None


def plan_lengths(
    context: Context,
    given: Sequence[int] | None,
    defaults: Sequence[int],
    *,
    extra_frames: int = 0,
    longest: int | None = None,
    only_longest: bool = False,
) -> tuple[int, ...]:
    """The haystack lengths to run: `given` ones (all must fit), else the `defaults` that fit the
    context (and `longest`, the frames the haystack has); `only_longest` keeps the longest of those."""
    if given is not None:
        check_lengths(context, given, extra_frames)
        if longest is not None and max(given) > longest:
            raise EvalError(
                f"the haystack gives {longest:,} frames at 1 fps; --lengths asks for {max(given):,}"
            )
        return tuple(given)
    fit = [n for n in fitting(context, defaults, extra_frames) if longest is None or n <= longest]
    if not fit:
        limit = context.max_frames
        room = "" if limit is None else f" (about {limit - extra_frames:,} frames fit its context)"
        raise EvalError(
            f"none of the default haystack lengths {', '.join(map(str, defaults))} fits {context.name}"
            f"{room}; give --lengths"
        )
    return tuple(fit[-1:] if only_longest else fit)


def plan(context: Context, part: str, settings: EvalSettings) -> Plan:
    """Resolve `part`'s defaults for a model (from its context alone, so a run that cannot work fails
    before the model loads). EvalError/DatasetError say what to change."""
    s, items = settings, settings.items_for(part)
    if part == "world":
        check_lengths(context, [s.frames])
        return Plan(part, s, items, (s.frames,))
    if part in ("niah", "mhniah", "dropout"):
        lengths = plan_lengths(context, s.lengths, DEFAULT_LENGTHS, only_longest=part == "dropout")
        if part == "dropout":
            check_lengths(context, [s.frames])
        if part == "mhniah":
            check_chains_fit(lengths, s.hops)
        return Plan(part, s, items, lengths)
    if part == "niah-video":
        if s.data is None:
            raise EvalError("niah-video needs a NIAH-Video folder (--data DIR)")
        data = niah_video.load(s.data)
        needles = max((len(c.images) for c in data.multi[:items]), default=1)
        lengths = plan_lengths(
            context,
            s.lengths,
            niah_video.PAPER_LENGTHS,
            extra_frames=CLIP_FRAMES * needles,
            longest=niah_video.haystack_length(data.haystack),
        )
        return Plan(part, s, items, lengths, data)
    raise EvalError(f"unknown part {part!r}; choose one of {', '.join(PARTS)}")


def run_plan(source: AnswerSource, p: Plan, *, progress: bool = False) -> dict[str, Any]:
    s, n = p.settings, p.items or 0
    if p.part == "world":
        return run_world(source, items=n, frames=s.frames, offset=s.offset, progress=progress)
    if p.part == "niah":
        return run_niah(
            source, items=n, lengths=p.lengths, depths=s.depths, offset=s.offset, progress=progress
        )
    if p.part == "mhniah":
        return run_mhniah(source, items=n, lengths=p.lengths, hops=s.hops, offset=s.offset, progress=progress)
    if p.part == "dropout":
        return run_dropout(
            source,
            items=n,
            frames=s.frames,
            lengths=p.lengths,
            depths=s.depths,
            offset=s.offset,
            progress=progress,
        )
    assert p.data is not None
    return run_niah_video(
        source, p.data, lengths=p.lengths, depths=s.depths, items=p.items, progress=progress
    )


def run_part(
    source: AnswerSource, part: str, settings: EvalSettings, *, progress: bool = False
) -> dict[str, Any]:
    """Plan and run one part."""
    return run_plan(source, plan(source, part, settings), progress=progress)
