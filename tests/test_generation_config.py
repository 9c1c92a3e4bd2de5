"""generation_config.json under chat()'s arguments and a request: which value wins, per setting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from transformers import GenerationConfig

from flashlive.model.generation_config import (
    CHAT_ARGUMENTS,
    GenerationConfigError,
    RequestSampling,
    parse_generation_config,
    read_generation_config,
    resolve_sampling,
)

# Qwen2-7B-Instruct's generation_config.json, the base the 7B releases were tuned from.
QWEN2_FILE: dict[str, Any] = {
    "bos_token_id": 151643,
    "pad_token_id": 151643,
    "do_sample": True,
    "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.05,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
    "transformers_version": "4.37.0",
}


def _ckpt(tmp_path: Path, generation: dict[str, Any] | None, config: dict[str, Any] | None = None) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(config or {"eos_token_id": 151645}))
    if generation is not None:
        (tmp_path / "generation_config.json").write_text(json.dumps(generation))
    return tmp_path


def test_defaults_are_chats_greedy_1024_with_the_files_penalty_and_eos(tmp_path: Path) -> None:
    got = resolve_sampling(read_generation_config(_ckpt(tmp_path, QWEN2_FILE)), RequestSampling())
    assert (got.max_new_tokens, got.temperature, got.greedy) == (1024, 0.0, True)
    assert got.repetition_penalty == 1.05  # the file's, applied in greedy decoding too
    assert (got.top_p, got.top_k) == (1.0, 0)  # no warpers when greedy
    assert got.stop_ids == (151645, 151643)
    assert got.origin["repetition_penalty"].endswith("generation_config.json")
    assert got.origin["max_new_tokens"] == "chat()"


def test_layering_matches_transformers_generation_config_update() -> None:
    # What the release's generate() does: the file, updated with chat()'s arguments.
    hf = GenerationConfig(**QWEN2_FILE)
    hf.update(**CHAT_ARGUMENTS)
    ours = resolve_sampling(parse_generation_config(QWEN2_FILE), RequestSampling())
    assert hf.do_sample is False and ours.greedy is True
    assert (hf.max_new_tokens, hf.repetition_penalty) == (ours.max_new_tokens, ours.repetition_penalty)
    assert hf.top_p is None  # chat()'s None replaces the file's 0.8
    # Asking to sample at 0.7: top-k is still the file's 20, top-p still off.
    hf.update(do_sample=True, temperature=0.7)
    ours = resolve_sampling(parse_generation_config(QWEN2_FILE), RequestSampling(temperature=0.7))
    assert (ours.temperature, ours.top_k, ours.top_p) == (hf.temperature, hf.top_k, 1.0)
    assert ours.origin["top_k"] == "generation_config.json"


def test_explicit_request_settings_win(tmp_path: Path) -> None:
    request = RequestSampling(max_new_tokens=10, temperature=0.5, top_p=0.9, top_k=5, repetition_penalty=1.0)
    got = resolve_sampling(read_generation_config(_ckpt(tmp_path, QWEN2_FILE)), request)
    assert (got.max_new_tokens, got.temperature, got.top_p, got.top_k) == (10, 0.5, 0.9, 5)
    assert got.repetition_penalty == 1.0 and got.origin["repetition_penalty"] == "request"


def test_without_the_file_config_json_gives_the_eos_and_transformers_the_rest(tmp_path: Path) -> None:
    ckpt = read_generation_config(_ckpt(tmp_path, None, {"eos_token_id": 151643}))
    got = resolve_sampling(ckpt, RequestSampling(temperature=1.0))
    assert got.stop_ids == (151643, 151645)  # config.json's, plus chat()'s <|im_end|>
    assert (got.top_k, got.repetition_penalty) == (50, 1.0)  # transformers' defaults
    preset = resolve_sampling(read_generation_config(None), RequestSampling())
    assert preset.stop_ids == (151645, 151643) and preset.repetition_penalty == 1.0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"no_repeat_ngram_size": 3}, "no_repeat_ngram_size 3 is not supported"),
        ({"min_new_tokens": 5}, "min_new_tokens 5 is not supported"),
        ({"top_k": -1}, "top_k must be 0 .off. or more, got -1"),
        ({"top_k": 2.5}, "top_k 2.5 is not a number"),
        ({"repetition_penalty": 0}, "repetition_penalty must be positive, got 0"),
        ({"eos_token_id": "end"}, "eos_token_id 'end' is not a token id"),
    ],
)
def test_bad_or_unimplemented_file_values_are_refused_naming_the_key(
    tmp_path: Path, edit: dict[str, Any], message: str
) -> None:
    with pytest.raises(GenerationConfigError, match=message):
        read_generation_config(_ckpt(tmp_path, {**QWEN2_FILE, **edit}))


def test_neutral_and_unknown_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    neutral = {**QWEN2_FILE, "min_length": 0, "no_repeat_ngram_size": 0, "some_future_key": 1}
    with caplog.at_level("WARNING"):
        got = read_generation_config(_ckpt(tmp_path, neutral))
    assert got.top_k == 20
    assert "ignoring keys this implementation does not know: some_future_key" in caplog.text
    (tmp_path / "generation_config.json").write_text("{broken")
    with pytest.raises(GenerationConfigError, match="unreadable"):
        read_generation_config(tmp_path)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (RequestSampling(max_new_tokens=0), "max_new_tokens must be at least 1"),
        (RequestSampling(temperature=-1), "temperature must be 0 .greedy. or more"),
        (RequestSampling(top_p=0), r"top_p must be in \(0, 1\]"),
        (RequestSampling(top_k=-2), "request: top_k must be 0"),
        (RequestSampling(repetition_penalty=-1.0), "request: repetition_penalty must be positive"),
    ],
)
def test_bad_request_values_are_refused(request_: RequestSampling, message: str) -> None:
    with pytest.raises(GenerationConfigError, match=message):
        resolve_sampling(parse_generation_config(QWEN2_FILE), request_)
