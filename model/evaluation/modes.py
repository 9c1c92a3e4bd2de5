"""The dropout settings the harness compares: off, the model card's recipe and a harsher one.

The model card drops visual tokens before layers 4 and 18 of Qwen2's 28; a model of another depth gets
its stages at the same relative depths (tiny's 4 layers: before layers 1 and 3).
"""

from __future__ import annotations

from flashlive.model.config import MODEL_CARD_DROPOUT, DropoutConfig
from flashlive.model.evaluation.errors import EvalError

REFERENCE_LAYERS = 28  # the depth of the LLM the model card's layers are stated for
HARSH_RATIOS = (1.0, 0.5, 0.125)


def scale_layers(
    layers: tuple[int, ...], num_layers: int, reference: int = REFERENCE_LAYERS
) -> tuple[int, ...]:
    """`layers` of a `reference`-layer LLM moved to the same relative depths of a `num_layers` one
    (rounded, at least 1, strictly increasing, each below `num_layers`)."""
    out: list[int] = []
    for layer in layers:
        scaled = max(1, round(layer * num_layers / reference))
        out.append(max(scaled, out[-1] + 1) if out else scaled)
    if out and out[-1] >= num_layers:
        raise EvalError(
            f"a {num_layers}-layer LLM has no room for dropout stages at the relative depths of layers "
            f"{list(layers)} of {reference}"
        )
    return tuple(out)


def dropout_modes(num_layers: int) -> list[tuple[str, DropoutConfig | None]]:
    """(name, setting) of each compared mode, off first."""
    recipe = MODEL_CARD_DROPOUT
    layers = scale_layers(recipe.layers, num_layers)
    return [
        ("off", None),
        ("recipe", DropoutConfig(recipe.mode, layers, recipe.ratios)),
        ("harsh", DropoutConfig(recipe.mode, layers, HARSH_RATIOS)),
    ]


def describe(dropout: DropoutConfig | None) -> dict[str, object] | None:
    if dropout is None:
        return None
    return {"mode": dropout.mode, "layers": list(dropout.layers), "ratios": list(dropout.ratios)}
