"""The evaluation harness end to end: held-out worlds, NIAH and multi-hop grids, the dropout comparison,
scored with sources that know the truth (100 %) or give near misses (0 %), then the real pipeline on the
tiny preset (random weights: any score), its JSON and heatmap, and the haystack token cache."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eval_sources import FixedSource, truth_source, wrong_source
from PIL import Image

from flashlive.cli import main
from flashlive.model.config import DropoutConfig
from flashlive.model.evaluation import harness, heatmap, report
from flashlive.model.evaluation.errors import EvalError
from flashlive.model.evaluation.items import WorldVideo, mhniah_items, niah_items
from flashlive.model.evaluation.modes import dropout_modes
from flashlive.model.evaluation.settings import EvalSettings
from flashlive.model.evaluation.sources import ModelSource
from flashlive.model.evaluation.tokens import WorldTokens, encode_frames
from flashlive.model.pipeline import TowerEncoder
from flashlive.model.world import (
    HELDOUT_START,
    ScriptError,
    Style,
    World,
    heldout_seeds,
    is_heldout,
    make_niah,
    train_seed,
)

LENGTHS, DEPTHS = [16, 32], [0.0, 0.5, 1.0]


def images(world: World, count: int) -> Iterator[np.ndarray]:
    for f in world.frames(1.0, 0.0, count):
        assert f.image is not None
        yield f.image


def accuracies(grid: dict[str, Any]) -> set[float | None]:
    return {a for row in grid["accuracy"] for a in row}


# --- the split ------------------------------------------------------------------------------------------
def test_held_out_seeds_are_never_training_seeds() -> None:
    assert train_seed(0) == 0 and train_seed(HELDOUT_START - 1) == HELDOUT_START - 1
    with pytest.raises(ScriptError, match="held out"):
        train_seed(HELDOUT_START)
    seeds = heldout_seeds(3, offset=5)
    assert seeds == [HELDOUT_START + 5, HELDOUT_START + 6, HELDOUT_START + 7]
    assert all(is_heldout(s) for s in seeds) and not is_heldout(7)
    with pytest.raises(ScriptError):
        is_heldout(-1)
    with pytest.raises(ScriptError):
        heldout_seeds(2**32)


def test_every_evaluation_world_is_held_out() -> None:
    items = [*niah_items(2, [16], [0.0]), *mhniah_items(2, [24], [2, 3])]
    assert items and all(isinstance(i.video, WorldVideo) and is_heldout(i.video.world.seed) for i in items)


# --- scoring through the harness ----------------------------------------------------------------------
def test_world_scores_a_known_good_and_a_known_bad_answerer() -> None:
    good = harness.run_world(truth_source(), items=4, frames=32)
    bad = harness.run_world(wrong_source(), items=4, frames=32)
    assert good["overall"]["accuracy"] == 1.0 and bad["overall"]["accuracy"] == 0.0
    assert good["overall"]["n"] == bad["overall"]["n"] >= 40
    assert set(good["kinds"]) >= {"colour", "shape", "count", "presence", "needle", "multihop", "when"}
    assert all(k["accuracy"] == 1.0 for k in good["kinds"].values())
    assert all(k["accuracy"] == 0.0 for k in bad["kinds"].values())
    assert sum(k["n"] for k in good["kinds"].values()) == good["overall"]["n"] == len(good["records"])
    assert good["groups"]["attributes"]["n"] > 0 and good["groups"]["temporal"]["n"] > 0


def test_niah_grid_scores_every_cell() -> None:
    good = harness.run_niah(truth_source(), items=2, lengths=LENGTHS, depths=DEPTHS)
    bad = harness.run_niah(wrong_source(), items=2, lengths=LENGTHS, depths=DEPTHS)
    for result, acc in ((good, 1.0), (bad, 0.0)):
        g = result["grid"]
        assert g["row_values"] == DEPTHS and g["col_values"] == LENGTHS
        assert accuracies(g) == {acc}
        assert [c["n"] for c in g["cells"]] == [2] * len(LENGTHS) * len(DEPTHS)
    # the needle sits where the cell says: the first clip at depth 0, the last at depth 1
    for item in niah_items(1, [32], [0.0, 1.0]):
        assert isinstance(item.video, WorldVideo)
        (needle,) = item.video.world.needles
        assert needle.start == (0.0 if item.cell["depth"] == 0.0 else 28.0)


def test_multihop_grid_by_hops_and_length() -> None:
    good = harness.run_mhniah(truth_source(), items=2, lengths=[24, 48], hops=[2, 3])
    bad = harness.run_mhniah(wrong_source(), items=2, lengths=[24, 48], hops=[2, 3])
    assert good["grid"]["row_values"] == [2, 3] and accuracies(good["grid"]) == {1.0}
    assert accuracies(bad["grid"]) == {0.0} and bad["overall"]["n"] == 8
    assert all(r["kind"] == "multihop" for r in good["records"])
    with pytest.raises(EvalError, match="3-hop chains need haystacks of at least 24 frames"):
        harness.run_mhniah(truth_source(), items=1, lengths=[16], hops=[3])


def test_dropout_compares_the_same_items_in_every_mode() -> None:
    source = truth_source()
    result = harness.run_dropout(source, items=1, frames=16, lengths=[32], depths=[0.0, 1.0])
    names = [m["name"] for m in result["modes"]]
    assert names == ["off", "recipe", "harsh"]
    recipe = result["modes"][1]["dropout"]
    assert recipe == {"mode": "uniform0_attention", "layers": [4, 18], "ratios": [1.0, 0.75, 0.25]}
    assert result["modes"][2]["dropout"]["ratios"] == [1.0, 0.5, 0.125]
    assert all(m["accuracy"] == 1.0 and m["points_vs_off"] == 0.0 for m in result["modes"])
    per_mode = {name: [r["item"] for r in recs] for name, recs in result["records"].items()}
    assert per_mode["off"] == per_mode["recipe"] == per_mode["harsh"]
    assert {r["cell"]["set"] for r in result["records"]["off"]} == {"world", "niah"}
    # every item asked once per mode, plus one untimed warm-up
    asked = [i for i, _ in source.calls]
    assert len(asked) == 3 * len(set(asked)) + 1


def test_the_recipe_keeps_its_relative_depths() -> None:
    def layers(n: int) -> list[tuple[int, ...] | None]:
        return [None if d is None else d.layers for _, d in dropout_modes(n)]

    assert layers(28) == [None, (4, 18), (4, 18)]
    assert layers(4) == [None, (1, 3), (1, 3)]  # tiny
    assert layers(6) == [None, (1, 4), (1, 4)]  # mini
    with pytest.raises(EvalError, match="too few"):
        dropout_modes(2)
    modes = dict(dropout_modes(4))
    assert modes["recipe"] == DropoutConfig("uniform0_attention", (1, 3), (1.0, 0.75, 0.25))
    assert modes["harsh"] == DropoutConfig("uniform0_attention", (1, 3), (1.0, 0.5, 0.125))


def test_haystacks_longer_than_the_context_fail_before_anything_runs() -> None:
    source = truth_source(max_frames=100)
    with pytest.raises(EvalError, match="200 frames do not fit truth's context"):
        harness.run_niah(source, items=1, lengths=[64, 200], depths=[0.5])
    assert source.calls == []
    # without --lengths, the defaults that fit; none fitting says so
    assert harness.plan(truth_source(max_frames=600), "niah", EvalSettings()).lengths == (250, 500)
    assert harness.plan(truth_source(max_frames=600), "dropout", EvalSettings()).lengths == (500,)
    with pytest.raises(EvalError, match="give --lengths"):
        harness.plan(truth_source(max_frames=100), "niah", EvalSettings())


def test_a_source_that_answers_too_few_questions_is_an_error() -> None:
    class Short(FixedSource):
        def answer(self, item: Any, dropout: Any) -> Any:
            a = super().answer(item, dropout)
            return type(a)(a.texts[:-1])

    with pytest.raises(EvalError, match="gave 0 answers to the 1 questions"):
        harness.run_niah(Short(lambda q: "A"), items=1, lengths=[16], depths=[0.0])


# --- the heatmap ----------------------------------------------------------------------------------------
def test_the_heatmap_colours_each_cell_by_its_accuracy(tmp_path: Path) -> None:
    acc: list[list[float | None]] = [[1.0, 0.5], [0.0, None]]
    path = heatmap.write(tmp_path / "h.png", acc, [0.0, 1.0], [1000, 3000], title="NIAH")
    with Image.open(path) as im:
        assert im.format == "PNG"
        rgb = im.convert("RGB")
        layout = heatmap.Layout(2, 2)
        for r, row in enumerate(acc):
            for c, a in enumerate(row):
                x0, y0, _, _ = layout.cell_box(r, c)
                want = heatmap.EMPTY if a is None else heatmap.colour(a)
                assert rgb.getpixel((x0 + 2, y0 + 2)) == want, (r, c)
    assert heatmap.colour(1.0) == (0x9A, 0xD5, 0xB3) and heatmap.colour(0.0) == (0xF0, 0x49, 0x6E)
    assert heatmap.colour(0.5) == (0xEB, 0xB8, 0x39)


# --- the real pipeline on tiny ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny() -> ModelSource:
    # random weights never say their end token: a short answer budget keeps the decoding cheap
    return ModelSource.load("tiny", max_new_tokens=6)


@pytest.mark.slow
def test_the_haystack_cache_gives_the_tokens_of_a_fresh_encode(tiny: ModelSource) -> None:
    """A needle item's tokens: the cached haystack (grown from 16 to 32 frames on demand) with only the
    needle's clips encoded again equals encoding the whole item from scratch, with plain frames and
    with x264 runs (8 frames, 2 clips)."""
    encoder = tiny.encoder
    assert isinstance(encoder, TowerEncoder)
    for style in (Style(), Style(width=160, height=120, codec="h264", quality=30)):
        item = make_niah(HELDOUT_START + 3, frames=32, depth=0.5, style=style)
        empty = World(item.world.seed, style=style)
        cache = WorldTokens(encoder)
        short = cache.tokens(WorldVideo(empty, 16))
        cached = cache.tokens(WorldVideo(item.world, 32, haystack_frames=32))
        fresh = encode_frames(encoder, images(item.world, 32))
        assert cached.shape == fresh.shape == (8, 64, encoder.width)
        np.testing.assert_allclose(cached.astype(np.float32), fresh.astype(np.float32), atol=2e-2, rtol=0)
        haystack = encode_frames(encoder, images(empty, 32))
        np.testing.assert_allclose(
            short.astype(np.float32), haystack[:4].astype(np.float32), atol=2e-2, rtol=0
        )
        changed = {c for c in range(8) if not np.allclose(fresh[c], haystack[c], atol=2e-2)}
        assert set(item.needle_clips) <= changed
        # the haystack's 8 clips once (4, then 4 more), then the needle's clip (or its x264 run of two)
        assert cache.encoded_clips == 8 + (2 if style.codec == "h264" else 1)
        cache.tokens(WorldVideo(empty, 32))
        assert cache.encoded_clips == 8 + (2 if style.codec == "h264" else 1)


@pytest.mark.slow
def test_haystacks_of_several_worlds_stay_cached_within_the_budget(tiny: ModelSource) -> None:
    videos = [WorldVideo(World(seed), 16) for seed in heldout_seeds(2)]
    roomy, tight = WorldTokens(tiny.encoder), WorldTokens(tiny.encoder, cache_bytes=0)
    for cache in (roomy, tight):
        for video in videos * 2:
            cache.tokens(video)
    assert roomy.encoded_clips == 2 * 4  # each world once
    assert tight.encoded_clips == 4 * 4  # only the world in use is kept


@pytest.mark.slow
def test_tiny_answers_end_to_end_and_writes_json_and_png(tiny: ModelSource, tmp_path: Path) -> None:
    result = harness.run_niah(tiny, items=1, lengths=[16, 32], depths=[0.0, 1.0])
    assert result["overall"]["n"] == 4 and 0.0 <= result["overall"]["accuracy"] <= 1.0
    assert all(isinstance(r["answer"], str) and r["truth"] in "ABCD" for r in result["records"])
    written = report.write(tmp_path, result, {"model": "tiny"})
    assert [p.name for p in written] == ["niah.json", "niah.png"]
    data = json.loads((tmp_path / "niah.json").read_text())
    assert data["model"] == "tiny" and data["grid"]["col_values"] == [16, 32]
    with Image.open(tmp_path / "niah.png") as im:
        assert im.size == heatmap.Layout(2, 2).size or im.size[1] == heatmap.Layout(2, 2).size[1]
    assert "niah:" in report.summary(result)


@pytest.mark.slow
def test_tiny_dropout_modes_keep_what_the_recipe_says(tiny: ModelSource) -> None:
    (item,) = niah_items(1, [32], [0.5], offset=7)
    encoded = tiny.world_tokens.encoded_clips
    kept = {}
    for name, dropout in dropout_modes(tiny.num_layers):
        records, answers = harness.ask(tiny, item, dropout)
        assert len(records) == 1 and answers.prefill_s > 0 and answers.prefill_cpu_s > 0
        kept[name] = (answers.visual_tokens, answers.visual_kept)
    # 32 frames = 8 clips = 512 visual tokens; the recipe keeps 75 % then 25 %, the harsh one 50 %, 12.5 %
    assert kept == {"off": (512, ()), "recipe": (512, (384, 128)), "harsh": (512, (256, 64))}
    # the item's tokens were encoded once (haystack and needle clip), not once per mode
    assert tiny.world_tokens.encoded_clips - encoded == 8 + 1


@pytest.mark.slow
def test_the_command_runs_a_part_and_says_where_results_went(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "results"
    argv = ["eval", "mhniah", "--model", "tiny", "--items", "1", "--lengths", "24", "--hops", "2"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "mhniah:" in printed and str(out / "mhniah.json") in printed
    data = json.loads((out / "mhniah.json").read_text())
    assert data["settings"]["lengths"] == [24] and data["overall"]["n"] == 1
    assert (out / "mhniah.png").stat().st_size > 0
