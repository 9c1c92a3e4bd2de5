"""Which sequences run in the next engine step (no torch, no model).

Waiting sequences are prefilled first, in batches of the ones that share a prefix, as long as the
running batch has room (`max_batch`); otherwise every running sequence takes one decode step. The
order of `running` is the row order of the engine's batch KV cache.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar


class HasPrefix(Protocol):
    @property
    def seq_id(self) -> int: ...

    @property
    def prefix_key(self) -> int: ...


R = TypeVar("R", bound=HasPrefix)


@dataclass
class PrefillPlan(Generic[R]):
    groups: list[list[R]]  # each group shares one prefix and is prefilled as one batch


@dataclass
class DecodePlan(Generic[R]):
    running: list[R]


class Scheduler(Generic[R]):
    def __init__(self, max_batch: int) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = max_batch
        self.waiting: deque[R] = deque()
        self.running: list[R] = []

    def add(self, request: R) -> None:
        self.waiting.append(request)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> PrefillPlan[R] | DecodePlan[R] | None:
        room = self.max_batch - len(self.running)
        if self.waiting and room > 0:
            groups: dict[int, list[R]] = {}
            for _ in range(min(room, len(self.waiting))):
                request = self.waiting.popleft()
                groups.setdefault(request.prefix_key, []).append(request)
            return PrefillPlan(list(groups.values()))
        if self.running:
            return DecodePlan(list(self.running))
        return None

    def remove(self, seq_id: int) -> tuple[R, int | None] | None:
        """Take a sequence out: (request, its row in the running batch, or None if it was waiting)."""
        for request in self.waiting:
            if request.seq_id == seq_id:
                self.waiting.remove(request)
                return request, None
        for row, request in enumerate(self.running):
            if request.seq_id == seq_id:
                del self.running[row]
                return request, row
        return None
