"""Qwen2 decoder with progressive visual dropout: prefill and decode over a KV cache.

The module tree (and so the state_dict keys) is the one of transformers' `Qwen2ForCausalLM`, so its
weights load with strict=True. The maths is Qwen2's: RMSNorm (fp32 inside), q/k/v with bias, o without,
rotary embedding (theta from the config, the cos/sin tables computed in fp32), grouped-query attention,
SwiGLU MLP. Compute runs in the parameters' dtype: keep fp32 on CPU (`to_runtime`), bf16/fp16 on CUDA.

Progressive visual dropout (prefill only; see `flashlive.model.dropout` for the selection rules). Before
layer `dropout.layers[s]` the visual tokens of the current sequence are cut down, the sequence becomes
prefix + kept visual + suffix, and its positions are renumbered 0..T'-1. Layers before a drop have cached
the full-length K/V; later layers cache the shorter sequence. So every layer's cached sequence is
contiguous from position 0, and a decoded token takes, in each layer, the position equal to that layer's
cache length. This is exactly what the release does: its decode step starts from position
len(full prompt) + n (from the attention mask's cumsum) and, at each drop layer, subtracts
int(N * ratios[s]) - int(N * ratios[s + 1]), the number of tokens that stage dropped.

Restricted vocabulary (`LLMConfig.vocab_ids`, see `flashlive.model.vocab_rows`): embed_tokens and
lm_head hold rows for the kept ids only; `embed` takes token ids and `logits` returns logits over all
ids (-inf where an id has no row), so callers never see rows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flashlive.model.attention import attend
from flashlive.model.config import DropoutConfig, LLMConfig
from flashlive.model.dropout import (
    DropoutError,
    attention_keep,
    check_dropout,
    last_token_visual_attention,
    stage_counts,
    stage_modes,
    uniform_keep,
)
from flashlive.model.kv_cache import BatchKVCache, KVCache
from flashlive.model.vocab_rows import embedding_rows, vocab_rows

Cache: TypeAlias = KVCache | BatchKVCache

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- rotary


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos, sin: [..., head_dim] for integer positions [...] ([T] or [B, T]). Built in fp32, then cast."""
    inv_freq = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim)
    )
    freqs = positions.float()[..., None] * inv_freq  # [..., D/2]
    emb = torch.cat((freqs, freqs), dim=-1)  # [..., D]
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """x: [B, H, T, D]; cos/sin: [T, D], or [B, 1, T, D] for per-row positions."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


# --------------------------------------------------------------------------------------------- modules


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        # normalise in fp32 whatever the compute dtype, as Qwen2 does
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        )
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: Cache | None, layer: int) -> Tensor:
        b, t, _ = x.shape  # x: [B, T, C]
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, T, D]
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # [B, H, T, D]; a cache stores k, v and attends over everything it held before too
        o = cache.attend(layer, q, k, v) if cache is not None else attend(q, k, v, causal=True)
        return self.o_proj(o.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: Cache | None, layer: int) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, layer)  # x: [B, T, C]
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen2Model(nn.Module):
    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(embedding_rows(cfg), cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


# ---------------------------------------------------------------------------------------------- output


@dataclass
class DropStage:
    """What one dropout stage did. Indices count the ORIGINAL visual tokens (0..N-1)."""

    layer: int  # the drop happened before this layer
    mode: str  # "uniform" or "attention"
    candidates: Tensor  # [n] long: the visual tokens entering the stage, increasing
    kept: Tensor  # [k] long: the ones kept, increasing
    scores: Tensor | None  # [n] float32: last prompt token's attention to `candidates` (attention stages)


@dataclass
class PrefillOutput:
    logits: Tensor  # [B, V] float32, at the last position
    cache: KVCache
    visual: tuple[int, int] | None  # (start, count) of the visual tokens in the input
    stages: list[DropStage] = field(default_factory=list)

    @property
    def visual_kept(self) -> list[int]:
        """Visual tokens left after each stage."""
        return [len(s.kept) for s in self.stages]

    @property
    def kept_indices(self) -> list[Tensor]:
        return [s.kept for s in self.stages]

    @property
    def attention(self) -> list[Tensor | None]:
        """Per stage, the attention scores that chose the tokens (None for uniform stages)."""
        return [s.scores for s in self.stages]


# ----------------------------------------------------------------------------------------------- model


class Qwen2LM(nn.Module):
    """Qwen2ForCausalLM-compatible decoder. State dict keys match transformers' exactly."""

    def __init__(self, cfg: LLMConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Qwen2Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, self.model.embed_tokens.num_embeddings, bias=False)
        self.vocab = vocab_rows(cfg)  # None: one row per id
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
            # tied checkpoints may omit lm_head.weight: fill it from the embedding so strict loading works
            self.register_load_state_dict_pre_hook(_fill_tied_head)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def new_cache(self) -> KVCache:
        return KVCache(self.config.num_hidden_layers)

    def embed(self, token_ids: Tensor) -> Tensor:
        """token_ids: [B, T] -> [B, T, C] in the compute dtype."""
        return self.model.embed_tokens(self.rows(token_ids).to(self.device))

    def rows(self, token_ids: Tensor) -> Tensor:
        """The embedding / output row of each token id (the id itself unless the vocabulary is restricted)."""
        return token_ids if self.vocab is None else self.vocab.rows(token_ids)

    def forward(self, embeds: Tensor, *, rows: bool = False) -> Tensor:
        """Full causal forward, no cache or dropout (training, reference): [B, T, C] -> [B, T, V].

        rows: logits over the output rows [B, T, R] instead (training with a restricted vocabulary:
        cross-entropy against `rows(targets)`, without materialising the full id space).
        """
        x = self.hidden_states(embeds)
        return self.row_logits(x) if rows else self.logits(x)

    def hidden_states(self, embeds: Tensor) -> Tensor:
        """The last layer's output before the final norm: [B, T, C] -> [B, T, C].

        Training takes the logits of a few positions from it (the answer's), not of all T x V.
        """
        x = embeds.to(self.device, self.dtype)
        cos, sin = self._rope(0, x.shape[1])
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, None, i)
        return x

    @torch.inference_mode()
    def prefill(
        self,
        embeds: Tensor,
        visual: tuple[int, int] | None = None,
        dropout: DropoutConfig | None = None,
        cache: KVCache | None = None,
        *,
        forced_keep: Sequence[Tensor] | None = None,
    ) -> PrefillOutput:
        """Run the prompt through the decoder, filling `cache`; return the last position's logits.

        embeds: [B, T, C], the prompt with the visual embeddings spliced in at visual=(start, count).
        dropout: progressive visual dropout for this call (None: off). Needs B == 1 and an empty cache.
        cache: continue from this cache (e.g. a cached visual prefix, or a previous turn): each layer's new
            tokens take positions from that layer's cache length on. Without dropout only; `visual` then
            counts from the start of `embeds`, not of the cache.
        forced_keep: per stage, the original visual indices to keep instead of selecting them (to replay a
            selection, e.g. for a reference computation); lengths must match the stage counts.
        """
        cache = cache if cache is not None else self.new_cache()
        x = embeds.to(self.device, self.dtype)  # [B, T, C]
        b, t, _ = x.shape
        if visual is not None and not (visual[0] >= 0 and visual[1] >= 0 and visual[0] + visual[1] <= t):
            raise ValueError(f"visual span {visual} does not fit a prompt of {t} embeddings")
        drop = dropout is not None and visual is not None and visual[1] > 0
        if dropout is not None and drop:
            if b != 1:
                raise DropoutError(f"visual dropout runs on one sequence at a time, got a batch of {b}")
            if not cache.empty:
                raise DropoutError(
                    "visual dropout with a cached prefix is not supported yet: prefill the whole prompt "
                    "into an empty cache, or turn dropout off"
                )
            check_dropout(dropout, self.config.num_hidden_layers)
            if forced_keep is not None and len(forced_keep) != len(dropout.layers):
                raise DropoutError(f"forced_keep needs {len(dropout.layers)} stages, got {len(forced_keep)}")
        stages: list[DropStage] = []
        kept = torch.arange(visual[1]) if visual is not None else torch.arange(0)
        base = cache.lengths
        for i, layer in enumerate(self.model.layers):
            if dropout is not None and drop and i in dropout.layers:
                assert visual is not None
                s = dropout.layers.index(i)
                forced = forced_keep[s] if forced_keep is not None else None
                x, stage = self._drop(x, i, s, visual, kept, dropout, forced)
                kept = stage.kept
                stages.append(stage)
            cos, sin = self._rope(base[i], x.shape[1])
            x = layer(x, cos, sin, cache, i)
        logits = self.logits(x[:, -1])  # [B, V]
        return PrefillOutput(logits=logits, cache=cache, visual=visual, stages=stages)

    @torch.inference_mode()
    def decode(self, token_ids: Tensor, cache: KVCache) -> Tensor:
        """One step: token_ids [B, 1] -> logits [B, V] float32, appending to `cache`.

        In each layer the token's position is that layer's cache length (see the module docstring).
        """
        x = self.embed(token_ids).to(self.dtype)  # [B, 1, C]
        for i, layer in enumerate(self.model.layers):
            cos, sin = self._rope(cache.length(i), x.shape[1])
            x = layer(x, cos, sin, cache, i)
        return self.logits(x[:, -1])

    def rope(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """cos, sin for integer positions [T] -> [T, D], or [B, T] -> [B, 1, T, D] (per-row positions)."""
        cos, sin = rope_cos_sin(
            positions.to(self.device), self.config.head_dim, self.config.rope_theta, self.dtype
        )
        if positions.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]
        return cos, sin

    def logits(self, h: Tensor) -> Tensor:
        """Final norm and head: hidden states [..., C] -> logits [..., V] float32."""
        out = self.row_logits(h)
        return out if self.vocab is None else self.vocab.scatter(out)

    def row_logits(self, h: Tensor) -> Tensor:
        """Final norm and head over the output rows: [..., C] -> [..., R] float32 (R = V unrestricted)."""
        return self.lm_head(self.model.norm(h)).float()

    def selection_keys(self, layer: int, h: Tensor, start: int) -> Tensor:
        """Layer `layer`'s keys for hidden states h: [T, C] at positions start.. -> [Hkv, T, D].

        What an attention dropout stage before `layer` scores against (input norm, k_proj, rotary).
        """
        attn = self._attn(layer)
        t = h.shape[0]
        k = (
            attn.k_proj(self._block(layer).input_layernorm(h))
            .view(t, attn.n_kv, attn.head_dim)
            .transpose(0, 1)
        )
        cos, sin = self._rope(start, t)
        return apply_rope(k, cos, sin)

    def selection_query(self, layer: int, h_last: Tensor, position: int) -> Tensor:
        """Layer `layer`'s query of one token's hidden state h_last: [C] at `position` -> [H, D]."""
        attn = self._attn(layer)
        q = attn.q_proj(self._block(layer).input_layernorm(h_last[None]))
        q = q.view(1, attn.n_heads, attn.head_dim).transpose(0, 1)  # [H, 1, D]
        cos, sin = self._rope(position, 1)
        return apply_rope(q, cos, sin)[:, 0]

    def visual_attention(self, x: Tensor, layer: int, start: int, count: int) -> Tensor:
        """Layer `layer`'s attention from the last token of x: [T, C] to its visual tokens: [count]."""
        keys = self.selection_keys(layer, x, 0)
        q = self.selection_query(layer, x[-1], x.shape[0] - 1)
        return last_token_visual_attention(q, keys, start, count)

    # -------------------------------------------------------------------------------------- internals

    def _block(self, layer: int) -> DecoderLayer:
        block = self.model.layers[layer]
        assert isinstance(block, DecoderLayer)
        return block

    def _attn(self, layer: int) -> Attention:
        return self._block(layer).self_attn

    def _rope(self, start: int, length: int) -> tuple[Tensor, Tensor]:
        pos = torch.arange(start, start + length, device=self.device)
        return rope_cos_sin(pos, self.config.head_dim, self.config.rope_theta, self.dtype)

    def _drop(
        self,
        x: Tensor,
        layer: int,
        stage: int,
        visual: tuple[int, int],
        kept: Tensor,
        dropout: DropoutConfig,
        forced: Tensor | None,
    ) -> tuple[Tensor, DropStage]:
        """Cut the visual tokens of x: [1, T, C] before `layer`; return the new x and the stage record."""
        start, n_orig = visual
        counts = stage_counts(n_orig, dropout.ratios)
        n, k = counts[stage], counts[stage + 1]
        assert n == len(kept), (n, len(kept))  # holds because ratios[0] == 1 and ratios never increase
        mode = stage_modes(dropout.mode, len(dropout.layers))[stage]
        scores: Tensor | None = None
        if mode == "attention":
            scores = self.visual_attention(x[0], layer, start, n)
        if forced is not None:
            forced = forced.to("cpu", torch.long)
            local = torch.searchsorted(kept, forced)
            if (
                len(forced) != k
                or bool((local >= n).any())
                or not torch.equal(kept[local.clamp(max=n - 1)], forced)
            ):
                raise DropoutError(
                    f"forced_keep for stage {stage} must be {k} increasing indices out of the {n} visual "
                    "tokens entering that stage"
                )
        elif mode == "uniform":
            local = uniform_keep(n, k)
        else:
            assert scores is not None
            local = attention_keep(scores, k)
        idx = local.to(x.device) + start
        x = torch.cat([x[:, :start], x[:, idx], x[:, start + n :]], dim=1)
        scores = scores.cpu() if scores is not None else None
        return x, DropStage(layer=layer, mode=mode, candidates=kept, kept=kept[local.cpu()], scores=scores)


def _fill_tied_head(module: nn.Module, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    head, embed = prefix + "lm_head.weight", prefix + "model.embed_tokens.weight"
    if head not in state_dict and embed in state_dict:
        state_dict[head] = state_dict[embed]


@torch.no_grad()
def random_init_(lm: Qwen2LM, seed: int, std: float = 0.1) -> Qwen2LM:
    """Fill with seeded random weights (norm gains near 1): for tests, benchmarks and toy presets."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in lm.named_parameters():  # tied weights are listed once
        if p.device.type == "cpu":
            p.normal_(1.0 if name.endswith("norm.weight") else 0.0, std, generator=gen)
        else:  # keep the values device-independent: draw on the CPU
            p.copy_(
                torch.empty(p.shape).normal_(1.0 if name.endswith("norm.weight") else 0.0, std, generator=gen)
            )
    return lm


def to_runtime(lm: Qwen2LM, device: str | torch.device, dtype: torch.dtype = torch.bfloat16) -> Qwen2LM:
    """Move to `device`; CPU always computes in fp32 (bf16 matmuls are ~5x slower there)."""
    device = torch.device(device)
    return lm.to(device=device, dtype=torch.float32 if device.type == "cpu" else dtype)


def load_llm_state(lm: Qwen2LM, state: Mapping[str, Tensor]) -> None:
    """Strict load of a `Qwen2ForCausalLM`-layout state dict (lm_head may be absent when tied)."""
    lm.load_state_dict(dict(state), strict=True)
