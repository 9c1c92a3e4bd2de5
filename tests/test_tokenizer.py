"""The offline Qwen2 tokenizer against tiktoken on the same ranks, and the checkpoint-directory path."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
import tiktoken
from transformers import PreTrainedTokenizerFast

from flashlive.model.tokenizer import (
    ENDOFTEXT_ID,
    IM_END_ID,
    IM_START_ID,
    PRETOKENIZE_REGEX,
    load_tokenizer,
    read_ranks,
    tiktoken_file,
)

SAMPLES = [
    "Hello, world!",
    "视频里一共有几个人？他们在做什么。",
    "日本語のテキストと한국어 텍스트",
    "Numbers: 1234567890, 3.14159, -42, 1e-6",
    "a   b\t\tc  \n\n\n  d     ",
    "line one\r\nline two\n\n  indented\n",
    "don't I'LL we've they'RE",
    "emoji 🎥🙂👍🏽 and symbols ©®™ ∑∫",
    "def f(x):\n    return x ** 2  # square\n",
    "Ünïcödé e\u0301 composed",
    "x" * 80,
    " leading space and trailing space ",
]


@pytest.fixture(scope="module")
def reference() -> tiktoken.Encoding:
    specials = {"<|endoftext|>": ENDOFTEXT_ID, "<|im_start|>": IM_START_ID, "<|im_end|>": IM_END_ID}
    ranks = read_ranks(tiktoken_file())
    return tiktoken.Encoding(
        "qwen2", pat_str=PRETOKENIZE_REGEX, mergeable_ranks=ranks, special_tokens=specials
    )


def test_hello_world(tok: PreTrainedTokenizerFast) -> None:
    assert tok.encode("Hello, world!", add_special_tokens=False) == [9707, 11, 1879, 0]
    assert tok.encode("Hello, world!") == [9707, 11, 1879, 0]  # no BOS is added


def test_special_token_ids(tok: PreTrainedTokenizerFast) -> None:
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>"]) == [
        151643,
        151644,
        151645,
    ]
    assert tok.eos_token_id == 151645 and tok.pad_token_id == 151643
    assert tok.encode("<|im_start|>user\nhi<|im_end|>\n") == [151644, 872, 198, 6023, 151645, 198]
    # Qwen2.5's additions follow at 151646..151664
    assert tok.convert_tokens_to_ids(["<|object_ref_start|>", "<|file_sep|>"]) == [151646, 151664]
    assert len(tok) == 151665


@pytest.mark.parametrize("text", SAMPLES)
def test_matches_tiktoken_on_the_same_ranks(
    tok: PreTrainedTokenizerFast, reference: tiktoken.Encoding, text: str
) -> None:
    # Qwen2's tokenizer NFC-normalises first; tiktoken does not, so give it the normalised text
    ids = tok.encode(text)
    assert ids == reference.encode(unicodedata.normalize("NFC", text), allowed_special="all")
    assert tok.decode(ids) == unicodedata.normalize("NFC", text)


def test_checkpoint_tokenizer_files_are_preferred(tok: PreTrainedTokenizerFast, tmp_path: Path) -> None:
    assert load_tokenizer(tmp_path) is tok  # no tokenizer files: the built-in one (cached)
    ckpt = tmp_path / "ckpt"
    tok.save_pretrained(ckpt)
    saved = load_tokenizer(ckpt)
    assert saved is not tok
    assert saved.encode("Hello, world! 视频") == tok.encode("Hello, world! 视频")
    assert saved.convert_tokens_to_ids("<|im_end|>") == 151645


def test_load_is_cached() -> None:
    assert load_tokenizer() is load_tokenizer(None)
