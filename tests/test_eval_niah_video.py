"""The NIAH-Video loader and run on a small folder in the `OpenGVLab/NIAH-Video` layout: a haystack
video, the single- and multi-hop annotation files where the release keeps them, needle images under
single/ and multi/; then what a broken folder says."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from eval_sources import truth_source, wrong_source
from PIL import Image

from flashlive.cli import main
from flashlive.model.evaluation import harness, niah_video
from flashlive.model.evaluation.errors import DatasetError
from flashlive.model.evaluation.items import FileVideo, Span
from flashlive.model.evaluation.sources import ModelSource
from flashlive.model.evaluation.tokens import encode_frames
from flashlive.model.world import HELDOUT_START, Style, World, write_mp4

HAYSTACK_SECONDS, HAYSTACK_FPS = 40, 2  # 80 frames in the file, 40 at one per second
SINGLE = "vision_niah/data/source_data/niah-coco-singlehop_20.json"
MULTI = "vision_niah/data_multi/source_data/niah-coco-multihop-100.json"


def _image(path: Path, colour: tuple[int, int, int], size: tuple[int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, quality=95)
    return path.name


def _question(what: str) -> str:
    return (
        f"Find the frame of {what}. what is the color of the plate\nOptions: (A) white\n(B) purple\n"
        "(C) green\n(D) orange\nOnly give the best option. Best option: ("
    )


def make_folder(root: Path) -> Path:
    world = World(HELDOUT_START + 11, style=Style(width=160, height=120))
    write_mp4(world, root / "video_haystack.mkv", seconds=HAYSTACK_SECONDS, fps=HAYSTACK_FPS)
    single = []
    for i, colour in enumerate([(250, 250, 250), (200, 40, 160)]):
        name = _image(root / "single" / f"COCO_val2014_{i:012d}.jpg", colour, (200, 120))
        single.append(
            {"question": _question(f"a plate {i}"), "answer": "AB"[i], "image": f"single/{name}", "id": i}
        )
    chain = [
        "multi/"
        + _image(root / "multi" / f"niah_7_{k}_COCO_val2014_{k:012d}.jpg", (40 * k, 90, 200), (90, 150))
        for k in range(3)
    ]
    multi = [
        {
            "images": chain,
            "question1": _question("a bus"),
            "answer1": "C",
            "question2": _question("a dog"),
            "answer2": "D",
        }
    ]
    for rel, data in ((SINGLE, single), (MULTI, multi)):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(json.dumps(data, indent=1))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_folder(tmp_path_factory.mktemp("niah-video"))


def test_the_layout_is_read(folder: Path) -> None:
    data = niah_video.load(folder)
    assert data.haystack == folder / "video_haystack.mkv"
    assert [n.answer for n in data.single] == ["A", "B"] and [n.id for n in data.single] == [0, 1]
    assert data.single[1].image == folder / "single" / "COCO_val2014_000000000001.jpg"
    assert data.single[0].question.endswith("Best option: (")
    (chain,) = data.multi
    assert [p.name for p in chain.images] == [f"niah_7_{k}_COCO_val2014_{k:012d}.jpg" for k in range(3)]
    assert [(k, a) for k, _, a in chain.questions] == [("niah_video_caption", "C"), ("niah_video_qa", "D")]


def test_the_haystack_is_sampled_at_one_frame_per_second_and_padded_square(folder: Path) -> None:
    path = folder / "video_haystack.mkv"
    assert niah_video.haystack_length(path) == HAYSTACK_SECONDS
    frames = list(niah_video.haystack_frames(path, 8))
    assert len(frames) == 8 and all(f.shape == (160, 160, 3) for f in frames)
    mean = [int(m * 255) for m in niah_video.PAD_MEAN]
    assert (frames[0][:20] == mean).all() and (frames[0][-20:] == mean).all()  # 120 rows centred in 160
    with pytest.raises(DatasetError, match="gives 40 frames at 1 fps; 44 are needed"):
        list(niah_video.haystack_frames(path, 44))
    clip = niah_video.needle_clip(folder / "multi" / "niah_7_0_COCO_val2014_000000000000.jpg")
    assert clip.shape == (4, 150, 150, 3) and (clip[0] == clip[3]).all()


def test_needles_go_where_the_paper_puts_them(folder: Path) -> None:
    data = niah_video.load(folder)
    items = {
        (i.cell["frames"], i.cell["depth"]): i
        for i in niah_video.single_items(data, [16, 20], [0.0, 0.5, 1.0], 1)
    }
    image = data.single[0].image

    def parts(key: tuple[int, float]) -> tuple[Span | Path, ...]:
        video = items[key].video
        assert isinstance(video, FileVideo)
        return video.parts

    assert parts((16, 0.5)) == (Span(0, 8), image, Span(8, 16))
    assert parts((20, 0.5)) == (Span(0, 8), image, Span(8, 20))  # 10 frames: down to the clip at 8
    assert parts((16, 0.0)) == (image, Span(0, 16))
    assert parts((16, 1.0)) == (Span(0, 16), image)
    (item,) = niah_video.multi_items(data, [16], 1)
    c = data.multi[0].images
    assert isinstance(item.video, FileVideo)
    assert item.video.parts == (c[0], Span(0, 8), c[1], Span(8, 16), c[2])
    assert item.video.num_frames == 16 + 3 * 4 and len(item.questions) == 2


def test_known_good_and_known_bad_answers_on_the_folder(folder: Path) -> None:
    data = niah_video.load(folder)
    good = harness.run_niah_video(truth_source(), data, lengths=[8, 16], depths=[0.0, 1.0])
    bad = harness.run_niah_video(wrong_source(), data, lengths=[8, 16], depths=[0.0, 1.0])
    assert good["single"]["overall"] == {"n": 8, "correct": 8, "accuracy": 1.0}
    assert bad["single"]["overall"]["accuracy"] == 0.0
    assert good["multi"]["overall"]["accuracy"] == 1.0 and bad["multi"]["overall"]["accuracy"] == 0.0
    assert [row["frames"] for row in good["multi"]["by_length"]] == [8, 16]
    assert good["settings"]["needles"] == 2 and good["settings"]["chains"] == 1


@pytest.mark.slow
def test_the_model_reads_the_haystack_once_and_each_needle_as_a_clip(folder: Path, tmp_path: Path) -> None:
    source = ModelSource.load("tiny", max_new_tokens=4)
    data = niah_video.load(folder)
    (item,) = niah_video.single_items(data, [16], [0.5], 1)
    assert isinstance(item.video, FileVideo)
    tokens = source.file_tokens.tokens(item.video)
    haystack = encode_frames(source.encoder, niah_video.haystack_frames(data.haystack, 16))
    needle = source.encoder.encode(niah_video.needle_clip(data.single[0].image)[None])
    want = np.concatenate([haystack[:2], needle, haystack[2:]])
    np.testing.assert_allclose(tokens.astype(np.float32), want.astype(np.float32), atol=2e-2, rtol=0)
    # the whole command: JSON with the grid and the chains, and the heatmap
    argv = ["eval", "niah-video", "--model", "tiny", "--data", str(folder), "--lengths", "8,16"]
    assert main([*argv, "--depths", "0,1", "--items", "1", "--out", str(tmp_path), "--quiet"]) == 0
    result: dict[str, Any] = json.loads((tmp_path / "niah-video.json").read_text())
    assert result["single"]["grid"]["col_values"] == [8, 16] and result["single"]["overall"]["n"] == 4
    assert result["multi"]["overall"]["n"] == 4  # one chain, two lengths, two questions
    assert (tmp_path / "niah-video.png").stat().st_size > 0


def _broken(folder: Path, tmp_path: Path, change: Any) -> Path:
    root = tmp_path / "broken"
    shutil.copytree(folder, root)
    change(root)
    return root


def _rewrite(rel: str, edit: Any) -> Any:
    def change(root: Path) -> None:
        data = json.loads((root / rel).read_text())
        (root / rel).write_text(json.dumps(edit(data)))

    return change


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: (r / SINGLE).unlink(), r"no annotation file matching \*singlehop\*.json"),
        (lambda r: (r / SINGLE).write_text("[{"), "not readable JSON"),
        (lambda r: (r / SINGLE).write_text("{}"), "expected a JSON list of objects"),
        (lambda r: (r / SINGLE).write_text("[]"), "the list is empty"),
        (
            _rewrite(SINGLE, lambda d: [{**d[0], "answer": "E"}]),
            "answer must be an option letter A-D, got 'E'",
        ),
        (_rewrite(SINGLE, lambda d: [{**d[0], "question": ""}]), "entry 0 has no text field 'question'"),
        (_rewrite(SINGLE, lambda d: [d[0], {**d[1], "image": "single/gone.jpg"}]), "entry 1: no image file"),
        (
            _rewrite(SINGLE, lambda d: [{**d[0], "image": "nowhere/x.jpg"}]),
            "image 'nowhere/x.jpg' is not under",
        ),
        (_rewrite(MULTI, lambda d: [{**d[0], "images": d[0]["images"][:1]}]), "at least two images"),
        (lambda r: (r / "video_haystack.mkv").unlink(), "no video file"),
        (
            lambda r: [(r / "video_haystack.mkv").rename(r / "a.mkv"), shutil.copy(r / "a.mkv", r / "b.mp4")],
            "2 video files and none named video_haystack",
        ),
        (lambda r: (r / SINGLE).with_name("more-singlehop.json").write_text("[]"), "more than one"),
    ],
)
def test_a_broken_folder_says_what_is_wrong(
    folder: Path, tmp_path: Path, change: Any, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _broken(folder, tmp_path, change)
    with pytest.raises(DatasetError, match=message):
        niah_video.load(root)
    # the command says it in one line, before any model loads
    assert main(["eval", "niah-video", "--data", str(root), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_an_unreadable_image_or_haystack_is_named(folder: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    with pytest.raises(DatasetError, match=r"bad\.jpg: not a readable image"):
        niah_video.needle_clip(bad)
    video = tmp_path / "video_haystack.mkv"
    video.write_bytes(b"\x00" * 1000)
    with pytest.raises(DatasetError, match="not a readable video"):
        niah_video.haystack_length(video)
