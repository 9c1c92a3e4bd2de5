"""Per-layer key/value cache for the Qwen2 decoder.

A plain object: one growable buffer per layer, so layers may hold different lengths (progressive
visual dropout shortens the layers after each drop). It can be copied (`copy()`) to branch one cached
prefix into several continuations, which is what a shared visual prefix (ROADMAP item 5) needs.

Positions are not stored: every layer's sequence is contiguous from position 0, so the rotary position
of the next token in a layer is that layer's current length (see `flashlive.model.llm`).
"""

from __future__ import annotations

from torch import Tensor


class KVCache:
    def __init__(self, num_layers: int) -> None:
        self.num_layers = num_layers
        # buffers grow by doubling so that decoding one token at a time is amortised O(1) per step
        self._k: list[Tensor | None] = [None] * num_layers  # [B, Hkv, capacity, D]
        self._v: list[Tensor | None] = [None] * num_layers
        self._len: list[int] = [0] * num_layers

    def length(self, layer: int) -> int:
        """Number of cached tokens in `layer`."""
        return self._len[layer]

    @property
    def lengths(self) -> list[int]:
        return list(self._len)

    @property
    def empty(self) -> bool:
        return all(n == 0 for n in self._len)

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Add k, v: [B, Hkv, T, D] to `layer`; return the whole cached k, v: [B, Hkv, len, D] (views)."""
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

    def get(self, layer: int) -> tuple[Tensor, Tensor]:
        """Cached k, v of `layer`: [B, Hkv, len, D]. Raises if the layer is empty."""
        k, v = self._k[layer], self._v[layer]
        if k is None or v is None:
            raise ValueError(f"layer {layer} of the KV cache is empty")
        n = self._len[layer]
        return k[:, :, :n], v[:, :, :n]

    def copy(self) -> KVCache:
        """An independent copy (tensors cloned, trimmed to their used length)."""
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
        if len(set(self._len)) > 1:
            raise ValueError(f"cannot truncate a cache whose layers differ in length: {self._len}")
        self._len = [min(n, length) for n in self._len]

    def nbytes(self) -> int:
        return sum(
            2 * n * k.element_size() * k.shape[0] * k.shape[1] * k.shape[3]
            for k, n in zip(self._k, self._len, strict=True)
            if k is not None
        )
