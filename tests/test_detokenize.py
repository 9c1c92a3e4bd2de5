"""Incremental detokenization equals full decoding, one token at a time, multi-byte characters included."""

from __future__ import annotations

import pytest

from flashlive.model.detokenize import (
    DetokenizerError,
    IncrementalDetokenizer,
    StrippedText,
    TokenBytes,
    token_bytes,
)
from flashlive.model.tokenizer import load_tokenizer

TEXTS = [
    "Plain English, with punctuation: done.",
    "一个红色的方块在画面中从左向右移动。東京タワーは夜に光る。",
    "Mixed 🎉👍🏽 emoji 👨‍👩‍👧‍👦 and flags 🇫🇷🇯🇵 — naïve café ½ ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "한국어 텍스트와 العربية وहिन्दी together",
]


@pytest.fixture(scope="module")
def table() -> TokenBytes:
    return token_bytes(load_tokenizer())


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_equal_full_decoding(table: TokenBytes, text: str) -> None:
    tok = load_tokenizer()
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(table)
    pieces = []
    for i in ids:
        pieces.append(detok.push(i))
        pending, _ = detok._utf8.getstate()
        assert len(pending) <= 3  # constant state: at most an unfinished character
    pieces.append(detok.flush())
    assert "".join(pieces) == tok.decode(ids, skip_special_tokens=True) == text
    assert all("\ufffd" not in p for p in pieces)  # never half a character


def test_characters_split_across_tokens_wait_for_their_last_byte(table: TokenBytes) -> None:
    tok = load_tokenizer()
    ids = tok.encode("𓀀")
    assert len(ids) == 3  # the hieroglyph's 4 bytes span three tokens
    detok = IncrementalDetokenizer(table)
    assert [detok.push(i) for i in ids] == ["", "", "𓀀"]


def test_a_truncated_character_ends_as_the_tokenizer_decodes_it(table: TokenBytes) -> None:
    tok = load_tokenizer()
    ids = tok.encode("ok 🦩")[:-1]  # cut inside the flamingo (2 tokens)
    detok = IncrementalDetokenizer(table)
    text = "".join(detok.push(i) for i in ids) + detok.flush()
    assert text == tok.decode(ids, skip_special_tokens=True) and text.endswith("\ufffd")


def test_special_tokens_are_skipped(table: TokenBytes) -> None:
    tok = load_tokenizer()
    ids = tok.encode("<|im_start|>assistant\nYes<|im_end|><tool_call>")
    detok = IncrementalDetokenizer(table)
    text = "".join(detok.push(i) for i in ids) + detok.flush()
    assert text == tok.decode(ids, skip_special_tokens=True) == "assistant\nYes<tool_call>"


def test_stripped_stream_equals_the_stripped_answer() -> None:
    pieces = ["  ", "\n", "The", " cat", " ", " ", "sat", ".", " \n", "  "]
    s = StrippedText()
    out = [s.push(p) for p in pieces]
    assert "".join(out) == s.text == "".join(pieces).strip() == "The cat  sat."
    assert out[:2] == ["", ""] and out[-2:] == ["", ""]


def test_non_byte_level_tokenizers_are_refused() -> None:
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    backend.decoder = decoders.WordPiece()
    with pytest.raises(DetokenizerError, match="byte-level"):
        TokenBytes(PreTrainedTokenizerFast(tokenizer_object=backend))
