"""Running a trained model over slice tables: probabilities, validation loss and scores.

Scores are computed at each slice's own resolution (256x256 in the dataset): logits are upsampled from the
model's input size before thresholding, so a model trained at 128px is judged on the same pixels as one at 256.
"""
from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .config import Config
from .data import SliceDataset, volume_scales
from .metrics import overlap_counts, patient_dice, summarize
from .transforms import eval_transform


def make_eval_loader(table: pd.DataFrame, cfg: Config) -> DataLoader:
    """Slices in table order: images preprocessed as at validation time, masks at their own resolution."""
    scales = volume_scales(table) if cfg.intensity == "volume" else None
    return DataLoader(SliceDataset(table, eval_transform(cfg), native_masks=True, scales=scales),
                      batch_size=cfg.batch_size,
                      shuffle=False,
                      num_workers=cfg.workers, pin_memory=cfg.torch_device().type == "cuda")


def _logits(model: nn.Module, images: torch.Tensor, cfg: Config, size: tuple[int, int]) -> torch.Tensor:
    """Logits at ``size``; with ``cfg.tta`` the mean with the prediction for the mirrored slice."""
    logits = model(images).float()
    if cfg.tta:
        logits = (logits + model(images.flip(-1)).float().flip(-1)) / 2
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits


def binarize(probs: np.ndarray, threshold: float, min_component: int = 0) -> np.ndarray:
    """Tumour mask (H, W) bool from probabilities: threshold, then drop blobs under ``min_component`` pixels."""
    mask = probs > threshold
    if min_component > 0 and mask.any():
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        keep = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= min_component)
        mask = np.isin(labels, keep[keep > 0])
    return mask


def _counts(probs: torch.Tensor, masks: torch.Tensor, cfg: Config, threshold: float) -> torch.Tensor:
    if cfg.min_component <= 0:
        return overlap_counts(probs, masks, threshold).cpu()
    pred = torch.from_numpy(np.stack([binarize(p, threshold, cfg.min_component) for p in probs[:, 0].cpu().numpy()]))
    return overlap_counts(pred[:, None].float(), masks.cpu(), 0.5)


@torch.no_grad()
def slice_counts(model: nn.Module, loader: DataLoader, cfg: Config, loss_fn: nn.Module | None = None,
                 thresholds: tuple[float, ...] | None = None) -> tuple[float, np.ndarray]:
    """Mean loss per slice (NaN without ``loss_fn``) and per-slice (intersection, predicted, true) counts at the
    masks' resolution, for a loader from :func:`make_eval_loader`. Counts have shape (N, 3), or (T, N, 3) for
    several ``thresholds`` at once (one forward pass for all)."""
    device = cfg.torch_device()
    model.eval()
    levels = thresholds if thresholds is not None else (cfg.threshold,)
    losses, counts, seen = [], [], 0
    for images, masks in loader:
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        logits = _logits(model, images, cfg, masks.shape[-2:])
        if loss_fn is not None:
            losses.append(loss_fn(logits, masks).item() * len(images))
        probs = torch.sigmoid(logits)
        counts.append(torch.stack([_counts(probs, masks, cfg, t) for t in levels]))
        seen += len(images)
    loss = sum(losses) / seen if losses else float("nan")
    out = torch.cat(counts, dim=1).numpy() if counts else np.zeros((len(levels), 0, 3), np.int64)
    return loss, out if thresholds is not None else out[0]


def choose_threshold(model: nn.Module, table: pd.DataFrame, cfg: Config,
                     candidates: tuple[float, ...] = tuple(np.round(np.arange(0.1, 0.91, 0.05), 2))) -> pd.Series:
    """Mean patient Dice on ``table`` for each candidate threshold (the threshold curve), best first."""
    _, counts = slice_counts(model, make_eval_loader(table, cfg), cfg, thresholds=candidates)
    patients = table["patient"].tolist()
    curve = pd.Series([patient_dice(patients, c).mean() for c in counts], index=pd.Index(candidates, name="threshold"),
                      name="mean_patient_dice")
    return curve.sort_values(ascending=False, kind="stable")


def evaluate(model: nn.Module, loader: DataLoader, patients: list[str], cfg: Config,
             loss_fn: nn.Module | None = None) -> tuple[float, pd.Series]:
    """Mean loss per slice and 3-D Dice per patient; ``patients`` names the patient of each slice in order."""
    loss, counts = slice_counts(model, loader, cfg, loss_fn)
    return loss, patient_dice(patients, counts)


@torch.no_grad()
def predict_probabilities(model: nn.Module, table: pd.DataFrame, cfg: Config) -> np.ndarray:
    """Tumour probability maps (N, H, W) at the slices' own resolution, for the slices of ``table`` in order."""
    device = cfg.torch_device()
    model.eval()
    out = [torch.sigmoid(_logits(model, images.to(device), cfg, masks.shape[-2:])).squeeze(1).cpu().numpy()
           for images, masks in make_eval_loader(table, cfg)]
    return np.concatenate(out) if out else np.zeros((0, 256, 256), np.float32)


def score_patients(model: nn.Module, table: pd.DataFrame, cfg: Config) -> pd.Series:
    """3-D Dice per patient of ``model`` on the labelled slices of ``table``."""
    _, dice = evaluate(model, make_eval_loader(table, cfg), table["patient"].tolist(), cfg)
    return dice


def report(model: nn.Module, table: pd.DataFrame, cfg: Config) -> dict:
    """Every score of :func:`helpers.metrics.summarize` for ``model`` on the labelled slices of ``table``."""
    _, counts = slice_counts(model, make_eval_loader(table, cfg), cfg)
    return summarize(table["patient"].tolist(), counts)
