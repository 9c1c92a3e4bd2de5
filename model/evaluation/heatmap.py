"""The NIAH heatmap as a PNG (Pillow): haystack length across, needle depth (or hops) down, each cell
coloured by its accuracy on the paper's red-amber-green scale and labelled with it in percent."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

# the paper's colour map (single_eval_vision_niah.py): 0 -> red, 0.5 -> amber, 1 -> green
STOPS = ((0.0, (0xF0, 0x49, 0x6E)), (0.5, (0xEB, 0xB8, 0x39)), (1.0, (0x9A, 0xD5, 0xB3)))
EMPTY = (0xDD, 0xDD, 0xDD)  # a cell without items
CELL_W, CELL_H = 68, 40
LEFT, TOP, RIGHT, BOTTOM = 110, 44, 90, 64
BAR_W = 18
FONT_SIZE = 14


def colour(accuracy: float) -> tuple[int, int, int]:
    """The map's colour at `accuracy` in [0, 1] (linear between the stops)."""
    a = min(1.0, max(0.0, accuracy))
    for (x0, c0), (x1, c1) in itertools.pairwise(STOPS):
        if a <= x1:
            f = (a - x0) / (x1 - x0)
            r, g, b = (round(u + (v - u) * f) for u, v in zip(c0, c1, strict=True))
            return (r, g, b)
    return STOPS[-1][1]


@dataclass(frozen=True)
class Layout:
    rows: int
    cols: int

    @property
    def size(self) -> tuple[int, int]:
        return LEFT + self.cols * CELL_W + RIGHT, TOP + self.rows * CELL_H + BOTTOM

    def cell_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        x0, y0 = LEFT + col * CELL_W, TOP + row * CELL_H
        return x0, y0, x0 + CELL_W - 2, y0 + CELL_H - 2  # a 2-px white line between cells


def frames_label(frames: Any) -> str:
    n = int(frames)
    return f"{n / 1000:g}K" if n >= 1000 else str(n)


def depth_label(depth: Any) -> str:
    return f"{round(float(depth) * 100)}%"


def write(
    path: str | Path,
    accuracy: Sequence[Sequence[float | None]],
    rows: Sequence[Any],
    cols: Sequence[Any],
    *,
    title: str,
    xlabel: str = "Num. of frames",
    ylabel: str = "Depth percent",
    row_label: Callable[[Any], str] = depth_label,
    col_label: Callable[[Any], str] = frames_label,
) -> Path:
    """Draw `accuracy[r][c]` (None: no items) for row values `rows` and column values `cols`."""
    layout = Layout(len(rows), len(cols))
    font = ImageFont.load_default(size=FONT_SIZE)
    title_w = round(font.getlength(title)) + 2 * FONT_SIZE
    image = Image.new("RGB", (max(layout.size[0], title_w), layout.size[1]), "white")
    draw = ImageDraw.Draw(image)
    for r, row in enumerate(accuracy):
        for c, value in enumerate(row):
            box = layout.cell_box(r, c)
            draw.rectangle(box, fill=EMPTY if value is None else colour(value))
            text = "–" if value is None else f"{100 * value:.0f}"
            draw.text(
                ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), text, fill="black", font=font, anchor="mm"
            )
    for r, v in enumerate(rows):
        y = TOP + r * CELL_H + CELL_H / 2
        draw.text((LEFT - 8, y), row_label(v), fill="black", font=font, anchor="rm")
    for c, v in enumerate(cols):
        x = LEFT + c * CELL_W + CELL_W / 2
        draw.text((x, TOP + len(rows) * CELL_H + 6), col_label(v), fill="black", font=font, anchor="mt")
    width, height = image.size
    draw.text((LEFT + len(cols) * CELL_W / 2, height - 8), xlabel, fill="black", font=font, anchor="mb")
    draw.text((width / 2, 12), title, fill="black", font=font, anchor="mt")
    _vertical(image, ylabel, font, (8, TOP + len(rows) * CELL_H / 2))
    _colour_bar(draw, font, LEFT + len(cols) * CELL_W + 16, TOP, max(len(rows) * CELL_H, 60))
    path = Path(path)
    image.save(path, format="PNG")
    return path


def _vertical(image: Image.Image, text: str, font: Any, left_middle: tuple[float, float]) -> None:
    probe = ImageDraw.Draw(image).textbbox((0, 0), text, font=font)
    w, h = round(probe[2] - probe[0]) + 4, round(probe[3] - probe[1]) + 4
    label = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(label).text((2, 2 - probe[1]), text, fill="black", font=font)
    label = label.rotate(90, expand=True)
    image.paste(label, (round(left_middle[0]), round(left_middle[1] - label.height / 2)))


def _colour_bar(draw: ImageDraw.ImageDraw, font: Any, x: int, y: int, height: int) -> None:
    for i in range(height):
        draw.line([(x, y + i), (x + BAR_W, y + i)], fill=colour(1 - i / (height - 1)))
    for value in (1.0, 0.5, 0.0):
        ty = y + (1 - value) * (height - 1)
        draw.text((x + BAR_W + 4, ty), f"{value:g}", fill="black", font=font, anchor="lm")
