"""From a trained model to masks on new scans: ``python -m helpers predict`` and its one notebook call.

Each volume goes through the preprocessing stored in the checkpoint (per-volume intensity level, resize,
normalisation), the model (with flip TTA if asked), and the same clean-up as evaluation (threshold, small 2-D
blobs, small 3-D regions). Masks come out at each slice's own resolution.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .config import Config
from .data import DataError, rescale, stack_neighbours, volume_level
from .inference import binarize, clean_volume, fill_holes, model_logits
from .metrics import dice
from .precision import place_model
from .scans import find_scans, read_mask_any, read_slice, to_uint8
from .transforms import eval_transform
from .views import overlay, save_gif, save_png, volume_frames, volume_grid


@dataclass
class Prediction:
    """What :func:`predict` wrote: per-patient ``summary``, per-slice ``slices``, the ``skipped`` files with the
    reason, and timings (``seconds`` end to end, ``model_seconds`` in preprocessing and the model)."""
    out_dir: Path
    summary: pd.DataFrame
    slices: pd.DataFrame
    skipped: pd.DataFrame
    seconds: float
    model_seconds: float

    @property
    def slices_per_second(self) -> float:
        return len(self.slices) / self.seconds if self.seconds else float("nan")


@torch.no_grad()
def volume_probabilities(model: nn.Module, images: list[np.ndarray], cfg: Config) -> list[np.ndarray]:
    """Tumour probability (H, W) per slice of one volume (uint8 RGB slices, in order), at each slice's size."""
    if cfg.intensity != "dataset":
        level = volume_level(images, cfg.intensity)
        images = [rescale(im, level) for im in images]
    images = stack_neighbours(images, cfg.context)
    transform = eval_transform(cfg)
    device = cfg.torch_device()
    place_model(model, cfg).eval()
    out = []
    for start in range(0, len(images), cfg.batch_size):
        batch = images[start:start + cfg.batch_size]
        x = torch.from_numpy(np.stack([transform(image=im)["image"] for im in batch]).transpose(0, 3, 1, 2))
        logits = model_logits(model, x.float().to(device), cfg, (cfg.image_size, cfg.image_size))
        for im, lg in zip(batch, logits):
            if lg.shape[-2:] != im.shape[:2]:
                lg = F.interpolate(lg[None], size=im.shape[:2], mode="bilinear", align_corners=False)[0]
            out.append(torch.sigmoid(lg[0]).float().cpu().numpy())
    return out


def volume_masks(probs: list[np.ndarray], cfg: Config) -> list[np.ndarray]:
    """Final masks for one volume: :func:`helpers.inference.clean_volume` when its slices share one size, else
    the per-slice part of it (threshold, small 2-D blobs, holes)."""
    if probs and _same_shapes(probs):
        return list(clean_volume(np.stack(probs), cfg))
    masks = [binarize(p, cfg.threshold, cfg.min_component) for p in probs]
    return fill_holes(masks) if cfg.fill_holes else masks


def _read_volume(rows: pd.DataFrame, strict: bool) -> tuple[list[int], list[np.ndarray], list[tuple[str, str]]]:
    """Readable slices of one patient (row positions and uint8 images) and the (file, reason) of the others."""
    keep, images, skipped = [], [], []
    for k, path in enumerate(rows["image_path"]):
        try:
            images.append(read_slice(path))
            keep.append(k)
        except DataError as error:
            if strict:
                raise
            skipped.append((path, str(error).removeprefix(f"{path}: ")))
    return keep, to_uint8(images), skipped


def predict(model: nn.Module, cfg: Config, input_path: str | Path, out_dir: str | Path, strict: bool = False,
            volume_view: bool = True, progress: bool = True) -> Prediction:
    """Predict every slice under ``input_path`` (a slice, a patient folder, or a tree of them) and write to
    ``out_dir``: ``<slice>_pred.png`` (0/255), ``<slice>_overlay.png`` for slices with predicted or true tumour,
    ``<patient>_volume.png`` and ``.gif`` (with ``volume_view``), ``summary.csv`` (one row per patient),
    ``slices.csv`` and ``skipped.csv``. Unreadable or unconvertible slices are skipped with a warning and
    listed, or stop the run with ``strict``.
    """
    start = time.perf_counter()
    scans = find_scans(input_path)
    out_dir = Path(out_dir)
    model_seconds, summary, slices, skipped = 0.0, [], [], []
    patients = list(scans.table.groupby("patient", sort=False))
    for patient, rows in tqdm(patients, desc="predicting", unit="patient", disable=not progress, leave=False):
        rows = rows.reset_index(drop=True)
        keep, images, lost = _read_volume(rows, strict)
        skipped += [{"patient": patient, "file": f, "reason": r} for f, r in lost]
        tick = time.perf_counter()
        masks = volume_masks(volume_probabilities(model, images, cfg), cfg) if images else []
        model_seconds += time.perf_counter() - tick
        truths = [read_mask_any(rows["mask_path"][k]) if rows["mask_path"][k] else None for k in keep]
        truths = [t if t is not None and t.shape == m.shape else None for t, m in zip(truths, masks)]
        folder = out_dir / rows["out_dir"].iloc[0]
        slices += _write_slices(folder, rows.iloc[keep], images, masks, truths)
        if volume_view and images and _same_shapes(masks):
            frames = volume_frames(images, np.stack(masks), truths, [int(n) for n in rows["slice"].iloc[keep]])
            shown = np.array([m.any() or (t is not None and t.any()) for m, t in zip(masks, truths)])
            save_png(folder / f"{patient}_volume.png", volume_grid(frames, shown))
            save_gif(folder / f"{patient}_volume.gif", frames)
        summary.append(_patient_row(patient, rows["slice"].iloc[keep].tolist(), masks, truths, lost))
    if not slices:
        raise DataError(f"{input_path}: none of its slices could be used: "
                        + "; ".join(f"{s['file']}: {s['reason']}" for s in skipped[:3]))
    result = Prediction(out_dir, pd.DataFrame(summary), pd.DataFrame(slices, columns=SLICE_COLUMNS),
                        pd.DataFrame(skipped, columns=["patient", "file", "reason"]),
                        time.perf_counter() - start, model_seconds)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.summary.to_csv(out_dir / "summary.csv", index=False)
    result.slices.to_csv(out_dir / "slices.csv", index=False)
    result.skipped.to_csv(out_dir / "skipped.csv", index=False)
    if skipped:
        listed = "; ".join(f"{Path(s['file']).name} ({s['reason']})" for s in skipped[:3])
        warnings.warn(f"skipped {len(skipped)} slices that could not be used: {listed}"
                      f"{'; ...' if len(skipped) > 3 else ''} (all listed in {out_dir / 'skipped.csv'})",
                      stacklevel=2)
    return result


SLICE_COLUMNS = ["patient", "slice", "image", "prediction", "overlay", "tumour_pixels", "true_pixels"]


def _write_slices(folder: Path, rows: pd.DataFrame, images: list[np.ndarray], masks: list[np.ndarray],
                  truths: list[np.ndarray | None]) -> list[dict]:
    """Write each slice's ``_pred.png`` (and ``_overlay.png`` where there is tumour); its row of slices.csv."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for (_, row), image, mask, truth in zip(rows.iterrows(), images, masks, truths):
        stem = Path(row["image_path"]).stem
        pred_path = save_png(folder / f"{stem}_pred.png", mask.astype(np.uint8) * 255)
        overlay_path = ""
        if mask.any() or (truth is not None and truth.any()):
            overlay_path = str(save_png(folder / f"{stem}_overlay.png", overlay(image, mask, truth)))
        out.append({"patient": row["patient"], "slice": int(row["slice"]), "image": row["image_path"],
                    "prediction": str(pred_path), "overlay": overlay_path, "tumour_pixels": int(mask.sum()),
                    "true_pixels": int(truth.sum()) if truth is not None else None})
    return out


def _patient_row(patient: str, numbers: list[int], masks: list[np.ndarray], truths: list[np.ndarray | None],
                 lost: list[tuple[str, str]]) -> dict:
    """One patient's row of summary.csv; Dice only when every used slice has a mask."""
    areas = [int(m.sum()) for m in masks]
    labelled = bool(masks) and all(t is not None for t in truths) and _same_shapes(masks)
    return {"patient": patient, "slices": len(masks), "slices_with_tumour": sum(a > 0 for a in areas),
            "tumour_pixels": sum(areas), "tumour_pixels_per_slice": ";".join(map(str, areas)),
            "largest_slice": int(numbers[int(np.argmax(areas))]) if any(areas) else None,
            "true_tumour_pixels": sum(int(t.sum()) for t in truths) if labelled else None,
            "dice": dice(np.stack(masks), np.stack(truths)) if labelled else None,
            "skipped": len(lost), "skipped_files": ";".join(Path(f).name for f, _ in lost)}


def _same_shapes(masks: list[np.ndarray]) -> bool:
    return len({m.shape for m in masks}) == 1
