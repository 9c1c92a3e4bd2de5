"""The model runner: runs prefixes, batched question prefills and batched decode steps on the LLM.

No scheduling, no text: it takes embeddings and token ids and returns logits, caches and what the
dropout stages chose. `flashlive.model.engine` decides what to run; this module runs it.

Exactness. Every result equals a plain `Qwen2LM.prefill` of the whole prompt (prefix text + video +
question) within float tolerance, with the same tokens kept by every dropout stage:

- Causal attention makes the prefix's hidden states and K/V independent of what follows it.
- A uniform stage keeps `linspace` indices that depend only on the visual count N, so it runs in the
  prefix; positions after it are renumbered there exactly as in the full prefill.
- The first attention stage needs the question's last token. The prefix stops before that layer
  and keeps the hidden states entering it (and that layer's selection keys); each question then
  runs its own tokens through the shared layers (attending to the prefix in place), scores the
  visual tokens with its own last token, and continues on prefix text + its kept visual tokens +
  its own tokens through the remaining layers, as the full prefill would.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from flashlive.model.config import DropoutConfig
from flashlive.model.dropout import DropoutPlan, attention_keep, last_token_visual_attention, uniform_keep
from flashlive.model.errors import ModelError
from flashlive.model.kv_cache import BatchKVCache, KVCache
from flashlive.model.llm import DropStage, Qwen2LM

log = logging.getLogger(__name__)

PREFILL_CHUNK = 2048  # prefix tokens per forward: bounds activation memory for hour-long windows
# tokens per forward in the per-question layers after an attention stage (rows are split to fit)
QUESTION_TOKENS = 8192
# The model card's text-guided stage sits at layer 18 of 28; evidence without such a stage is read
# from the same depth (scaled to the model's layer count).
EVIDENCE_DEPTH = 18 / 28


class PrefixCancelled(ModelError):
    """A prefix computation was stopped by its `cancel` callback."""


@dataclass(eq=False)
class VisualPrefix:
    """The prompt up to the end of the video, through the layers that do not depend on the question.

    Read-only once built: any number of questions continue it at once.
    """

    cache: KVCache  # frozen; holds layers [0, plan.shared_layers)
    plan: DropoutPlan
    text_len: int  # prompt tokens before the video
    num_visual: int  # N, before any dropout
    stages: tuple[DropStage, ...]  # the uniform stages run here
    hidden: Tensor | None = None  # [text_len + n, C]: entering the first attention stage's layer
    keys: Tensor | None = None  # [Hkv, text_len + n, D]: that layer's selection keys of `hidden`

    @property
    def has_attention(self) -> bool:
        return self.hidden is not None

    def kept_at(self, layer: int) -> Tensor:
        """Original indices of the visual tokens present in `layer` (after the prefix's stages)."""
        kept = torch.arange(self.num_visual)
        for stage in self.stages:
            if stage.layer <= layer:
                kept = stage.kept
        return kept

    def nbytes(self) -> int:
        extra = sum(t.numel() * t.element_size() for t in (self.hidden, self.keys) if t is not None)
        return self.cache.nbytes() + extra


@dataclass
class BatchPrefill:
    logits: Tensor  # [B, V] float32: each row's next-token logits
    cache: BatchKVCache  # the rows' own K/V, continuing the prefix
    stages: list[list[DropStage]]  # per row: the prefix's uniform stages, then its attention stages
    # per row: (original visual indices, their attention from the last prompt token) for evidence
    attention: list[tuple[Tensor, Tensor] | None] = field(default_factory=list)


class ModelRunner:
    def __init__(
        self,
        llm: Qwen2LM,
        *,
        chunk: int = PREFILL_CHUNK,
        question_tokens: int = QUESTION_TOKENS,
        evidence_layer: int | None = None,
    ) -> None:
        if chunk < 1 or question_tokens < 1:
            raise ValueError(f"chunk sizes must be at least 1 token, got {chunk} and {question_tokens}")
        self.llm = llm
        self.chunk = chunk
        self.question_tokens = question_tokens
        n = llm.config.num_hidden_layers
        self.evidence_layer = (
            min(n - 1, max(0, round(n * EVIDENCE_DEPTH))) if evidence_layer is None else evidence_layer
        )
        if not 0 <= self.evidence_layer < n:
            raise ValueError(f"evidence layer {self.evidence_layer} does not exist (0..{n - 1})")

    @property
    def num_layers(self) -> int:
        return self.llm.config.num_hidden_layers

    # ------------------------------------------------------------------------------------------ prefix

    @torch.inference_mode()
    def compute_prefix(
        self,
        text: Tensor,
        visual: Tensor,
        dropout: DropoutConfig | None = None,
        *,
        cancel: Callable[[], bool] | None = None,
    ) -> VisualPrefix:
        """text: [P, C] embeddings of the prompt before the video; visual: [N, C] projected tokens."""
        llm = self.llm
        p, n = text.shape[0], visual.shape[0]
        plan = DropoutPlan.build(dropout, n, self.num_layers)
        shared = plan.shared_layers
        x = torch.cat([text, visual]).to(llm.device, llm.dtype)[None]  # [1, P+N, C]
        cache = KVCache(self.num_layers)
        kept = torch.arange(n)
        stages: list[DropStage] = []
        bounds = sorted({0, shared, *(k for k in plan.layers if k < shared)})
        for a, b in itertools.pairwise(bounds):
            s = plan.stage_at(a)
            if s is not None:  # a uniform stage (stages before `shared` are uniform)
                assert plan.modes[s] == "uniform"
                local = uniform_keep(plan.counts[s], plan.counts[s + 1])
                x = torch.cat([x[:, :p], x[:, p + local.to(x.device)]], dim=1)
                stages.append(DropStage(a, "uniform", candidates=kept, kept=kept[local], scores=None))
                kept = kept[local]
            x = self._run_chunked(x, cache, range(a, b), cancel)
        hidden = keys = None
        if shared < self.num_layers:
            hidden = x[0]
            keys = llm.selection_keys(shared, hidden, 0)
        cache.freeze()
        return VisualPrefix(cache, plan, p, n, tuple(stages), hidden, keys)

    def _run_chunked(
        self, x: Tensor, cache: KVCache, layers: range, cancel: Callable[[], bool] | None
    ) -> Tensor:
        """Run x: [1, T, C] through `layers`, `chunk` tokens at a time (each chunk attends to the cache)."""
        outs = []
        for c in range(0, x.shape[1], self.chunk):
            h = x[:, c : c + self.chunk]
            for i in layers:
                start = cache.length(i)
                cos, sin = self.llm.rope(torch.arange(start, start + h.shape[1]))
                h = self.llm.model.layers[i](h, cos, sin, cache, i)
            outs.append(h)
            if cancel is not None and cancel():
                raise PrefixCancelled("the prefix computation was cancelled")
        return torch.cat(outs, dim=1)

    # ---------------------------------------------------------------------------------------- prefill

    @torch.inference_mode()
    def prefill(
        self, prefix: VisualPrefix, suffixes: Sequence[Sequence[int]], *, evidence: bool = True
    ) -> BatchPrefill:
        """Prefill each question's own tokens (after the video) as one right-padded batch."""
        if not suffixes or any(len(s) == 0 for s in suffixes):
            raise ValueError("every sequence needs at least one token after the video")
        llm, b = self.llm, len(suffixes)
        lens = torch.tensor([len(s) for s in suffixes])
        ids = torch.zeros(b, int(lens.max()), dtype=torch.long)
        for row, s in enumerate(suffixes):
            ids[row, : len(s)] = torch.tensor(list(s))
        x = llm.embed(ids)  # [B, S, C]
        cache = BatchKVCache(self.num_layers, [prefix.cache] * b)
        cache.set_valid(lens)
        rows = torch.arange(b, device=x.device)
        shared = prefix.plan.shared_layers
        ev_layer = self.evidence_layer if evidence and not prefix.has_attention else None
        ev_hidden = None
        for i in range(shared):
            if i == ev_layer:
                ev_hidden = x[rows, lens.to(x.device) - 1]  # [B, C]: last question tokens entering it
            x = self._layer(x, cache, i)
        stages = [list(prefix.stages) for _ in range(b)]
        attention: list[tuple[Tensor, Tensor] | None] = [None] * b
        if prefix.has_attention:
            last, cache = self._question_part(prefix, x, lens, cache, stages)
            if evidence:
                attention = [_last_attention_stage(row) for row in stages]
        else:
            last = x[rows, lens.to(x.device) - 1]
            if ev_hidden is not None and ev_layer is not None:
                attention = self._evidence_attention(prefix, cache, ev_hidden, lens, ev_layer)
        return BatchPrefill(llm.logits(last), cache, stages, attention)

    def _layer(self, x: Tensor, cache: BatchKVCache, i: int) -> Tensor:
        cos, sin = self.llm.rope(cache.positions(i, x.shape[1]))  # per-row positions: [B, 1, T, D]
        return self.llm.model.layers[i](x, cos, sin, cache, i)

    def _question_part(
        self,
        prefix: VisualPrefix,
        x: Tensor,
        lens: Tensor,
        cache: BatchKVCache,
        stages: list[list[DropStage]],
    ) -> tuple[Tensor, BatchKVCache]:
        """The layers from the first attention stage on, in sub-batches of at most `question_tokens`
        tokens per forward (each row there holds prefix text + its kept visual tokens + its own).

        Returns each row's last hidden state [B, C] and the rows' cache.
        """
        plan, b = prefix.plan, x.shape[0]
        s0 = plan.stage_at(plan.shared_layers)
        assert s0 is not None
        row_tokens = prefix.text_len + plan.counts[s0 + 1] + x.shape[1]
        per = max(1, self.question_tokens // row_tokens)
        if per >= b:
            groups, caches = [list(range(b))], [cache]
        else:
            groups = [list(range(r, min(b, r + per))) for r in range(0, b, per)]
            caches = [cache.take(rows) for rows in groups]
        lasts = []
        for rows, sub in zip(groups, caches, strict=True):
            seq, sub_lens = self._question_layers(
                prefix, x[rows[0] : rows[-1] + 1], lens[rows], sub, [stages[r] for r in rows]
            )
            lasts.append(seq[torch.arange(len(rows), device=seq.device), sub_lens.to(seq.device) - 1])
        return torch.cat(lasts), caches[0] if len(caches) == 1 else BatchKVCache.concat(caches)

    def _question_layers(
        self,
        prefix: VisualPrefix,
        x: Tensor,
        lens: Tensor,
        cache: BatchKVCache,
        stages: list[list[DropStage]],
    ) -> tuple[Tensor, Tensor]:
        """From the first attention stage on, each row runs on prefix text + its kept visual + its tokens."""
        llm, plan, p = self.llm, prefix.plan, prefix.text_len
        assert prefix.hidden is not None and prefix.keys is not None
        first = plan.shared_layers
        s0 = plan.stage_at(first)
        assert s0 is not None
        n, k = plan.counts[s0], plan.counts[s0 + 1]
        candidates = prefix.kept_at(first - 1)
        picks = []
        for row in range(x.shape[0]):
            own = x[row, : int(lens[row])]  # this question's tokens entering layer `first`
            keys = llm.selection_keys(first, own, p + n)
            q = llm.selection_query(first, own[-1], p + n + own.shape[0] - 1)
            scores = last_token_visual_attention(q, [prefix.keys, keys], p, n)
            local = attention_keep(scores, k)
            stages[row].append(DropStage(first, "attention", candidates, candidates[local], scores.cpu()))
            picks.append(local)
        local_idx = torch.stack(picks).to(prefix.hidden.device)  # [B, k]
        head = prefix.hidden[:p].expand(x.shape[0], -1, -1)
        seq = torch.cat([head, prefix.hidden[p + local_idx], x], dim=1)  # [B, P + k + S, C]
        lens = lens + p + k
        cache.set_valid(lens)
        for i in range(first, self.num_layers):
            s = plan.stage_at(i)
            if s is not None and i != first:
                assert plan.modes[s] == "attention"  # uniform stages all come before the first attention
                seq, lens = self._attention_stage(seq, lens, i, s, plan, p, stages)
                cache.set_valid(lens)
            seq = self._layer(seq, cache, i)
        return seq, lens

    def _attention_stage(
        self,
        seq: Tensor,
        lens: Tensor,
        layer: int,
        s: int,
        plan: DropoutPlan,
        p: int,
        stages: list[list[DropStage]],
    ) -> tuple[Tensor, Tensor]:
        """A later text-guided stage, per row, on that row's own (unpadded) sequence."""
        n, k = plan.counts[s], plan.counts[s + 1]
        t = seq.shape[1]
        gathers = []
        for row in range(seq.shape[0]):
            scores = self.llm.visual_attention(seq[row, : int(lens[row])], layer, p, n)
            local = attention_keep(scores, k)
            candidates = stages[row][-1].kept
            stages[row].append(DropStage(layer, "attention", candidates, candidates[local], scores.cpu()))
            gathers.append(torch.cat([torch.arange(p), p + local, torch.arange(p + n, t)]))
        idx = torch.stack(gathers).to(seq.device)  # [B, t - (n - k)]
        return seq.gather(1, idx[..., None].expand(-1, -1, seq.shape[2])), lens - (n - k)

    def _evidence_attention(
        self, prefix: VisualPrefix, cache: BatchKVCache, hidden: Tensor, lens: Tensor, layer: int
    ) -> list[tuple[Tensor, Tensor] | None]:
        """The last prompt token's attention to the visual tokens at one deep layer, from cached keys."""
        if prefix.cache.length(layer) == 0:
            return [None] * hidden.shape[0]
        shared_k = prefix.cache.get(layer)[0][0]  # [Hkv, Ls, D]
        visual = prefix.kept_at(layer)
        out: list[tuple[Tensor, Tensor] | None] = []
        for row in range(hidden.shape[0]):
            own_k = cache.get_own(layer, row)[0]  # [Hkv, s, D]
            position = shared_k.shape[1] + own_k.shape[1] - 1
            q = self.llm.selection_query(layer, hidden[row], position)
            scores = last_token_visual_attention(q, [shared_k, own_k], prefix.text_len, len(visual))
            out.append((visual, scores.cpu()))
        return out

    # ----------------------------------------------------------------------------------------- decode

    @torch.inference_mode()
    def decode(self, cache: BatchKVCache, tokens: Sequence[int]) -> Tensor:
        """One step for every row: its last token in, next-token logits [B, V] out."""
        if len(tokens) != cache.batch:
            raise ValueError(f"{len(tokens)} tokens for a batch of {cache.batch}")
        x = self.llm.embed(torch.tensor(list(tokens))[:, None])  # [B, 1, C]
        cache.set_valid(torch.ones(cache.batch, dtype=torch.long))
        for i in range(self.num_layers):
            x = self._layer(x, cache, i)
        return self.llm.logits(x[:, -1])


def _last_attention_stage(stages: list[DropStage]) -> tuple[Tensor, Tensor] | None:
    for stage in reversed(stages):
        if stage.scores is not None:
            return stage.candidates, stage.scores
    return None
