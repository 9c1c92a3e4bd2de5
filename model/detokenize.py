"""Incremental detokenization: text pieces as tokens arrive, constant work per token.

Qwen2's tokenizer is byte-level BPE: every token stands for a fixed byte string, and a character
of several UTF-8 bytes (CJK, emoji) may be split across tokens. So each token's bytes go through
one incremental UTF-8 decoder, which returns what is complete and keeps at most 3 pending bytes.
Concatenating the pieces (and `flush()` at the end) gives exactly `tokenizer.decode(ids,
skip_special_tokens=True)`: invalid bytes become U+FFFD as there, and special tokens are skipped.
"""

from __future__ import annotations

import codecs
import functools

from transformers import PreTrainedTokenizerFast

from flashlive.model.errors import TokenizerLoadError


class DetokenizerError(TokenizerLoadError):
    """A tokenizer this decoder cannot handle."""


@functools.cache
def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's byte -> printable character map (the alphabet of byte-level vocabularies)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class TokenBytes:
    """id -> bytes for every token of a byte-level BPE tokenizer (None for skipped special tokens)."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast) -> None:
        decoder = tokenizer.backend_tokenizer.decoder
        if type(decoder).__name__ != "ByteLevel":
            raise DetokenizerError(
                f"streaming text needs a byte-level BPE tokenizer (Qwen2's); this one decodes with "
                f"{type(decoder).__name__}"
            )
        u2b = _unicode_to_byte()
        added = tokenizer.added_tokens_decoder
        size = max(len(tokenizer), max(added, default=-1) + 1)
        self._bytes: list[bytes | None] = [b""] * size
        for text, i in tokenizer.get_vocab().items():
            if i in added:
                # added tokens are not byte-mapped: special ones are skipped, others are their text
                self._bytes[i] = None if added[i].special else text.encode("utf-8")
            else:
                self._bytes[i] = bytes(u2b[c] for c in text)

    def __getitem__(self, token_id: int) -> bytes | None:
        if not 0 <= token_id < len(self._bytes):
            return b""  # an id the vocabulary lacks (e.g. the model's padded embedding rows)
        return self._bytes[token_id]


@functools.lru_cache(maxsize=4)
def token_bytes(tokenizer: PreTrainedTokenizerFast) -> TokenBytes:
    """The table of a tokenizer, built once (tokenizers are shared and read-only)."""
    return TokenBytes(tokenizer)


class IncrementalDetokenizer:
    """Feed token ids one at a time; get the text they complete."""

    def __init__(self, table: TokenBytes) -> None:
        self._table = table
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        data = self._table[token_id]
        return self._utf8.decode(data) if data else ""

    def flush(self) -> str:
        """The end of the stream: bytes of an unfinished character become U+FFFD."""
        return self._utf8.decode(b"", final=True)


class StrippedText:
    """Streams text with the surrounding whitespace removed, as the release strips its answers.

    Leading whitespace is dropped; whitespace is held back until something follows it, so the pieces
    put together equal the stripped answer exactly.
    """

    def __init__(self) -> None:
        self._started = False
        self._held = ""
        self.text = ""  # everything emitted so far

    def push(self, piece: str) -> str:
        if not self._started:
            piece = piece.lstrip()
            if not piece:
                return ""
            self._started = True
        body = piece.rstrip()
        if not body:
            self._held += piece
            return ""
        out = self._held + body
        self._held = piece[len(body) :]
        self.text += out
        return out
