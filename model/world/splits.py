"""Which world seeds training may use and which are held out for evaluation: the one rule for both.

Seeds below HELDOUT_START are training seeds; seeds from HELDOUT_START on are never trained on, and
every evaluation world (held-out question worlds, NIAH haystacks) is drawn from them. A world's style
(`Style.random(seed)`) and its needles (`make_niah(seed, ...)`) follow its seed, so a held-out seed
holds out all three.

    train_seed(i)            # the i-th training world: i itself, refused once it reaches the held-out range
    heldout_seeds(20)        # the first 20 evaluation worlds
    is_heldout(seed)
"""

from __future__ import annotations

from .script import ScriptError

HELDOUT_START = 1_000_000_000  # far above any training run's world count, below make_niah's 2**32 wrap
SEED_LIMIT = 2**32  # make_niah keeps seed & 0xFFFFFFFF: seeds at or above would alias smaller ones


def is_heldout(seed: int) -> bool:
    """True for seeds evaluation uses (training must not)."""
    _check_range(seed)
    return seed >= HELDOUT_START


def train_seed(index: int) -> int:
    """The world seed of the `index`-th training world; ScriptError once it would be held out."""
    _check_range(index)
    if index >= HELDOUT_START:
        raise ScriptError(
            f"training world {index} would use seed {index}, which is held out for evaluation "
            f"(seeds >= {HELDOUT_START:,})"
        )
    return index


def heldout_seeds(count: int, offset: int = 0) -> list[int]:
    """`count` evaluation seeds, starting at the `offset`-th one."""
    if count < 0 or offset < 0:
        raise ScriptError(f"count and offset must be >= 0, got {count} and {offset}")
    if HELDOUT_START + offset + count > SEED_LIMIT:
        raise ScriptError(f"only {SEED_LIMIT - HELDOUT_START:,} held-out seeds exist")
    return [HELDOUT_START + offset + i for i in range(count)]


def _check_range(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ScriptError(f"a world seed is a whole number in [0, {SEED_LIMIT}), got {seed!r}")
