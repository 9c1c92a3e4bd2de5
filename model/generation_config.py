"""A checkpoint's `generation_config.json`, and how it combines with `chat()`'s arguments and a request.

The release answers through `model.chat(..., generation_config={...})`, which passes its dict to
transformers' `generate()`. `generate()` starts from the checkpoint's `generation_config.json` (or,
without one, from config.json's token ids), and every argument it is given replaces the file's value
(`GenerationConfig.update`). So, lowest to highest:

    transformers' defaults < generation_config.json < chat()'s arguments < what the user asked for

`CHAT_ARGUMENTS` are the arguments the release's evaluation passes (`lmms_eval/models/videochat_flash.py
::generate_until`): greedy, 1024 new tokens, no top-p. The file still decides what they leave open:
the repetition penalty (applied in greedy decoding too), top-k (when the user asks to sample) and the
end-of-sequence ids. `chat()` also stops at `<|im_end|>` (its `KeywordsStoppingCriteria`).

The repetition penalty counts the *generated* tokens only: `chat()` calls `generate()` with input
embeddings and no input ids, so the ids the penalty looks back on start empty
(`GenerationMixin._maybe_initialize_input_ids_for_generation`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flashlive.model.checkpoint import CheckpointError
from flashlive.model.decoding import SamplingParams

log = logging.getLogger(__name__)

GENERATION_FILE = "generation_config.json"
IM_END_ID = 151645  # chat()'s stop string, `<|im_end|>`
ENDOFTEXT_ID = 151643
# Without a checkpoint (seeded presets): Qwen2's own generation_config.json ids.
PRESET_EOS_IDS = (IM_END_ID, ENDOFTEXT_ID)

# lmms_eval/models/videochat_flash.py::generate_until -> model.chat(generation_config=...).
CHAT_ARGUMENTS: dict[str, Any] = {
    "max_new_tokens": 1024,
    "do_sample": False,
    "temperature": 0.0,
    "top_p": None,
    "num_beams": 1,
}
# transformers' values for what neither the file nor chat() sets.
TRANSFORMERS_DEFAULTS: dict[str, Any] = {"top_k": 50, "repetition_penalty": 1.0}

# Keys that cannot change an answer here: ids, output plumbing, and what CHAT_ARGUMENTS replaces.
_NO_EFFECT = {
    "bos_token_id",
    "pad_token_id",
    "decoder_start_token_id",
    "transformers_version",
    "_from_model_config",
    "use_cache",
    "cache_implementation",
    "output_attentions",
    "output_hidden_states",
    "output_scores",
    "output_logits",
    "return_dict_in_generate",
    "max_length",
    *CHAT_ARGUMENTS,
}
# Keys that would change an answer and are not implemented: refused unless they hold transformers'
# neutral value.
_NEUTRAL: dict[str, Any] = {
    "min_length": 0,
    "min_new_tokens": None,
    "no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "min_p": None,
    "encoder_repetition_penalty": 1.0,
    "encoder_no_repeat_ngram_size": 0,
    "exponential_decay_length_penalty": None,
    "sequence_bias": None,
    "renormalize_logits": False,
    "penalty_alpha": None,
    "guidance_scale": None,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "length_penalty": 1.0,
    "num_return_sequences": 1,
    "watermarking_config": None,
}


class GenerationConfigError(CheckpointError):
    """A generation_config.json (or a request) holds a value that cannot be used."""


@dataclass(frozen=True)
class CheckpointGeneration:
    """What a checkpoint's generation_config.json says (None: not set there)."""

    top_k: int | None = None
    repetition_penalty: float | None = None
    eos_token_ids: tuple[int, ...] = PRESET_EOS_IDS
    source: str = "preset"  # the file the values came from


@dataclass(frozen=True)
class RequestSampling:
    """What a request asked for; None leaves the setting to chat()'s arguments and the checkpoint."""

    max_new_tokens: int | None = None
    temperature: float | None = None  # 0 = greedy; > 0 samples
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None


def _eos_ids(value: Any, where: str) -> tuple[int, ...]:
    ids = value if isinstance(value, list) else [value]
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise GenerationConfigError(f"{where}: eos_token_id {value!r} is not a token id or a list of them")
    return tuple(dict.fromkeys(ids))


def _number(raw: dict[str, Any], key: str, where: str, *, integer: bool = False) -> Any:
    value = raw.get(key)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise GenerationConfigError(f"{where}: {key} {value!r} is not a number")
    return value


def parse_generation_config(raw: dict[str, Any], where: str = GENERATION_FILE) -> CheckpointGeneration:
    """Typed settings from the file's JSON object; refuses values that would change answers unread."""
    for key, neutral in _NEUTRAL.items():
        if key in raw and raw[key] != neutral:
            raise GenerationConfigError(f"{where}: {key} {raw[key]!r} is not supported (only {neutral!r})")
    if raw.get("num_beams", 1) != 1:
        log.info("%s: num_beams %r is replaced by chat()'s 1", where, raw["num_beams"])
    unknown = sorted(set(raw) - _NO_EFFECT - set(_NEUTRAL) - {"top_k", "repetition_penalty", "eos_token_id"})
    if unknown:
        log.warning("%s: ignoring keys this implementation does not know: %s", where, ", ".join(unknown))
    top_k = _number(raw, "top_k", where, integer=True)
    penalty = _number(raw, "repetition_penalty", where)
    settings = CheckpointGeneration(
        top_k=top_k,
        repetition_penalty=None if penalty is None else float(penalty),
        eos_token_ids=_eos_ids(raw["eos_token_id"], where) if raw.get("eos_token_id") is not None else (),
        source=where,
    )
    _check_ranges(settings.top_k, settings.repetition_penalty, where)
    return settings


def _check_ranges(top_k: int | None, penalty: float | None, where: str) -> None:
    if top_k is not None and top_k < 0:
        raise GenerationConfigError(f"{where}: top_k must be 0 (off) or more, got {top_k}")
    if penalty is not None and not penalty > 0:
        raise GenerationConfigError(f"{where}: repetition_penalty must be positive, got {penalty}")


def read_generation_config(ckpt_dir: Path | None) -> CheckpointGeneration:
    """The checkpoint's generation settings; without the file, config.json's eos id (as transformers)."""
    if ckpt_dir is None:
        return CheckpointGeneration()
    path = ckpt_dir / GENERATION_FILE
    if path.is_file():
        return parse_generation_config(_load_json(path), str(path))
    config = ckpt_dir / "config.json"
    raw = _load_json(config) if config.is_file() else {}
    eos = raw.get("eos_token_id")
    ids = _eos_ids(eos, str(config)) if eos is not None else ()
    return CheckpointGeneration(eos_token_ids=ids, source=str(config))


def _load_json(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GenerationConfigError(f"{path}: unreadable ({exc})") from None
    if not isinstance(raw, dict):
        raise GenerationConfigError(f"{path}: expected a JSON object")
    return raw


def resolve_sampling(ckpt: CheckpointGeneration, request: RequestSampling) -> SamplingParams:
    """Request > chat()'s arguments > generation_config.json > transformers' defaults, per setting."""
    where = "request"
    if request.max_new_tokens is not None and request.max_new_tokens < 1:
        raise GenerationConfigError(
            f"{where}: max_new_tokens must be at least 1, got {request.max_new_tokens}"
        )
    if request.temperature is not None and request.temperature < 0:
        raise GenerationConfigError(
            f"{where}: temperature must be 0 (greedy) or more, got {request.temperature}"
        )
    if request.top_p is not None and not 0 < request.top_p <= 1:
        raise GenerationConfigError(f"{where}: top_p must be in (0, 1], got {request.top_p}")
    _check_ranges(request.top_k, request.repetition_penalty, where)

    origin: dict[str, str] = {}

    def pick(name: str, *layers: tuple[str, Any]) -> Any:
        for label, value in layers:
            if value is not None:
                origin[name] = label
                return value
        raise AssertionError(f"no layer set {name}")  # the last layer is always set

    chat, tf = "chat()", "transformers default"
    max_new = pick(
        "max_new_tokens", (where, request.max_new_tokens), (chat, CHAT_ARGUMENTS["max_new_tokens"])
    )
    temperature = pick("temperature", (where, request.temperature), (chat, CHAT_ARGUMENTS["temperature"]))
    # chat() passes top_p=None, which switches top-p off whatever the file says.
    top_p = pick("top_p", (where, request.top_p), (chat, 1.0))
    top_k = pick(
        "top_k", (where, request.top_k), (ckpt.source, ckpt.top_k), (tf, TRANSFORMERS_DEFAULTS["top_k"])
    )
    penalty = pick(
        "repetition_penalty",
        (where, request.repetition_penalty),
        (ckpt.source, ckpt.repetition_penalty),
        (tf, TRANSFORMERS_DEFAULTS["repetition_penalty"]),
    )
    stop_ids = tuple(dict.fromkeys((*ckpt.eos_token_ids, IM_END_ID)))
    origin["stop_ids"] = f"{ckpt.source} + chat()'s <|im_end|>"
    if temperature == 0:  # greedy: transformers adds no top-p / top-k warper
        top_p, top_k = 1.0, 0
        origin["top_p"] = origin["top_k"] = "unused when greedy"
    return SamplingParams(
        max_new_tokens=int(max_new),
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=int(top_k),
        repetition_penalty=float(penalty),
        stop_ids=stop_ids,
        seed=request.seed,
        origin=origin,
    )
