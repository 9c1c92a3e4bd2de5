"""How many images the `mini-224` tower needs to learn shape from scratch, against a small CNN.

The probe behind docs/training.md, "The tower against a CNN on one shape task": single 224 frames
with one to three large shapes (the world's five haystack shapes, 36-72 px across) on a flat
background, a linear head on every patch token trained to name the shape that covers the patch (at
least a quarter of it). Reports, on 128 fixed held-out frames, the accuracy over object patches and
per object (the head's logits averaged over the object's patches). Colours:

- `random`: objects of any RGB colour on a random mid-tone background (the world's colour problem,
  without its textures, noise or motion);
- `palette`: the world's eight object colours on its grey background levels;
- `ink`: black shapes on white.

`--model cnn` swaps the tower for four 3x3 conv + pool stages of the same output width and grid.
Prints one JSON object: the settings and a row per evaluation.

    python bench/tower_probe.py --model tower --colours random --steps 600
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor, nn

from flashlive.model.config import PRESETS
from flashlive.model.train.parts import init_weights, pixels
from flashlive.model.vision import VisionTower
from flashlive.model.world.palette import BACKGROUND_LEVELS, COLOUR_NAMES, COLOURS, SHAPES

SIZE, GRID, PATCH = 224, 14, 16
HELD_OUT = 128
COVER = 0.25  # a patch is labelled with the object covering at least this share of it
# (corners, angle of the first corner) of the regular polygons
POLYGONS = {"square": (4, math.pi / 4), "triangle": (3, -math.pi / 2), "diamond": (4, 0.0)}


def _outline(shape: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    if shape == "cross":
        arm = r / 3
        pts = [(-arm, -r), (arm, -r), (arm, -arm), (r, -arm), (r, arm), (arm, arm), (arm, r), (-arm, r)]
        pts += [(-arm, arm), (-r, arm), (-r, -arm), (-arm, -arm)]
    else:
        corners, start = POLYGONS[shape]
        step = 2 * math.pi / corners
        pts = [(r * math.cos(start + k * step), r * math.sin(start + k * step)) for k in range(corners)]
    c, s = math.cos(turn), math.sin(turn)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _background(rng: np.random.Generator, scheme: str) -> tuple[int, ...]:
    if scheme == "ink":
        return (255, 255, 255)
    if scheme == "palette":
        return (int(rng.integers(*BACKGROUND_LEVELS)),) * 3
    return tuple(int(v) for v in rng.integers(90, 170, 3))


def _object_colour(rng: np.random.Generator, scheme: str) -> tuple[int, ...]:
    if scheme == "ink":
        return (0, 0, 0)
    if scheme == "palette":
        return COLOURS[COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]]
    return tuple(int(v) for v in rng.integers(0, 256, 3))


def draw(rng: np.random.Generator, scheme: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One frame: uint8 [S, S, 3], the shape under each patch [G*G] and its object index [G*G] (-1: none)."""
    image = Image.new("RGB", (SIZE, SIZE), _background(rng, scheme))
    owner = Image.new("L", (SIZE, SIZE), 0)
    shapes = []
    for i in range(int(rng.integers(1, 4))):
        shape = int(rng.integers(len(SHAPES)))
        r = float(rng.uniform(18, 36))
        cx, cy = rng.uniform(r, SIZE - r, 2)
        colour = _object_colour(rng, scheme)
        turn = float(rng.uniform(-0.3, 0.3))
        for canvas, fill in ((ImageDraw.Draw(image), colour), (ImageDraw.Draw(owner), i + 1)):
            if SHAPES[shape] == "circle":
                canvas.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
            else:
                canvas.polygon(_outline(SHAPES[shape], cx, cy, r, turn), fill=fill)
        shapes.append(shape)
    owners = (
        np.asarray(owner).reshape(GRID, PATCH, GRID, PATCH).transpose(0, 2, 1, 3).reshape(GRID * GRID, -1)
    )
    label = np.full(GRID * GRID, -1)
    index = np.full(GRID * GRID, -1)
    for i, shape in enumerate(shapes):  # later objects are drawn over earlier ones, and win here too
        covered = (owners == i + 1).mean(1) >= COVER
        label[covered], index[covered] = shape, i
    return np.asarray(image), label, index


def frames(rng: np.random.Generator, n: int, scheme: str) -> tuple[Tensor, Tensor, np.ndarray]:
    images, labels, index = zip(*(draw(rng, scheme) for _ in range(n)), strict=True)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(labels)), np.stack(index)


class Cnn(nn.Module):
    """Four 3x3 conv + 2x pool stages and a last conv: [N, 3, 1, 224, 224] -> [N, 196, width]."""

    def __init__(self, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [3, 32, 64, 128, width]
        for a, b in itertools.pairwise(channels):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.GELU(), nn.MaxPool2d(2)]
        layers.append(nn.Conv2d(width, width, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x[:, :, 0]).flatten(2).transpose(1, 2)


def build(kind: str, seed: int) -> tuple[nn.Module, int]:
    cfg = PRESETS["mini-224"].vision
    torch.manual_seed(seed)
    if kind == "cnn":
        return Cnn(cfg.width), cfg.width
    tower = VisionTower(cfg)
    init_weights(tower, seed, layers=cfg.layers)  # what stage 0 starts from
    return tower, cfg.width


@torch.no_grad()
def evaluate(
    model: nn.Module, head: nn.Module, held_out: tuple[Tensor, Tensor, np.ndarray], device: torch.device
) -> dict[str, float]:
    images, labels, index = held_out
    chunks = [images[i : i + 32] for i in range(0, len(images), 32)]
    logits = torch.cat([head(model(pixels(chunk[:, None].to(device)))).cpu() for chunk in chunks])
    covered = labels >= 0
    patch = float((logits.argmax(-1)[covered] == labels[covered]).float().mean())
    right = total = 0
    for n in range(len(images)):
        for i in np.unique(index[n][index[n] >= 0]):
            mine = torch.from_numpy(index[n] == i)
            right += int(logits[n][mine].mean(0).argmax() == labels[n][mine][0])
            total += 1
    return {"patch": round(patch, 4), "object": round(right / total, 4)}


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    device = torch.device(args.device)
    model, width = build(args.model, args.seed)
    head = nn.Linear(width, len(SHAPES))
    model.to(device)
    head.to(device)
    params = [*model.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    held_out = frames(np.random.default_rng(10_000 + args.seed), HELD_OUT, args.colours)
    rng = np.random.default_rng(args.seed)
    rows, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, step / args.warmup)
        images, labels, _ = frames(rng, args.batch, args.colours)
        logits = head(model(pixels(images[:, None].to(device))))
        loss = F.cross_entropy(logits.flatten(0, 1), labels.to(device).flatten(), ignore_index=-1)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if step % args.every == 0 or step == args.steps:
            row = {"step": step, "images": step * args.batch, "loss": round(loss.item(), 4)}
            row |= evaluate(model, head, held_out, device)
            row["elapsed_s"] = round(time.perf_counter() - start, 1)
            rows.append(row)
            if args.progress:
                print(json.dumps(row), flush=True)
    return rows


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def rate(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=("tower", "cnn"), default="tower")
    parser.add_argument("--colours", choices=("random", "palette", "ink"), default="random")
    parser.add_argument("--steps", type=positive, default=600)
    parser.add_argument("--batch", type=positive, default=16)
    parser.add_argument("--lr", type=rate, default=1e-3)
    parser.add_argument("--warmup", type=positive, default=30)
    parser.add_argument("--every", type=positive, default=100)
    parser.add_argument("--seed", type=count, default=1)
    parser.add_argument("--threads", type=positive, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="fp32 on either")
    parser.add_argument("--progress", action="store_true", help="also print each evaluation as it is made")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = run(args)
    settings = {k: v for k, v in vars(args).items() if k != "progress"}
    meta = {"torch": torch.__version__, "machine": platform.machine(), "cpu_count": torch.get_num_threads()}
    print(json.dumps({"bench": "tower_probe", "settings": settings, "meta": meta, "rows": rows}))


if __name__ == "__main__":
    main()
