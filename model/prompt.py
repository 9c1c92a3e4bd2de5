"""The ChatML prompt VideoChat-Flash was trained with, and its split around the video.

One `<image>` placeholder stands for all visual tokens of the video; the text on each side is tokenised
separately (as the release's `tokenizer_image_token` does) and the visual embeddings go in between.
"""

from __future__ import annotations

import re

from transformers import PreTrainedTokenizerFast

from flashlive.model.errors import PromptError, PromptTooLongError

IMAGE_PLACEHOLDER = "<image>"
# Qwen2's control tokens look like <|name|>; typed into a question they would be tokenized as the real
# tokens and could end the user turn early, so questions may not contain them.
CONTROL_TOKEN = re.compile(r"<\|[A-Za-z0-9_]+\|>")
DEFAULT_SYSTEM = "You are a helpful assistant."


def time_message(duration_s: float, num_frames: int) -> str:
    return (
        f"The video lasts for {duration_s:.2f} seconds, and {num_frames} frames are uniformly sampled"
        " from it."
    )


def build_prompt(question: str, duration_s: float, num_frames: int, system: str = DEFAULT_SYSTEM) -> str:
    """The full ChatML prompt, ending where the assistant's answer starts."""
    return video_prefix_text(system) + IMAGE_PLACEHOLDER + question_text(question, duration_s, num_frames)


def video_prefix_text(system: str = DEFAULT_SYSTEM) -> str:
    """The prompt before the video: question-independent, so a visual prefix can be shared."""
    if IMAGE_PLACEHOLDER in system:
        raise PromptError(f"the system text must not contain the video placeholder {IMAGE_PLACEHOLDER!r}")
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"


def question_text(question: str, duration_s: float, num_frames: int) -> str:
    """The prompt after the video: the time message, the question, the start of the answer."""
    if not question.strip():
        raise PromptError("the question is empty")
    if IMAGE_PLACEHOLDER in question:
        raise PromptError(f"the question must not contain the video placeholder {IMAGE_PLACEHOLDER!r}")
    control = CONTROL_TOKEN.search(question)
    if control:
        raise PromptError(f"the question must not contain the control token {control.group()!r}")
    return f"\n{time_message(duration_s, num_frames)} {question}<|im_end|>\n<|im_start|>assistant\n"


def tokenize_with_image(
    tokenizer: PreTrainedTokenizerFast,
    prompt: str,
    *,
    visual_tokens: int | None = None,
    max_positions: int | None = None,
    max_new_tokens: int = 0,
) -> tuple[list[int], list[int]]:
    """Token ids before and after the single `<image>` placeholder.

    With `visual_tokens` and `max_positions` given, raise `PromptTooLongError` when prefix + video +
    suffix + `max_new_tokens` would not fit the model's positions.
    """
    parts = prompt.split(IMAGE_PLACEHOLDER)
    if len(parts) != 2:
        raise PromptError(f"the prompt must hold exactly one {IMAGE_PLACEHOLDER!r}, found {len(parts) - 1}")
    prefix = tokenizer.encode(parts[0], add_special_tokens=False)
    suffix = tokenizer.encode(parts[1], add_special_tokens=False)
    if visual_tokens is not None and max_positions is not None:
        check_fits(
            len(prefix),
            visual_tokens,
            len(suffix),
            max_positions=max_positions,
            max_new_tokens=max_new_tokens,
        )
    return prefix, suffix


def check_fits(prefix: int, visual: int, suffix: int, *, max_positions: int, max_new_tokens: int = 0) -> None:
    total = prefix + visual + suffix + max_new_tokens
    if total > max_positions:
        room = max_positions - prefix - visual - max_new_tokens
        raise PromptTooLongError(
            f"the prompt does not fit the model's context: {prefix} + {visual} video + {suffix} text tokens"
            f" + {max_new_tokens} for the answer = {total} > {max_positions} positions. "
            + (
                f"Shorten the question to about {room} tokens, or ask about a shorter window."
                if room > 0
                else "Ask about a shorter window of video (fewer frames)."
            )
        )
