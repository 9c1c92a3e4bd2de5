"""Restricted vocabulary: embedding and output rows for a chosen set of token ids only.

A model that only ever reads and writes a closed language (the generated world's, docs/world.md) needs a
few hundred of Qwen2's 151,936 rows; the rest would be most of a small model's file. With
`LLMConfig.vocab_ids` set, row r < K of `embed_tokens` / `lm_head` belongs to the r-th kept id (sorted
order) and one more row, K, is shared by every other id (the reserved row). Ids keep their meaning
everywhere outside the LLM: `embed` maps ids to rows on the way in, and the logits are scattered back to
the full id space on the way out, with -inf for ids that have no row (the reserved row's logit is
dropped: it stands for many ids, so it can never be produced). Tokenizer, stop tokens, sampling and
generation_config.json work unchanged.

The checkpoint keeps the released keys (`model.embed_tokens.weight` with K + 1 rows); config.json
carries the kept ids as `flashlive_vocab_ids` (docs/model.md, "The mini preset").
"""

from __future__ import annotations

import functools
import logging

import torch
from torch import Tensor, nn

from flashlive.model.config import WORLD_VOCAB, LLMConfig

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def world_vocab_ids() -> tuple[int, ...]:
    """The ids the generated world's language and its prompts tokenize to (builds the tokenizer once)."""
    from flashlive.model.world.vocab import vocabulary_token_ids

    return tuple(sorted(vocabulary_token_ids()))


def kept_ids(cfg: LLMConfig) -> tuple[int, ...] | None:
    """The ids with a row of their own, in row order; None when every id has its own row."""
    if cfg.vocab_ids == WORLD_VOCAB:
        return world_vocab_ids()
    assert not isinstance(cfg.vocab_ids, str)
    return cfg.vocab_ids


def embedding_rows(cfg: LLMConfig) -> int:
    """Rows of embed_tokens and lm_head: vocab_size, or the kept ids plus the reserved row."""
    ids = kept_ids(cfg)
    return cfg.vocab_size if ids is None else len(ids) + 1


class VocabRows(nn.Module):
    """ids <-> rows for a restricted vocabulary. Holds no weights: nothing of it is in the state dict."""

    row_of: Tensor  # [V] long: the row of each id
    ids: Tensor  # [K] long: the id of each row but the reserved one

    def __init__(self, ids: tuple[int, ...], vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.reserved = len(ids)  # the row of every id not kept
        row_of = torch.full((vocab_size,), self.reserved, dtype=torch.long)  # [V]
        row_of[torch.tensor(ids, dtype=torch.long)] = torch.arange(len(ids))
        self.register_buffer("row_of", row_of, persistent=False)
        self.register_buffer("ids", torch.tensor(ids, dtype=torch.long), persistent=False)  # [K]

    def rows(self, token_ids: Tensor) -> Tensor:
        """token_ids [...] (any id in 0..V-1) -> rows [...] (0..K, K for ids not kept)."""
        if token_ids.numel() and (int(token_ids.min()) < 0 or int(token_ids.max()) >= self.vocab_size):
            raise ValueError(f"token ids must lie in 0..{self.vocab_size - 1}")  # checked where they are
        return self.row_of[token_ids.to(self.row_of.device)]

    def scatter(self, row_logits: Tensor) -> Tensor:
        """Logits over rows [..., K+1] -> over ids [..., V]; ids without a row of their own get -inf."""
        out = row_logits.new_full((*row_logits.shape[:-1], self.vocab_size), float("-inf"))
        out[..., self.ids] = row_logits[..., : self.reserved]
        return out


def vocab_rows(cfg: LLMConfig) -> VocabRows | None:
    ids = kept_ids(cfg)
    return None if ids is None else VocabRows(ids, cfg.vocab_size)
