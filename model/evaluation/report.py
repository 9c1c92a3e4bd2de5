"""Where results go: `<out>/<part>.json` (every tally and every answer), `<out>/<part>.png` for the NIAH
grids, and a few lines of summary for the terminal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flashlive.model.evaluation import heatmap


def write(out_dir: str | Path, result: dict[str, Any], meta: dict[str, Any]) -> list[Path]:
    """Write one part's result (and its heatmap); returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    part = result["part"]
    path = out / f"{part}.json"
    path.write_text(json.dumps({**meta, **result}, indent=1) + "\n", encoding="utf-8")
    written = [path]
    model = meta.get("model", "")
    if part == "niah":
        written.append(_grid_png(out / "niah.png", result["grid"], f"Single-hop NIAH: {model}"))
    elif part == "mhniah":
        written.append(
            _grid_png(out / "mhniah.png", result["grid"], f"Multi-hop NIAH: {model}", ylabel="Hops", rows=str)
        )
    elif part == "niah-video":
        written.append(_grid_png(out / "niah-video.png", result["single"]["grid"], f"NIAH-Video: {model}"))
    return written


def _grid_png(
    path: Path, grid: dict[str, Any], title: str, *, ylabel: str = "Depth percent", rows: Any = None
) -> Path:
    return heatmap.write(
        path,
        grid["accuracy"],
        grid["row_values"],
        grid["col_values"],
        title=title,
        ylabel=ylabel,
        row_label=rows or heatmap.depth_label,
    )


def pct(tally: dict[str, Any]) -> str:
    acc = tally.get("accuracy")
    return "n/a" if acc is None else f"{100 * acc:.1f} % of {tally['n']}"


def summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    part = result["part"]
    lines = [f"{part}: {pct(result['overall'])}" if "overall" in result else f"{part}:"]
    if part == "world":
        lines += [f"  {name}: {pct(t)}" for name, t in result["groups"].items()]
        lines += [f"  small objects: {pct(result['small_objects'])}"]
        lines += ["  " + ", ".join(f"{k} {pct(t)}" for k, t in result["kinds"].items())]
    elif part in ("niah", "mhniah"):
        lines += _grid_lines(result["grid"])
    elif part == "dropout":
        for m in result["modes"]:
            speed = (
                "" if m["speedup"] is None else f", {m['speedup']:.2f}x faster (cpu {m['speedup_cpu']:.2f}x)"
            )
            pts = (
                ""
                if m["name"] == "off" or m["points_vs_off"] is None
                else f" ({m['points_vs_off']:+.1f} pts)"
            )
            lines.append(f"  {m['name']}: {pct(m)}{pts}; prefill {m['prefill_s']:.2f} s{speed}")
            for name, t in m["by_set"].items():
                if t["speedup"] is not None:
                    lines.append(f"    {name}: {pct(t)}; prefill {t['prefill_s']:.2f} s, {t['speedup']:.2f}x")
    elif part == "niah-video":
        lines.append(f"  single-hop: {pct(result['single']['overall'])}")
        lines += _grid_lines(result["single"]["grid"])
        if "multi" in result:
            lines.append(f"  multi-hop: {pct(result['multi']['overall'])}")
    return "\n".join(lines)


def _grid_lines(grid: dict[str, Any]) -> list[str]:
    head = f"  {grid['rows']:>8} \\ {grid['cols']}: " + " ".join(f"{c:>6}" for c in grid["col_values"])
    out = [head]
    for r, row in zip(grid["row_values"], grid["accuracy"], strict=True):
        cells = " ".join("     -" if a is None else f"{100 * a:6.1f}" for a in row)
        out.append(f"  {r!s:>8}{'':>{len(grid['cols']) + 5}}{cells}")
    return out
