"""The generated world: determinism, ground truth against pixels, styles, needles, streams, files."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
from pixels import components

from flashlive.model.world import (
    CLIP_FRAMES,
    COLOURS,
    SIZES,
    Needle,
    ScriptError,
    Style,
    World,
    WorldConfig,
    make_niah,
    nearest_colour,
    write_mp4,
)
from flashlive.model.world.palette import SECOND_TONE, SHADE, second_tone
from flashlive.model.world.world import FrameTruth, ObjectTruth, sprite_diameter


def images(world: World, count: int, fps: float = 1.0) -> list[np.ndarray]:
    out = [f.image for f in world.frames(fps, 0.0, count)]
    assert all(im is not None for im in out)
    return [im for im in out if im is not None]


def _boxes_apart(truth: FrameTruth, width: int, height: int, gap: int = 3) -> bool:
    boxes = [o.box(width, height) for o in truth.objects]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            if a[0] < b[2] + gap and b[0] < a[2] + gap and a[1] < b[3] + gap and b[1] < a[3] + gap:
                return False
    return all(x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height for x0, y0, x1, y1 in boxes)


def test_a_world_is_the_same_for_the_same_seed() -> None:
    style = Style.random(5)
    a, b = World(5, style=style), World(5, style=style)
    fa = list(a.frames(1.0, 0.0, 24))
    fb = list(b.frames(1.0, 0.0, 24))
    assert [f.truth for f in fa] == [f.truth for f in fb]
    assert all(np.array_equal(x, y) for x, y in zip(images(a, 24), images(b, 24), strict=True))
    # random access (scenes built out of order) gives the same frames as a sequential pass
    c = World(5, style=style)
    assert c.truth(fa[-1].t) == fa[-1].truth and c.truth(fa[0].t) == fa[0].truth
    other = World(6, style=style)
    assert [f.truth for f in other.frames(1.0, 0.0, 24, render=False)] != [f.truth for f in fa]


@pytest.mark.parametrize("seed", range(6))
def test_the_colour_under_each_object_is_its_truth(seed: int) -> None:
    world = World(seed, style=Style(width=256, height=192))
    checked = 0
    for frame in world.frames(1.0, 0.0, 40):
        assert frame.image is not None
        for o in frame.truth.objects:
            if o.occlusion > 0:
                continue
            x, y = o.centre(256, 192)
            assert tuple(frame.image[y, x]) == o.rgb == COLOURS[o.colour], (seed, frame.t, o)
            checked += 1
    assert checked > 20


def test_connected_components_count_the_objects_on_a_plain_background() -> None:
    style = Style(width=224, height=224)
    background = np.array(style.background)
    checked = 0
    for seed in range(12):
        world = World(seed, style=style)
        for frame in world.frames(0.25, 0.0, 6):
            truth = frame.truth
            if not truth.objects or not _boxes_apart(truth, 224, 224):
                continue
            assert frame.image is not None
            mask = np.abs(frame.image.astype(int) - background).sum(-1) > 60
            labels = components(mask)
            found = [labels == k for k in np.unique(labels) if k]
            assert len(found) == len(truth.objects), (seed, frame.t)
            for o in truth.objects:
                x0, y0, x1, y1 = o.box(224, 224)
                inside = [m for m in found if m[y0:y1, x0:x1].sum() == m.sum()]
                assert len(inside) == 1
                assert nearest_colour(frame.image[inside[0]].mean(0)) == o.colour
            checked += 1
    assert checked >= 10


def test_textures_shades_noise_and_codecs_keep_colours_nameable() -> None:
    for name, rgb in COLOURS.items():
        assert nearest_colour(second_tone(np.asarray(rgb, float))) == name
        worst = np.asarray(rgb, float) + SHADE * np.sign(np.asarray(rgb, float) - 128) * -1
        assert nearest_colour(worst) == name
    assert set(SECOND_TONE) == set(COLOURS)
    checked = 0
    for seed in range(10):
        style = Style.random(seed)
        world = World(seed, style=style)
        for frame in world.frames(0.5, 0.0, 8):
            assert frame.image is not None
            for o in frame.truth.objects:
                if o.occlusion > 0 or o.size == "small":
                    continue
                x, y = o.centre(style.width, style.height)
                r = max(2, sprite_diameter(o.radius, style.width, style.height) // 6)
                patch = frame.image[y - r : y + r, x - r : x + r].reshape(-1, 3)
                assert nearest_colour(np.median(patch, axis=0)) == o.colour, (seed, style, o)
                checked += 1
    assert checked > 30


def test_styles_vary_widely() -> None:
    styles = [Style.random(s) for s in range(60)]
    assert len({(s.width, s.height) for s in styles}) > 30
    assert {s.codec for s in styles} == {"none", "jpeg", "h264"}
    assert {s.font for s in styles} == {"bitmap", "sans"}
    assert {b for s in styles for b in s.backgrounds} == {"solid", "gradient", "noise", "stripes", "checks"}
    assert any(s.width < s.height for s in styles) and any(s.width > s.height for s in styles)
    assert len({s.video_fps for s in styles}) >= 4


def test_small_objects_fit_one_patch_at_224_and_span_two_at_448() -> None:
    lo, hi = SIZES["small"]
    assert sprite_diameter(hi, 224, 224) <= 16 and sprite_diameter(lo, 448, 448) >= 22
    assert sprite_diameter(SIZES["medium"][0], 224, 224) >= 28
    world = World(0, config=WorldConfig(small_rate=1.0, objects=(3, 3)))
    sizes = {o.size for f in world.frames(1.0, 0.0, 8, render=False) for o in f.truth.objects}
    assert sizes == {"small"}


def test_events_happen_only_at_clip_boundaries_and_match_the_truth() -> None:
    world = World(3, config=WorldConfig(event_rate=0.9))
    events = world.events(0.0, 200.0)
    assert len(events) > 15
    assert {e.kind for e in events} == {"appear", "disappear", "recolour"}
    for e in events:
        assert e.t % world.clip_seconds == 0
        before, after = world.truth(e.t - 0.5).object(e.object_id), world.truth(e.t + 0.5).object(e.object_id)
        if e.kind == "appear":
            assert before is None and after is not None and after.colour == e.colour
        elif e.kind == "disappear":
            assert before is not None and after is None and before.colour == e.colour
        else:
            assert before is not None and after is not None
            assert (before.colour, after.colour) == (e.colour, e.new_colour)
    assert len({e.t for e in events}) == len(events)  # at most one per boundary within a scene


def test_directional_motion_stays_in_frame_for_its_clip() -> None:
    world = World(9, config=WorldConfig(motion_weights=(0.0, 1.0, 0.0)))
    moving = 0
    for frame in world.frames(1.0, 0.0, 200, render=False):
        for o in frame.truth.objects:
            assert o.rx <= o.x <= 1 - o.rx and o.ry <= o.y <= 1 - o.ry
            moving += o.motion in ("left", "right", "up", "down")
    assert moving > 100


def _needle_frames(world: World, frames: int) -> list[int]:
    return [f.index for f in world.frames(1.0, 0.0, frames, render=False) if f.truth.needles]


@pytest.mark.parametrize(("hops", "kind"), [(1, "card"), (1, "object"), (2, "card"), (3, "card")])
def test_needles_appear_exactly_in_their_clips(hops: int, kind: str) -> None:
    item = make_niah(4, frames=160, depth=0.5, hops=hops, kind=kind)
    shown = _needle_frames(item.world, 160)
    clips = sorted({k // CLIP_FRAMES for k in shown})
    assert len(shown) == CLIP_FRAMES * len(clips)
    assert shown == [c * CLIP_FRAMES + i for c in clips for i in range(CLIP_FRAMES)]
    assert set(item.needle_clips) <= set(clips)
    assert item.needle_clips[0] == round(0.5 * (160 // CLIP_FRAMES - 1))
    # and the pixels: a card's border colour is drawn at its border, the paper inside
    style = item.world.style
    for frame in item.world.frames(1.0, 0.0, 160):
        for nt in frame.truth.needles:
            assert frame.image is not None
            x0, y0, x1, y1 = nt.pixel_box(style.width, style.height)
            if nt.needle.kind == "card":
                assert nt.needle.border is not None
                edge = frame.image[y0 + 2, (x0 + x1) // 2]
                assert tuple(edge) == COLOURS[nt.needle.border]
            else:
                assert nt.needle.colour is not None
                centre = frame.image[(y0 + y1) // 2, (x0 + x1) // 2]
                assert nearest_colour(centre) == nt.needle.colour


def test_a_card_glyph_is_ink_on_paper() -> None:
    for font in ("bitmap", "sans"):
        style = Style(width=224, height=224, font=font)
        needle = Needle(0.0, 4.0, "card", size=0.7, border="blue", glyph="7")
        world = World(0, style=style, needles=[needle], config=WorldConfig(objects=(0, 0)))
        image = world.render(1.0)
        x0, y0, x1, y1 = world.truth(1.0).needles[0].pixel_box(224, 224)
        inner = image[y0 + 20 : y1 - 20, x0 + 20 : x1 - 20]
        ink = (inner.sum(-1) < 150).mean()
        assert 0.08 < ink < 0.6, (font, ink)


def test_a_3000_frame_stream_is_generated_lazily() -> None:
    world = World(1)
    stream = world.frames(1.0)  # endless
    truths = [next(stream).truth for _ in range(3000)]
    assert len({t.scene for t in truths}) > 20
    assert len(world._scenes._d) <= 8  # only a few scenes are held
    again = World(1)
    assert again.truth(truths[2500].t) == truths[2500]
    # rendering a frame deep in the stream does not need the ones before it
    assert again.render(truths[2999].t).shape == (224, 224, 3)


def test_codec_paths_change_pixels_a_little_and_deterministically() -> None:
    base = Style(width=224, height=160, backgrounds=("gradient",), background=None, textures=True)
    clean = images(World(2, style=base), 8)
    for codec, quality in (("jpeg", 40), ("h264", 28)):
        style = Style(**{**base.__dict__, "codec": codec, "quality": quality, "noise": 3.0})
        a, b = images(World(2, style=style), 8), images(World(2, style=style), 8)
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
        diff = np.mean([np.abs(x.astype(int) - c.astype(int)).mean() for x, c in zip(a, clean, strict=True)])
        assert 0.5 < diff < 8, (codec, diff)


def test_write_mp4_round_trips(tmp_path: Path) -> None:
    world = World(3, style=Style(width=192, height=128))
    path = tmp_path / "world.mp4"
    assert write_mp4(world, path, seconds=3, fps=8) == 24
    with av.open(str(path)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        rate = c.streams.video[0].average_rate
    assert len(decoded) == 24 and rate == 8
    for k in (0, 13):
        err = np.abs(decoded[k].astype(int) - world.render(k / 8).astype(int)).mean()
        assert err < 4, (k, err)


def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(ScriptError, match="overlap"):
        World(
            0,
            needles=[
                Needle(0, 4, "card", border="red", glyph="1"),
                Needle(2, 6, "card", border="blue", glyph="2"),
            ],
        )
    with pytest.raises(ScriptError, match="border"):
        Needle(0, 4, "card", border="white", glyph="1")
    with pytest.raises(ScriptError, match="exactly one"):
        Needle(0, 4, "card", border="red", glyph="1", pointer="blue")
    with pytest.raises(ScriptError, match="even"):
        Style(width=225, height=224)
    with pytest.raises(ScriptError, match="codec"):
        Style(codec="av1")
    with pytest.raises(ScriptError, match="depth"):
        make_niah(0, frames=64, depth=1.5)
    with pytest.raises(ScriptError, match="scene_clips"):
        WorldConfig(scene_clips=(5, 2))
    with pytest.raises(ValueError, match="fps"):
        next(World(0).frames(fps=0))
    with pytest.raises(ValueError, match="time"):
        World(0).truth(-1.0)
    with pytest.raises(ValueError, match="seconds"):
        write_mp4(World(0), "/nonexistent/x.mp4", seconds=0)


def test_object_truth_box_is_where_the_sprite_is_drawn() -> None:
    o = ObjectTruth(
        1, "square", "red", "medium", 0.1, 0.5, 0.5, 0.075, 0.1, 0, 0, "static", "solid", 0.0, (220, 40, 40)
    )
    x0, y0, x1, y1 = o.box(320, 240)
    assert (x1 - x0, y1 - y0) == (48, 48) and (x0 + x1) // 2 == 160 and (y0 + y1) // 2 == 120
