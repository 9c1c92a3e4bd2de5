"""HiCo merging: schedule, sizes, fixed points, and output order on inputs worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from flashlive.model.merge import hico_merge, merge_schedule


def _polar(deg: float, mag: float) -> list[float]:
    return [mag * math.cos(math.radians(deg)), mag * math.sin(math.radians(deg))]


def _tokens(rows: list[list[float]]) -> Tensor:
    return torch.tensor(rows, dtype=torch.float64)[None]  # [1, P, C]


def test_schedule_448_and_224() -> None:
    assert merge_schedule(3136, 64) == [3136, 1568, 784, 392, 196, 98, 64]
    assert merge_schedule(784, 64) == [784, 392, 196, 98, 64]
    assert merge_schedule(64, 64) == [64]
    assert merge_schedule(8, 6) == [8, 6]  # remainder step: 2 <= 8 // 2


@pytest.mark.parametrize(("p", "width"), [(3136, 16), (784, 1024)])
def test_counts_and_sizes(p: int, width: int) -> None:
    x = torch.randn(2, p, width, generator=torch.Generator().manual_seed(p))
    out, size = hico_merge(x, 64)
    assert out.shape == (2, 64, width)
    assert size.shape == (2, 64, 1)
    assert torch.equal(size.sum(dim=(1, 2)), torch.full((2,), float(p)))
    # Each output is the mean of the tokens it stands for, so size-weighted outputs sum to the input sum.
    torch.testing.assert_close((out * size).sum(1), x.sum(1), atol=1e-2, rtol=1e-4)


def test_intermediate_counts_follow_the_schedule() -> None:
    x = torch.randn(1, 3136, 16, generator=torch.Generator().manual_seed(1))
    size = None
    for after in merge_schedule(3136, 64)[1:]:
        x, size = hico_merge(x, after, size)
        assert x.shape[1] == after
        assert size.sum() == 3136


def test_identical_tokens_merge_to_themselves() -> None:
    v = torch.randn(2, 1, 32, generator=torch.Generator().manual_seed(0))
    x = v.expand(2, 784, 32).contiguous()
    out, size = hico_merge(x, 64)
    torch.testing.assert_close(out, v.expand(2, 64, 32), atol=1e-5, rtol=1e-5)
    assert torch.equal(size.sum(dim=(1, 2)), torch.tensor([784.0, 784.0]))


def test_clips_are_merged_independently() -> None:
    x = torch.randn(3, 784, 32, generator=torch.Generator().manual_seed(4))
    out, size = hico_merge(x, 64)
    for i in range(3):
        one, one_size = hico_merge(x[i : i + 1], 64)
        torch.testing.assert_close(out[i : i + 1], one)
        assert torch.equal(size[i : i + 1], one_size)


def test_output_order_on_a_hand_built_clip() -> None:
    # 8 tokens in 2-d, metric = the token's direction. A = even positions, B = odd positions.
    # B: b1 at 0°, b3 at 90°, b5 at 180°, b7 at 270°.
    # A: a0 at 40° (best b1, cos 40° = .77), a2 at 95° (best b3, cos 5° = .996),
    #    a4 at 200° (best b5, cos 20° = .94), a6 at 300° (best b7, cos 30° = .87).
    # 8 -> 6 merges r = 2: the two best-scoring A tokens, a2 into b3 and a4 into b5. The unmerged A tokens
    # come first in score order (a6 before a0, against their positions), then the B tokens in place.
    deg = [40, 0, 95, 90, 200, 180, 300, 270]
    mag = [1, 2, 1, 3, 1, 1, 2, 1]
    t = [_polar(d, m) for d, m in zip(deg, mag, strict=True)]
    out, size = hico_merge(_tokens(t), 6, metric_chunks=1)

    def avg(i: int, j: int) -> list[float]:
        return [(t[i][0] + t[j][0]) / 2, (t[i][1] + t[j][1]) / 2]

    want = [t[6], t[0], t[1], avg(3, 2), avg(5, 4), t[7]]
    torch.testing.assert_close(out, _tokens(want))
    assert size.flatten().tolist() == [1, 1, 1, 2, 2, 1]


def test_given_sizes_weight_the_average() -> None:
    # t0 (size 3) matches t3 better (cos ~.995) than t2 matches t3 (cos ~.77); r = 1 merges t0 into t3.
    t = [[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.1]]
    size = torch.tensor([[[3.0], [1.0], [1.0], [1.0]]], dtype=torch.float64)
    out, new_size = hico_merge(_tokens(t), 3, size=size, metric_chunks=1)
    merged = [(3 * 2.0 + 1.0) / 4, (3 * 0.0 + 0.1) / 4]
    torch.testing.assert_close(out, _tokens([t[2], t[1], merged]))
    assert new_size.flatten().tolist() == [1, 1, 4]


def test_sizes_carry_across_steps() -> None:
    # 6 -> 3 -> 2. Step 1 (r = 3) merges every A token: a0 (2,0) and a2 (3,0) into b1 (1,0) -> (2,0)
    # size 3; a4 (-4,0) into b5 (-2,0) -> (-3,0) size 2; b3 = (1, sqrt 3) stays, size 1.
    # Step 2 (r = 1): A = [(2,0), (-3,0)], B = [b3 at 60°]; (2,0) scores cos 60° > cos 120°, so it merges
    # into b3 weighted 3 : 1 -> ((6 + 1) / 4, sqrt 3 / 4), size 4. Output: unmerged (-3,0) first.
    s3 = math.sqrt(3)
    t = [[2.0, 0.0], [1.0, 0.0], [3.0, 0.0], [1.0, s3], [-4.0, 0.0], [-2.0, 0.0]]
    assert merge_schedule(6, 2) == [6, 3, 2]
    out, size = hico_merge(_tokens(t), 2, metric_chunks=1)
    torch.testing.assert_close(out, _tokens([[-3.0, 0.0], [7 / 4, s3 / 4]]))
    assert size.flatten().tolist() == [2, 4]


def test_metric_averages_the_chunks() -> None:
    # C = 4 in 2 chunks: metric = ((x0 + x2) / 2, (x1 + x3) / 2). t0 and t1 have the same metric (45°)
    # though their plain cosine is only .5, while t3 is t0's near twin by plain cosine (.99) but 6° off
    # in the metric. So t0 must merge into t1, not t3; t2 (metric pointing away) stays.
    t = [[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, -1.0, 0.0, -1.0], [1.0, 0.0, -0.2, 1.0]]
    out, size = hico_merge(_tokens(t), 3, metric_chunks=2)
    merged = [(a + b) / 2 for a, b in zip(t[0], t[1], strict=True)]
    torch.testing.assert_close(out, _tokens([t[2], merged, t[3]]))
    assert size.flatten().tolist() == [1, 2, 1]


def test_bad_arguments() -> None:
    x = torch.randn(1, 10, 32)
    with pytest.raises(ValueError, match="only removes"):
        hico_merge(x, 11)
    with pytest.raises(ValueError, match="metric chunks"):
        hico_merge(x, 5, metric_chunks=5)
    with pytest.raises(ValueError, match="size must be"):
        hico_merge(x, 5, size=torch.ones(1, 9, 1))
    with pytest.raises(ValueError, match=r"\[B, P, C\]"):
        hico_merge(x[0], 5)
    with pytest.raises(ValueError, match="at least 1"):
        merge_schedule(10, 0)
