"""Query-time sampling: pick whole clips uniformly over a window (DESIGN §2)."""

from __future__ import annotations

from flashlive.memory.errors import InvalidRequestError

MAX_BUDGET = 100_000  # clips; 24 h at one 4-frame clip per 4 s is 21,600


def check_budget(budget: object) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int):
        raise InvalidRequestError(f"budget must be a whole number of clips, not {budget!r}")
    if budget < 1:
        raise InvalidRequestError(f"budget must be at least 1 clip, not {budget}")
    if budget > MAX_BUDGET:
        raise InvalidRequestError(f"budget {budget} is more than the {MAX_BUDGET} clips a read may ask for")
    return budget


def uniform_indices(n: int, budget: int) -> list[int]:
    """Indices of `budget` of `n` clips, evenly spread, first and last always included.

    index_i = floor(i * (n - 1) / (budget - 1)) for i = 0 .. budget - 1, in exact integer arithmetic.
    That is `np.linspace(0, n - 1, budget).astype(int)` (the sampling VideoChat-Flash uses) without
    its float rounding. With budget >= n every index is returned; budget == 1 gives [0] as linspace
    does. Strictly increasing whenever budget <= n.
    """
    if n <= budget:
        return list(range(n))
    if budget == 1:
        return [0]
    return [i * (n - 1) // (budget - 1) for i in range(budget)]


def check_recent(recent: object, budget: int | None) -> int:
    if isinstance(recent, bool) or not isinstance(recent, int) or recent < 0:
        raise InvalidRequestError(f"recent must be a whole number of clips >= 0, not {recent!r}")
    if budget is not None and recent > budget:
        raise InvalidRequestError(f"recent ({recent} clips) is more than the budget ({budget} clips)")
    return recent


def recent_indices(n: int, budget: int, recent: int) -> list[int]:
    """Like `uniform_indices`, but the newest `recent` clips are always kept and the rest of the budget
    is spread uniformly over the older clips (the "what is happening now" option of a query)."""
    if n <= budget:
        return list(range(n))
    recent = min(recent, budget)
    older = uniform_indices(n - recent, budget - recent) if budget > recent else []
    return older + list(range(n - recent, n))
