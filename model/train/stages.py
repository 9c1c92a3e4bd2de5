"""The recipe's stages: what each trains, on which data, with which loss.

0 tower  the tower (and small attribute heads, dropped afterwards) on per-object attributes
0 text   the LLM on the world's text
1 align  the projector only, on clip captions (tower and LLM frozen)
2 short  short videos of 1-4 clips, every question kind
3 long   short videos mixed with long streams holding needles and temporal questions (tower frozen)
4 hires  the tower at 448 (3,136 patches merged to 64 per clip), on scenes of small objects
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flashlive.model.config import FlashConfig
from flashlive.model.world import WorldConfig

from . import data as D
from . import targets as T
from .errors import TrainError
from .loop import RunOptions
from .parts import Parts, fresh_parts, init_weights
from .settings import (
    HiresStage,
    LongStage,
    StageSettings,
    TextStage,
    TowerStage,
    TrainSettings,
    VideoStage,
)
from .tokens import prompter

log = logging.getLogger(__name__)

ENCODE_CHUNK = 32  # clips through the tower at once
CACHE = "pool-tokens.pt"
BACKGROUND_WEIGHT = 0.1


# ------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataSpec:
    """Builds batch `step` of a stage; small and picklable, so data workers can hold it."""

    stage: str
    settings: StageSettings
    seed: int
    low_res: int
    h264: bool

    def __call__(self, step: int, held_out: bool) -> Any:
        rng = D.step_rng(self.seed, self.stage, step, held_out=held_out)
        s = self.settings
        if isinstance(s, TowerStage):
            return T.tower_batch(
                s.batch,
                rng,
                size=self.low_res,
                h264=self.h264,
                held_out=held_out,
                needle_share=s.needle_share,
                plain_share=0.0 if held_out else s.plain_share,
                mix_share=0.0 if held_out else s.mix_share,
                objects=s.objects,
            )
        p = prompter()
        if isinstance(s, TextStage):
            return D.text_batch(p, s.batch, rng, held_out=held_out)
        if isinstance(s, LongStage):
            if rng.random() < s.long_share:
                if held_out:
                    return D.held_out_long_batch(p, s, rng, size=self.low_res, h264=self.h264)
                return D.long_batch(p, s, rng, seed=self.seed, size=self.low_res, h264=self.h264)
            return D.short_batch(p, s, rng, size=self.low_res, h264=self.h264, held_out=held_out)
        if isinstance(s, HiresStage):
            return D.short_batch(
                p,
                s,
                rng,
                size=s.image_size,
                h264=self.h264,
                held_out=held_out,
                short_side=s.image_size,
                config=WorldConfig(small_rate=s.small_rate),
                prefer_hires=s.hires_share,
            )
        assert isinstance(s, VideoStage)
        kinds = ("caption",) if self.stage == "align" else D.QUESTION_KINDS
        return D.short_batch(p, s, rng, size=self.low_res, h264=self.h264, held_out=held_out, kinds=kinds)


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------- stages


class Stage:
    """What the loop needs of every stage (see loop.StageTask); subclasses fill in the model side."""

    name: str

    parts: Parts

    def __init__(self, name: str, train: TrainSettings, cfg: FlashConfig, after: str) -> None:
        self.name = name
        self.train = train
        self.settings: StageSettings = train.stage(name)
        self.cfg = cfg
        self.after = after  # fingerprint digest of the stage this one starts from ("" for none)
        self.data = DataSpec(name, self.settings, train.seed, train.low_res, train.h264)

    def fingerprint(self) -> dict[str, Any]:
        skip = {"steps", "save_every", "eval_every", "eval_items", "log_every"}
        return {
            "stage": self.name,
            "seed": self.train.seed,
            "model": digest([asdict(self.cfg.vision), asdict(self.cfg.merge), asdict(self.cfg.llm)]),
            "low_res": self.train.low_res,
            "h264": self.train.h264,
            "settings": self.settings.model_dump(mode="json", exclude=skip),
            "after": self.after,
        }

    def prepare(self, stage_dir: Path, opts: RunOptions) -> None:
        """Work before the first step (the long stage encodes its pool of worlds)."""

    def to(self, device: torch.device) -> None:
        self.parts.to(device)
        for m in self.modules().values():
            m.to(device)

    def modules(self) -> dict[str, nn.Module]:
        """What a checkpoint holds: the trained modules (frozen ones come back from the start state)."""
        raise NotImplementedError

    def trainable(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def loss(self, batch: Any) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def evaluate(self, batches: list[Any]) -> dict[str, Any]:
        raise NotImplementedError

    def final_state(self) -> dict[str, Tensor]:
        raise NotImplementedError


class TowerTask(Stage):
    """Stage 0, tower: attribute heads on its patch tokens and on pooled objects, needles, frames."""

    def __init__(self, train: TrainSettings, cfg: FlashConfig) -> None:
        super().__init__("tower", train, cfg, "")
        self.parts = Parts(cfg, train.low_res)
        init_weights(self.parts.tower, train.seed * 3, layers=cfg.vision.layers)
        width = cfg.vision.width
        self.heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in T.HEADS})
        self.patch_heads = nn.ModuleDict({name: nn.Linear(width, n) for name, n in T.PATCH_HEADS})
        init_weights(self.heads, train.seed * 3 + 100, layers=1)
        init_weights(self.patch_heads, train.seed * 3 + 101, layers=1)
        # background patches are most of every frame: they count for less, so objects are learnt
        self._weights: dict[str, Tensor] = {}
        for name, classes, background in (
            ("patch_colour", T.PATCH_HEADS[0][1], T.BACKGROUND_COLOUR),
            ("patch_shape", T.PATCH_HEADS[1][1], T.BACKGROUND_SHAPE),
        ):
            w = torch.ones(classes)
            w[background] = BACKGROUND_WEIGHT
            self._weights[name] = w

    def modules(self) -> dict[str, nn.Module]:
        return {"tower": self.parts.tower, "heads": self.heads, "patch_heads": self.patch_heads}

    def to(self, device: torch.device) -> None:
        super().to(device)
        self._weights = {k: v.to(device) for k, v in self._weights.items()}

    def trainable(self) -> list[nn.Parameter]:
        return [*self.parts.tower.parameters(), *self.heads.parameters(), *self.patch_heads.parameters()]

    def _outputs(self, batch: T.TowerBatch) -> list[tuple[str, Tensor, Tensor]]:
        """(head, logits [N, classes], targets [N]) for every head, instance heads then patch heads."""
        device = self.parts.device
        features = self.parts.tower(_pixels(batch.clips, device))  # [B, P, C]
        pool = torch.from_numpy(batch.pool).to(device, features.dtype)  # [B, K, P]
        pooled = torch.bmm(pool, features).flatten(0, 1)  # [B*K, C]
        labels = torch.from_numpy(batch.labels).to(device).flatten(0, 1)  # [B*K, heads]
        patch_labels = torch.from_numpy(batch.patch_labels).to(device).flatten(0, 1)  # [B*P, heads]
        tokens = features.flatten(0, 1)
        out = [(name, self.heads[name](pooled).float(), labels[:, i]) for i, (name, _) in enumerate(T.HEADS)]
        for i, (name, _) in enumerate(T.PATCH_HEADS):
            out.append((f"patch_{name}", self.patch_heads[name](tokens).float(), patch_labels[:, i]))
        return out

    def loss(self, batch: T.TowerBatch) -> tuple[Tensor, dict[str, float]]:
        total: Tensor | None = None
        stats: dict[str, float] = {}
        for name, logits, target in self._outputs(batch):
            keep = target >= 0
            if bool(keep.any()):
                term = F.cross_entropy(logits[keep], target[keep], weight=self._weights.get(name))
                total = term if total is None else total + term
                stats[f"acc_{name}"] = round(
                    float((logits[keep].argmax(-1) == target[keep]).float().mean()), 4
                )
        assert total is not None, "a tower batch always has frame targets"
        return total, stats

    def evaluate(self, batches: list[T.TowerBatch]) -> dict[str, Any]:
        hits: dict[str, list[float]] = defaultdict(list)
        losses = []
        for batch in batches:
            loss, _ = self.loss(batch)
            losses.append(float(loss))
            for name, logits, target in self._outputs(batch):
                # patches of things only: background patches are most of a frame and easy
                keep = (target >= 0) & ~_background(name, target)
                hits[name].extend((logits[keep].argmax(-1) == target[keep]).float().tolist())
        acc = {name: round(sum(v) / len(v), 4) for name, v in hits.items() if v}
        return {"loss": round(sum(losses) / len(losses), 4), "accuracy": acc}

    def final_state(self) -> dict[str, Tensor]:
        return {f"tower.{k}": v.detach().cpu().clone() for k, v in self.parts.tower.state_dict().items()}


def _background(head: str, target: Tensor) -> Tensor:
    if head == "patch_colour":
        return target == T.BACKGROUND_COLOUR
    if head == "patch_shape":
        return target == T.BACKGROUND_SHAPE
    return torch.zeros_like(target, dtype=torch.bool)


class TextTask(Stage):
    """Stage 0, text: the LLM alone on captions, questions and answers."""

    def __init__(self, train: TrainSettings, cfg: FlashConfig) -> None:
        super().__init__("text", train, cfg, "")
        self.parts = Parts(cfg, train.low_res)
        init_weights(self.parts.llm, train.seed * 3 + 2, layers=cfg.llm.num_hidden_layers)

    def modules(self) -> dict[str, nn.Module]:
        return {"llm": self.parts.llm}

    def trainable(self) -> list[nn.Parameter]:
        return list(self.parts.llm.parameters())

    def loss(self, batch: D.Batch) -> tuple[Tensor, dict[str, float]]:
        out = sequence_outputs(self.parts, batch, [])
        return out.loss, {"token_acc": out.token_accuracy}

    def evaluate(self, batches: list[D.Batch]) -> dict[str, Any]:
        return summarise([sequence_outputs(self.parts, b, []) for b in batches])

    def final_state(self) -> dict[str, Tensor]:
        return {f"llm.{k}": v.detach().cpu().clone() for k, v in self.parts.llm.state_dict().items()}


class VideoTask(Stage):
    """Stages 1, 2 and 4: short videos through tower, merge, projector and LLM."""

    def __init__(
        self,
        name: str,
        train: TrainSettings,
        cfg: FlashConfig,
        start: dict[str, Tensor],
        after: str,
    ) -> None:
        super().__init__(name, train, cfg, after)
        s = self.settings
        assert isinstance(s, VideoStage)
        size = s.image_size if isinstance(s, HiresStage) else train.low_res
        self.parts = fresh_parts(cfg, train.seed, size)
        missing = self.parts.load_state_dict(start, strict=False).missing_keys
        if any(not k.startswith("projector.") for k in missing):
            raise TrainError(f"stage {name}: the previous stage's weights lack {missing[0]}")
        self.train_parts = tuple(s.train)
        self.params = self.parts.train_only(self.train_parts)

    def modules(self) -> dict[str, nn.Module]:
        return {name: self.parts.part(name) for name in self.train_parts}

    def trainable(self) -> list[nn.Parameter]:
        return self.params

    def visual(self, batch: D.Batch) -> list[Tensor]:
        return video_embeddings(self.parts, batch, grad_tower="tower" in self.train_parts)

    def loss(self, batch: D.Batch) -> tuple[Tensor, dict[str, float]]:
        out = sequence_outputs(self.parts, batch, self.visual(batch))
        return out.loss, {"token_acc": out.token_accuracy, "exact": out.exact_share}

    def evaluate(self, batches: list[D.Batch]) -> dict[str, Any]:
        return summarise([sequence_outputs(self.parts, b, self.visual(b)) for b in batches])

    def final_state(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.parts.state_dict().items()}


class LongTask(VideoTask):
    """Stage 3: the tower is frozen; a pool of worlds is encoded once and long streams are read from
    that cache, with needle clips encoded on their own and spliced in."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        s = self.settings
        assert isinstance(s, LongStage)
        longest = max(s.long_clips) * self.cfg.merge.tokens_per_clip + 256
        if longest > self.cfg.llm.max_position_embeddings:
            raise TrainError(
                f"stage long: streams of {max(s.long_clips)} clips need about {longest} positions, more "
                f"than the model's {self.cfg.llm.max_position_embeddings}; shorten long_clips"
            )
        self.cache: Tensor | None = None

    def prepare(self, stage_dir: Path, opts: RunOptions) -> None:
        s = self.settings
        assert isinstance(s, LongStage)
        key = digest(
            {"after": self.after, "worlds": s.worlds, "clips": max(s.long_clips), "f": self.fingerprint()}
        )
        stage_dir.mkdir(parents=True, exist_ok=True)
        path = stage_dir / CACHE
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if saved.get("key") == key:
                self.cache = saved["tokens"].to(self.parts.device)
                return
        self.cache = encode_pool(self.parts, self.data, s, opts)
        torch.save({"key": key, "tokens": self.cache.cpu()}, path)

    def visual(self, batch: D.Batch) -> list[Tensor]:
        return video_embeddings(self.parts, batch, grad_tower=False, cache=self.cache)


def _pixels(clips: np.ndarray, device: torch.device) -> Tensor:
    from .parts import pixels

    return pixels(torch.from_numpy(clips).to(device))


# ----------------------------------------------------------------------------- video -> embeddings


def encode_clips(parts: Parts, clips: np.ndarray | Tensor, *, grad: bool) -> Tensor:
    """uint8 clips [N, T, S, S, 3] -> merged tower tokens [N, tokens, width], in chunks."""
    out = []
    for i in range(0, len(clips), ENCODE_CHUNK):
        # the pool's DataLoader hands its numpy clips over as tensors (default_convert)
        chunk = torch.as_tensor(clips[i : i + ENCODE_CHUNK])
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            out.append(parts.encode(chunk))
    return torch.cat(out)


def video_embeddings(
    parts: Parts, batch: D.Batch, *, grad_tower: bool, cache: Tensor | None = None
) -> list[Tensor]:
    """Each video's visual embeddings for the LLM: [clips * tokens, hidden]."""
    fresh = [v.clips for v in batch.videos if len(v.clips)]
    tokens = encode_clips(parts, np.concatenate(fresh), grad=grad_tower) if fresh else None
    out, used = [], 0
    for v in batch.videos:
        mine = tokens[used : used + len(v.clips)] if tokens is not None else None
        used += len(v.clips)
        if v.pool is not None:
            if cache is None:
                raise TrainError("a long stream needs the pool's cached tokens (LongTask.prepare)")
            world, n = v.pool
            base = cache[world, :n].to(parts.device)
            if v.at:
                assert mine is not None
                index = torch.tensor(v.at, device=base.device)
                base = base.index_copy(0, index, mine.to(base.dtype))
            mine = base
        assert mine is not None
        out.append(parts.project(mine))
    return out


def encode_pool(parts: Parts, spec: DataSpec, s: LongStage, opts: RunOptions) -> Tensor:
    """Tokens of the pool's worlds, clip by clip: [worlds, clips, tokens, width] (tower frozen)."""
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    clips = max(s.long_clips)
    chunk = 16
    jobs = [(w, c, min(chunk, clips - c)) for w in range(s.worlds) for c in range(0, clips, chunk)]
    width, per_clip = parts.cfg.vision.width, parts.cfg.merge.tokens_per_clip
    cache = torch.empty(s.worlds, clips, per_clip, width, dtype=torch.float32, device=parts.device)
    render = _PoolRender(spec.seed, spec.low_res, spec.h264, jobs)
    loader: Any = (
        (render[i] for i in range(len(jobs)))
        if opts.workers == 0
        else DataLoader(render, batch_size=None, num_workers=opts.workers, shuffle=False)
    )
    with torch.no_grad(), torch.autocast(opts.device.type, dtype=torch.bfloat16, enabled=opts.autocast):
        for (w, c, n), rendered in tqdm(
            zip(jobs, loader, strict=True), total=len(jobs), desc="encode pool", disable=not opts.progress
        ):
            cache[w, c : c + n] = encode_clips(parts, rendered, grad=False).float()
    return cache


class _PoolRender(torch.utils.data.Dataset[np.ndarray]):
    def __init__(self, seed: int, size: int, h264: bool, jobs: list[tuple[int, int, int]]) -> None:
        self.seed, self.size, self.h264, self.jobs = seed, size, h264, jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> np.ndarray:
        w, c, n = self.jobs[i]
        return D.pool_clips(self.seed, w, c, n, self.size, h264=self.h264)


# ------------------------------------------------------------------------------------ the LLM side


@dataclass
class SequenceOutputs:
    loss: Tensor
    token_accuracy: float
    exact: list[bool]  # per row: every answer token right (what greedy decoding would write)
    kinds: list[str]
    hires: list[bool]
    row_loss: list[float]

    @property
    def exact_share(self) -> float:
        return round(sum(self.exact) / max(1, len(self.exact)), 4)


def sequence_outputs(parts: Parts, batch: D.Batch, visual: list[Tensor]) -> SequenceOutputs:
    """Teacher-forced pass over every row: mean over rows of each row's mean token loss on its
    targets, and whether greedy decoding would write each row's answer exactly."""
    llm = parts.llm
    device, dtype = llm.device, llm.dtype
    seqs, starts = [], []
    for row in batch.rows:
        pieces = [llm.embed(torch.tensor([row.prefix], device=device))[0].to(dtype)]
        if row.video >= 0:
            pieces.append(visual[row.video].to(dtype))
        starts.append(sum(p.shape[0] for p in pieces))
        pieces.append(llm.embed(torch.tensor([row.text], device=device))[0].to(dtype))
        seqs.append(torch.cat(pieces))
    x = nn.utils.rnn.pad_sequence(seqs, batch_first=True)  # [B, T, C], right-padded (causal: harmless)
    hidden = llm.hidden_states(x)
    rows_i, pos, targets, owner, is_answer = [], [], [], [], []
    for i, (row, start) in enumerate(zip(batch.rows, starts, strict=True)):
        for j in range(row.loss_from, len(row.text)):
            rows_i.append(i)
            pos.append(start + j - 1)
            targets.append(row.text[j])
            owner.append(i)
            is_answer.append(j >= row.answer_from)
    h = hidden[torch.tensor(rows_i, device=device), torch.tensor(pos, device=device)]
    logits = llm.row_logits(h)  # [N, rows] float32: a restricted vocabulary's rows, else every id's
    target = llm.rows(torch.tensor(targets, device=device)).to(device)
    token_loss = F.cross_entropy(logits, target, reduction="none")
    own = torch.tensor(owner, device=device)
    n_rows = len(batch.rows)
    counts = torch.zeros(n_rows, device=device).index_add_(0, own, torch.ones_like(token_loss))
    row_loss = torch.zeros(n_rows, device=device).index_add_(0, own, token_loss) / counts
    right = (logits.argmax(-1) == target).cpu().tolist()
    exact = [True] * n_rows
    for i, ok, ans in zip(owner, right, is_answer, strict=True):
        if ans and not ok:
            exact[i] = False
    return SequenceOutputs(
        loss=row_loss.mean(),
        token_accuracy=round(sum(right) / len(right), 4),
        exact=exact,
        kinds=[r.kind for r in batch.rows],
        hires=[r.hires for r in batch.rows],
        row_loss=row_loss.detach().cpu().tolist(),
    )


def summarise(outputs: list[SequenceOutputs]) -> dict[str, Any]:
    """Held-out loss, exact-match accuracy overall, per question kind and on small-object questions."""
    by_kind: dict[str, list[bool]] = defaultdict(list)
    exact, hires, losses = [], [], []
    for out in outputs:
        losses.extend(out.row_loss)
        for ok, kind, small in zip(out.exact, out.kinds, out.hires, strict=True):
            exact.append(ok)
            by_kind[kind].append(ok)
            if small:
                hires.append(ok)
    result: dict[str, Any] = {
        "loss": round(sum(losses) / max(1, len(losses)), 4),
        "accuracy": round(sum(exact) / max(1, len(exact)), 4),
        "items": len(exact),
        "per_kind": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_kind.items())},
    }
    if hires:
        result["hires_accuracy"] = round(sum(hires) / len(hires), 4)
    return result
