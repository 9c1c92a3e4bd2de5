"""The dropout settings the harness compares: off, the model card's recipe and a harsher one.

The model card drops visual tokens before layers 4 and 18 of Qwen2's 28; a model of another depth gets
its stages at the same relative depths (`model/config.py`'s `scale_dropout`: tiny's 4 layers -> before
layers 1 and 3, mini's 6 -> 1 and 4).
"""

from __future__ import annotations

from dataclasses import replace

from flashlive.model.config import MODEL_CARD_DROPOUT, DropoutConfig, scale_dropout
from flashlive.model.evaluation.errors import EvalError

HARSH_RATIOS = (1.0, 0.5, 0.125)


def dropout_modes(num_layers: int) -> list[tuple[str, DropoutConfig | None]]:
    """(name, setting) of each compared mode, off first."""
    try:
        recipe = scale_dropout(MODEL_CARD_DROPOUT, num_layers)
    except ValueError as exc:
        raise EvalError(f"cannot compare dropout on this model: {exc}") from None
    return [("off", None), ("recipe", recipe), ("harsh", replace(recipe, ratios=HARSH_RATIOS))]


def describe(dropout: DropoutConfig | None) -> dict[str, object] | None:
    if dropout is None:
        return None
    return {"mode": dropout.mode, "layers": list(dropout.layers), "ratios": list(dropout.ratios)}
