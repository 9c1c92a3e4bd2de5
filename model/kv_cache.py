"""Key/value caches for the Qwen2 decoder: one sequence (`KVCache`), and a batch of sequences that
continue shared, read-only prefixes (`BatchKVCache`).

Positions are not stored: every layer's sequence is contiguous from position 0, so the rotary position
of the next token in a layer is that layer's current length (see `flashlive.model.llm`). Layers may
hold different lengths (progressive visual dropout shortens the layers after each drop).

A visual prefix is prefilled once into a `KVCache` and frozen. Any number of sequences then continue
it in a `BatchKVCache`: each row keeps only its own tokens (question, answer) and reads the prefix's
K/V in place (`flashlive.model.cascade`), so forking a prefix copies nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from flashlive.model.attention import attend
from flashlive.model.cascade import attention_lse, attention_shared, merge


class KVCache:
    """One growable buffer per layer for one sequence (or B sequences of equal length)."""

    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        # buffers grow by doubling so that decoding one token at a time is amortised O(1) per step
        self._k: list[Tensor | None] = [None] * num_layers  # [B, Hkv, capacity, D]
        self._v: list[Tensor | None] = [None] * num_layers
        self._len: list[int] = [0] * num_layers
        self._frozen = False

    def length(self, layer: int) -> int:
        """Number of cached tokens in `layer`."""
        return self._len[layer]

    @property
    def lengths(self) -> list[int]:
        return list(self._len)

    @property
    def empty(self) -> bool:
        return all(n == 0 for n in self._len)

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        """Make the cache read-only: it is about to be shared by several sequences."""
        self._frozen = True

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add k, v: [B, Hkv, T, D] to `layer`; return the whole cached k, v: [B, Hkv, len, D] (views)."""
        if self._frozen:
            raise RuntimeError("this KV cache is a shared prefix and read-only")
        n, t = self._len[layer], k.shape[2]
        buf_k, buf_v = self._k[layer], self._v[layer]
        if buf_k is None or buf_v is None or n + t > buf_k.shape[2]:
            cap = max(n + t, 2 * (buf_k.shape[2] if buf_k is not None else 0))
            new_k = k.new_empty((*k.shape[:2], cap, k.shape[3]))
            new_v = v.new_empty((*v.shape[:2], cap, v.shape[3]))
            if buf_k is not None and buf_v is not None and n:
                new_k[:, :, :n] = buf_k[:, :, :n]
                new_v[:, :, :n] = buf_v[:, :, :n]
            self._k[layer], self._v[layer] = buf_k, buf_v = new_k, new_v
        assert buf_k is not None and buf_v is not None
        buf_k[:, :, n : n + t] = k
        buf_v[:, :, n : n + t] = v
        self._len[layer] = n + t
        return buf_k[:, :, : n + t], buf_v[:, :, : n + t]

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Append k, v and attend q (the newest tokens) causally over the whole cached layer."""
        k, v = self.append(layer, k, v)  # [B, Hkv, Tk, D], Tk >= T
        return attend(q, k, v, causal=True)  # bottom-right aligned after the cached tokens

    def get(self, layer: int) -> tuple[Tensor, Tensor]:
        """Cached k, v of `layer`: [B, Hkv, len, D]. Raises if the layer is empty."""
        k, v = self._k[layer], self._v[layer]
        if k is None or v is None:
            raise ValueError(f"layer {layer} of the KV cache is empty")
        n = self._len[layer]
        return k[:, :, :n], v[:, :, :n]

    def copy(self) -> KVCache:
        """An independent, writable copy (tensors cloned, trimmed to their used length)."""
        out = KVCache(self.num_layers)
        for i in range(self.num_layers):
            if self._len[i]:
                k, v = self.get(i)
                out._k[i], out._v[i] = k.clone(), v.clone()
                out._len[i] = self._len[i]
        return out

    def truncate(self, length: int) -> None:
        """Forget everything past `length` tokens in every layer (e.g. drop a question after its answer).

        Only meaningful when all layers share one length (no dropout was applied).
        """
        if self._frozen:
            raise RuntimeError("this KV cache is a shared prefix and read-only")
        if len(set(self._len)) > 1:
            raise ValueError(f"cannot truncate a cache whose layers differ in length: {self._len}")
        self._len = [min(n, length) for n in self._len]

    def nbytes(self) -> int:
        return sum(
            2 * n * k.element_size() * k.shape[0] * k.shape[1] * k.shape[3]
            for k, n in zip(self._k, self._len, strict=True)
            if k is not None
        )


class BatchKVCache:
    """Own K/V of B sequences (rows), each continuing an optional shared prefix cache (read in place).

    Per layer, row b holds `own_lengths(layer)[b]` tokens of its own in a padded buffer
    [B, Hkv, capacity, D]; the slots past that length are padding (zeros or overwritten garbage) and
    are never attended by a real token. A token of row b at own index j sits at position
    `prefix length in that layer + j`.

    `attend` writes T new tokens per row at each row's own length and advances it by `valid[b]`
    (set with `set_valid`): rows of a right-padded batch count only their real tokens. Query i of
    row b sees its prefix entirely and its own keys up to own index `length_before[b] + i`.
    """

    def __init__(self, num_layers: int, prefixes: Sequence[KVCache | None]) -> None:
        self.num_layers = num_layers
        self.prefixes: list[KVCache | None] = list(prefixes)
        for p in self.prefixes:
            if p is not None and not p.frozen:
                raise ValueError("a shared prefix cache must be frozen before sequences continue it")
        b = len(self.prefixes)
        self._k: list[Tensor | None] = [None] * num_layers  # [B, Hkv, capacity, D]
        self._v: list[Tensor | None] = [None] * num_layers
        self._len = torch.zeros(num_layers, b, dtype=torch.long)  # own tokens per layer and row
        self._valid = torch.ones(b, dtype=torch.long)

    @property
    def batch(self) -> int:
        return len(self.prefixes)

    def own_lengths(self, layer: int) -> Tensor:
        return self._len[layer].clone()

    def prefix_lengths(self, layer: int) -> Tensor:
        return torch.tensor(
            [p.length(layer) if p is not None else 0 for p in self.prefixes], dtype=torch.long
        )

    def lengths(self, layer: int) -> Tensor:
        """Whole sequence length per row in `layer`: prefix + own tokens. [B] long (CPU)."""
        return self.prefix_lengths(layer) + self._len[layer]

    def positions(self, layer: int, t: int) -> Tensor:
        """Rotary positions of the next `t` tokens of every row in `layer`: [B, t] long (CPU)."""
        return self.lengths(layer)[:, None] + torch.arange(t)[None, :]

    def set_valid(self, valid: Sequence[int] | Tensor) -> None:
        """How many of the next call's T tokens are real, per row (the rest is right padding)."""
        valid = torch.as_tensor(valid, dtype=torch.long)
        if valid.shape != (self.batch,):
            raise ValueError(f"need one valid count per row ({self.batch}), got {tuple(valid.shape)}")
        self._valid = valid

    def get_own(self, layer: int, row: int) -> tuple[Tensor, Tensor]:
        """Row `row`'s own cached k, v of `layer`: [Hkv, len, D] (views)."""
        k, v = self._k[layer], self._v[layer]
        n = int(self._len[layer, row])
        if k is None or v is None:
            raise ValueError(f"layer {layer} of the batch cache is empty")
        return k[row, :, :n], v[row, :, :n]

    def attend(self, layer: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q: [B, H, T, D]; k, v: [B, Hkv, T, D] (rotary applied) -> [B, H, T, D]."""
        b, _, t, _ = k.shape
        if b != self.batch:
            raise ValueError(f"batch of {b} rows for a cache of {self.batch}")
        before = self._len[layer].clone()
        self._write(layer, k, v, before)
        self._len[layer] = before + self._valid
        total = int(before.max()) + t
        buf_k, buf_v = self._k[layer], self._v[layer]
        assert buf_k is not None and buf_v is not None
        own_k, own_v = buf_k[:, :, :total], buf_v[:, :, :total]
        # query i of row b sits at own index before[b] + i and sees own keys up to there
        limit = before.to(q.device)[:, None] + torch.arange(t, device=q.device)[None, :]  # [B, T]
        mask = torch.arange(total, device=q.device)[None, None, :] <= limit[:, :, None]  # [B, T, total]
        groups = self._groups(layer)
        if not groups:  # nothing shared in this layer: one fused kernel, no log-sum-exp needed
            gqa = q.shape[1] != own_k.shape[1]
            return F.scaled_dot_product_attention(q, own_k, own_v, attn_mask=mask[:, None], enable_gqa=gqa)
        out, lse = attention_lse(q, own_k, own_v, mask[:, None])
        for prefix, rows in groups:
            pk, pv = prefix.get(layer)  # [1, Hkv, Ls, D]
            idx = torch.tensor(rows, device=q.device)
            po, plse = attention_shared(q.index_select(0, idx), pk, pv)
            merged = merge(out.index_select(0, idx), lse.index_select(0, idx), po, plse)
            out = out.index_copy(0, idx, merged)
        return out

    def _groups(self, layer: int) -> list[tuple[KVCache, list[int]]]:
        """Rows by the prefix they continue (prefixes with tokens in `layer` only)."""
        groups: dict[int, tuple[KVCache, list[int]]] = {}
        for row, p in enumerate(self.prefixes):
            if p is not None and p.length(layer) > 0:
                groups.setdefault(id(p), (p, []))[1].append(row)
        return list(groups.values())

    def _write(self, layer: int, k: Tensor, v: Tensor, before: Tensor) -> None:
        b, hkv, t, d = k.shape
        need = int(before.max()) + t
        buf_k, buf_v = self._k[layer], self._v[layer]
        if buf_k is None or buf_v is None or need > buf_k.shape[2]:
            old = buf_k.shape[2] if buf_k is not None else 0
            cap = max(need, 2 * old)
            # zeros, not empty: padding slots are read (and masked) by padded queries
            new_k, new_v = k.new_zeros((b, hkv, cap, d)), v.new_zeros((b, hkv, cap, d))
            if buf_k is not None and buf_v is not None and old:
                new_k[:, :, :old] = buf_k
                new_v[:, :, :old] = buf_v
            self._k[layer], self._v[layer] = buf_k, buf_v = new_k, new_v
        assert buf_k is not None and buf_v is not None
        if bool((before == before[0]).all()):  # a fresh batch: one slice for all rows
            start = int(before[0])
            buf_k[:, :, start : start + t] = k
            buf_v[:, :, start : start + t] = v
            return
        rows = torch.arange(b, device=k.device)[:, None].expand(b, t)
        cols = before.to(k.device)[:, None] + torch.arange(t, device=k.device)[None, :]
        buf_k.transpose(1, 2)[rows, cols] = k.transpose(1, 2)
        buf_v.transpose(1, 2)[rows, cols] = v.transpose(1, 2)

    # ------------------------------------------------------------------------------------ batch edits

    def take(self, rows: Sequence[int]) -> BatchKVCache:
        """A new batch of `rows` (in this order), their buffers copied."""
        idx = torch.tensor(list(rows), dtype=torch.long)
        out = BatchKVCache(self.num_layers, [self.prefixes[i] for i in rows])
        out._len = self._len[:, idx].clone()
        for i in range(self.num_layers):
            k, v = self._k[i], self._v[i]
            if k is not None and v is not None:
                dev = idx.to(k.device)
                out._k[i], out._v[i] = k.index_select(0, dev), v.index_select(0, dev)
        return out

    def select(self, rows: Sequence[int]) -> None:
        """Keep only `rows` (in this order): finished or cancelled sequences leave the batch."""
        kept = self.take(rows)
        self.prefixes, self._len, self._k, self._v = kept.prefixes, kept._len, kept._k, kept._v
        self._valid = kept._valid

    @staticmethod
    def concat(caches: Sequence[BatchKVCache]) -> BatchKVCache:
        """One batch of all rows of `caches`, in order (buffers padded to the longest)."""
        if not caches:
            raise ValueError("nothing to concatenate")
        num_layers = caches[0].num_layers
        out = BatchKVCache(num_layers, [p for c in caches for p in c.prefixes])
        out._len = torch.cat([c._len for c in caches], dim=1)
        for i in range(num_layers):
            parts = [(c._k[i], c._v[i], c.batch) for c in caches]
            ref = next((k for k, _, _ in parts if k is not None), None)
            if ref is None:
                continue
            cap = max(k.shape[2] for k, _, _ in parts if k is not None)
            ks, vs = [], []
            for k, v, b in parts:
                if k is None or v is None:
                    k = v = ref.new_zeros((b, ref.shape[1], cap, ref.shape[3]))
                elif k.shape[2] < cap:
                    pad = (0, 0, 0, cap - k.shape[2])
                    k, v = torch.nn.functional.pad(k, pad), torch.nn.functional.pad(v, pad)
                ks.append(k)
                vs.append(v)
            out._k[i], out._v[i] = torch.cat(ks), torch.cat(vs)
        return out

    def nbytes(self) -> int:
        """Bytes of the rows' own buffers (prefixes not counted: they are shared)."""
        return sum(2 * k.numel() * k.element_size() for k in self._k if k is not None)
