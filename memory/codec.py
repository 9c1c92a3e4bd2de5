"""Clip <-> Redis fields. Tokens travel as raw little-endian fp16 bytes with dtype and shape beside them."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from flashlive.memory.errors import CorruptEntryError, InvalidClipError
from flashlive.memory.keys import ENTRY_SEQ, MAX_ID_MS, check_stream_name, time_to_ms
from flashlive.memory.types import Clip, ClipInfo

STORED_DTYPES: dict[str, np.dtype[Any]] = {"float16": np.dtype("<f2"), "float32": np.dtype("<f4")}
MAX_CLIP_BYTES = 64 * 1024 * 1024
# The last TAIL_BYTES of the tokens live in the stream entry, the rest in the tokens hash. Why: Redis
# stores a value with a 9-byte header and a NUL, so the 131,072 bytes of a 64x1024 fp16 clip would take
# jemalloc's 160 KiB size class (25 % waste); 131,008 bytes fit the 128 KiB class exactly.
TAIL_BYTES = 64


@dataclass(frozen=True)
class EncodedClip:
    """A validated clip, ready for the append script."""

    stream: str
    id_ms: int
    start: str  # repr of the float: exact round trip
    end: str
    frames: int
    encoder_id: str
    shape: str  # "64,1024"
    wall_start: str
    extra: str  # JSON object, "" when empty
    tokens: bytes  # all but the last TAIL_BYTES
    tail: bytes  # the last TAIL_BYTES of the token bytes (or all of them when shorter)
    thumbnail: bytes
    digest: str  # what the clip shows (Clip.digest, else a hash of tokens and thumbnail)

    @property
    def id(self) -> str:
        return f"{self.id_ms}-{ENTRY_SEQ}"

    @property
    def nbytes(self) -> int:
        return len(self.tokens) + len(self.tail) + len(self.thumbnail)


def encode_clip(clip: Clip) -> EncodedClip:
    """Check a clip and turn it into bytes; raises InvalidClipError naming what is wrong."""
    if not isinstance(clip, Clip):
        raise InvalidClipError(f"expected a flashlive.memory.types.Clip, got {type(clip).__name__}")
    try:
        stream = check_stream_name(clip.stream)
    except ValueError as exc:
        raise InvalidClipError(str(exc)) from None
    where = f"clip of stream {stream!r} at {clip.start!r}"
    for name, value in (("start", clip.start), ("end", clip.end), ("wall_start", clip.wall_start)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidClipError(f"{where}: {name} must be a finite number of seconds, not {value!r}")
    start, end = float(clip.start), float(clip.end)
    if start < 0:
        raise InvalidClipError(f"{where}: start must be >= 0 on the stream timeline, not {start}")
    if time_to_ms(start) >= MAX_ID_MS:
        raise InvalidClipError(f"{where}: start {start} s is too far in the future")
    if end <= start:
        raise InvalidClipError(f"{where}: end ({end}) must be after start ({start})")
    if isinstance(clip.frames, bool) or not isinstance(clip.frames, int) or clip.frames < 1:
        raise InvalidClipError(f"{where}: frames must be a positive whole number, not {clip.frames!r}")
    if not isinstance(clip.encoder_id, str) or not clip.encoder_id or len(clip.encoder_id) > 512:
        raise InvalidClipError(f"{where}: encoder_id must be a non-empty string (<= 512 chars)")
    if not isinstance(clip.thumbnail, bytes | bytearray | memoryview):
        raise InvalidClipError(
            f"{where}: thumbnail must be bytes (JPEG), not {type(clip.thumbnail).__name__}"
        )
    tokens = np.asarray(clip.tokens)
    if tokens.dtype.kind != "f":
        raise InvalidClipError(f"{where}: tokens must be a float array, not {tokens.dtype}")
    if tokens.ndim < 1 or tokens.size == 0:
        raise InvalidClipError(f"{where}: tokens must be a non-empty array, got shape {tokens.shape}")
    # fp16 is the stored type (DESIGN §3); wider floats from an encoder are narrowed here.
    raw = np.ascontiguousarray(tokens, dtype="<f2").tobytes()
    thumbnail = bytes(clip.thumbnail)
    if len(raw) + len(thumbnail) > MAX_CLIP_BYTES:
        raise InvalidClipError(f"{where}: {len(raw) + len(thumbnail)} bytes is more than one clip may hold")
    digest = clip.digest or content_digest(raw, thumbnail)
    if not isinstance(digest, str) or len(digest) > 128:
        raise InvalidClipError(f"{where}: digest must be a string of at most 128 characters")
    extra = clip.extra or {}
    if not isinstance(extra, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
    ):
        raise InvalidClipError(f"{where}: extra must map str to str")
    return EncodedClip(
        stream=stream,
        id_ms=time_to_ms(start),
        start=repr(start),
        end=repr(end),
        frames=int(clip.frames),
        encoder_id=clip.encoder_id,
        shape=",".join(str(d) for d in tokens.shape),
        wall_start=repr(float(clip.wall_start)),
        extra=json.dumps(extra, separators=(",", ":"), sort_keys=True) if extra else "",
        tokens=raw[: max(0, len(raw) - TAIL_BYTES)],
        tail=raw[max(0, len(raw) - TAIL_BYTES) :],
        thumbnail=thumbnail,
        digest=digest,
    )


def content_digest(*parts: bytes) -> str:
    """A short hash of a clip's content: ingest hashes the sampled frames, the memory tokens + thumbnail."""
    h = hashlib.blake2b(digest_size=12)
    for part in parts:
        h.update(part)
    return h.hexdigest()


def _text(fields: dict[bytes, bytes], key: bytes) -> str:
    return fields[key].decode()


def decode_info(stream: str, entry_id: bytes | str, raw: dict[bytes, bytes]) -> ClipInfo:
    """Stream entry fields -> ClipInfo; CorruptEntryError when a field is missing or malformed."""
    eid = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    try:
        shape = tuple(int(d) for d in _text(raw, b"sh").split(","))
        extra_text = _text(raw, b"x")
        return ClipInfo(
            stream=stream,
            id=eid,
            start=float(_text(raw, b"s")),
            end=float(_text(raw, b"e")),
            frames=int(_text(raw, b"f")),
            encoder_id=_text(raw, b"enc"),
            token_shape=shape,
            nbytes=int(_text(raw, b"n")),
            wall_start=float(_text(raw, b"w")),
            extra=json.loads(extra_text) if extra_text else {},
            token_dtype=_text(raw, b"dt"),
            digest=raw[b"h"].decode() if b"h" in raw else "",
        )
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise CorruptEntryError(f"stream {stream!r} entry {eid}: bad fields ({exc!r})") from None


def entry_tail(raw: dict[bytes, bytes]) -> bytes:
    """The token tail an entry carries (see TAIL_BYTES)."""
    return raw.get(b"tt", b"")


def decode_tokens(info: ClipInfo, blob: bytes | None, tail: bytes = b"") -> np.ndarray:
    """Raw bytes -> read-only array of `info.token_shape` (zero copy); CorruptEntryError on a misfit."""
    where = f"stream {info.stream!r} entry {info.id}"
    if blob is None:
        raise CorruptEntryError(f"{where}: its token bytes are missing")
    if tail:
        blob = blob + tail
    dtype_name = info.token_dtype
    dtype = STORED_DTYPES.get(dtype_name)
    if dtype is None:
        raise CorruptEntryError(f"{where}: unknown token dtype {dtype_name!r}")
    expected = math.prod(info.token_shape) * dtype.itemsize
    if len(blob) != expected:
        raise CorruptEntryError(
            f"{where}: {len(blob)} token bytes, expected {expected} for {dtype_name} {info.token_shape}"
        )
    return np.frombuffer(blob, dtype=dtype).reshape(info.token_shape)


def to_clip(info: ClipInfo, tokens: np.ndarray) -> Clip:
    return Clip(
        stream=info.stream,
        start=info.start,
        end=info.end,
        frames=info.frames,
        tokens=tokens,
        encoder_id=info.encoder_id,
        thumbnail=info.thumbnail,
        wall_start=info.wall_start,
        extra=info.extra,
    )
