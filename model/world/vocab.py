"""The token ids the world's language uses, under the real Qwen2 tokenizer.

A small model trained only on this world never needs most of Qwen2's 151,665 embedding rows; the
training code can keep just these (and map any other id to one reserved row). The set covers every
text `language.vocabulary_texts` enumerates, standing alone and after a space (as a question sits in
the prompt), plus the ChatML prompt around it (system message, time message with any digits) and the
three control tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .language import vocabulary_texts

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast


def prompt_texts() -> list[str]:
    """The prompt scaffolding the model sees around a question, with every digit in the time message."""
    from flashlive.model.prompt import build_prompt

    return [build_prompt("?", d, n) for d, n in ((1234.56, 7890), (0.0, 1), (987.65, 432))]


def vocabulary_token_ids(tokenizer: PreTrainedTokenizerFast | None = None) -> frozenset[int]:
    """Every token id the world's texts and their prompts tokenize to (default: the built-in Qwen2)."""
    from flashlive.model.prompt import IMAGE_PLACEHOLDER, tokenize_with_image
    from flashlive.model.tokenizer import ENDOFTEXT_ID, IM_END_ID, IM_START_ID, load_tokenizer

    tok = tokenizer or load_tokenizer()
    texts = vocabulary_texts()
    ids: set[int] = {ENDOFTEXT_ID, IM_START_ID, IM_END_ID}
    for batch in (texts, [" " + t for t in texts]):
        for row in tok(batch, add_special_tokens=False)["input_ids"]:
            ids.update(row)
    for prompt in prompt_texts():
        prefix, suffix = tokenize_with_image(tok, prompt)
        ids.update(prefix)
        ids.update(suffix)
        assert IMAGE_PLACEHOLDER not in tok.decode(prefix + suffix)
    return frozenset(ids)
