"""Pictures of predictions as image arrays (no matplotlib, so ``predict`` can draw thousands quickly):
an overlay per slice, a grid of a volume's slices, and an animated GIF through the volume."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .data import FLAIR

PRED_RGB = (255, 40, 40)  # red: predicted tumour
TRUE_RGB = (60, 220, 60)  # green: ground truth, where a mask exists


def _gray(image: np.ndarray) -> np.ndarray:
    """The FLAIR channel as RGB gray: the sequence in which low-grade gliomas show best."""
    return np.repeat(image[..., FLAIR:FLAIR + 1], 3, axis=2).copy()


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None, fill: float = 0.3) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the FLAIR slice, the prediction tinted and outlined in red, the truth outlined in green."""
    out = _gray(image)
    if pred.any():
        tint = out.astype(np.float32)
        tint[pred] = (1 - fill) * tint[pred] + fill * np.asarray(PRED_RGB, np.float32)
        out = tint.astype(np.uint8)
    for mask, color in ((truth, TRUE_RGB), (pred, PRED_RGB)):
        if mask is not None and mask.any():
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, contours, -1, color, 1)
    return out


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    cv2.putText(tile, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
    return tile


def volume_frames(images: list[np.ndarray], preds: np.ndarray, truths: list[np.ndarray | None] | None = None,
                  numbers: list[int] | None = None) -> list[np.ndarray]:
    """One labelled overlay per slice of a volume, in order."""
    truths = truths or [None] * len(images)
    numbers = numbers or list(range(len(images)))
    return [_label(overlay(im, p, t), f"#{n}  {int(p.sum())} px")
            for im, p, t, n in zip(images, preds, truths, numbers)]


def volume_grid(frames: list[np.ndarray], has_tumour: np.ndarray, max_tiles: int = 24, columns: int = 6,
                tile: int = 192) -> np.ndarray:
    """A grid (RGB uint8) of the slices where tumour is predicted or true (evenly spaced slices when there is
    none), at most ``max_tiles`` of them, evenly spread through the volume."""
    picks = np.flatnonzero(has_tumour)
    if len(picks) == 0:
        picks = np.arange(len(frames))
    picks = picks[np.unique(np.linspace(0, len(picks) - 1, min(max_tiles, len(picks))).round().astype(int))]
    tiles = [cv2.resize(frames[i], (tile, tile), interpolation=cv2.INTER_AREA) for i in picks]
    rows = -(-len(tiles) // columns)
    columns = min(columns, len(tiles))
    grid = np.zeros((rows * tile, columns * tile, 3), np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, columns)
        grid[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = t
    return grid


def save_gif(path: str | Path, frames: list[np.ndarray], ms_per_frame: int = 120) -> Path:
    """An animated GIF that steps through the volume's slices and loops."""
    path = Path(path)
    pictures = [Image.fromarray(f) for f in frames]
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=ms_per_frame, loop=0)
    return path


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    """Write an RGB uint8 array as PNG; raises OSError naming the file when it cannot be written."""
    path = Path(path)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb):
        raise OSError(f"{path}: could not be written")
    return path
