"""One PNG per image: the model's input view, then each method's overlay, one row per
explained class, with the class name and probability. Drawn with PIL and a colormap
lookup table (no matplotlib figure per image: rendering stays a small share of the run)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

TITLE_HEIGHT = 18


@lru_cache(maxsize=4)
def _lut(name: str = "jet") -> np.ndarray:
    from matplotlib import colormaps

    lut: np.ndarray = (colormaps[name](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)
    return lut


def overlay_array(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` uint8 [H, W, 3] blended with the jet-coloured ``cam`` in [0, 1] [H, W]."""
    heat: np.ndarray = _lut()[np.clip(cam * 255, 0, 255).astype(np.uint8)]
    return (image * (1 - alpha) + heat * alpha).astype(np.uint8)


overlay = overlay_array  # the former name (audit.render.overlay blends tensors)


@lru_cache(maxsize=1)
def _font() -> Union[ImageFont.ImageFont, ImageFont.FreeTypeFont]:
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _titled(tile: np.ndarray, title: str) -> Image.Image:
    h, w = tile.shape[:2]
    canvas = Image.new("RGB", (w, h + TITLE_HEIGHT), "white")
    canvas.paste(Image.fromarray(tile), (0, TITLE_HEIGHT))
    text = title if len(title) * 7 <= w else title[: max(1, w // 7 - 1)] + "…"
    ImageDraw.Draw(canvas).text((2, 2), text, fill="black", font=_font())
    return canvas


def explain_png(
    image: np.ndarray,
    rows: Sequence[tuple[str, dict[str, np.ndarray]]],
    path: Path,
) -> Path:
    """``rows``: (row title, {method: map [H, W] in [0, 1]}) per explained class. The first
    column is the input view, titled with the row title; then one overlay per method."""
    tiles = []
    for title, maps in rows:
        row = [_titled(image, title)] + [_titled(overlay_array(image, cam), method) for method, cam in maps.items()]
        tiles.append(row)
    tile_w, tile_h = tiles[0][0].size
    columns = max(len(r) for r in tiles)
    sheet = Image.new("RGB", (columns * tile_w, len(tiles) * tile_h), "white")
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            sheet.paste(tile, (c * tile_w, r * tile_h))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
