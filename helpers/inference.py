"""Running a trained model over slice tables: probabilities, validation loss and scores.

Scores are computed at each slice's own resolution (256x256 in the dataset): logits are upsampled from the
model's input size before thresholding, so a model trained at 128px is judged on the same pixels as one at 256.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .config import Config
from .data import SliceDataset
from .metrics import overlap_counts, patient_dice, summarize
from .transforms import eval_transform


def make_eval_loader(table: pd.DataFrame, cfg: Config) -> DataLoader:
    """Slices in table order: images preprocessed as at validation time, masks at their own resolution."""
    return DataLoader(SliceDataset(table, eval_transform(cfg), native_masks=True), batch_size=cfg.batch_size,
                      shuffle=False,
                      num_workers=cfg.workers, pin_memory=cfg.torch_device().type == "cuda")


@torch.no_grad()
def slice_counts(model: nn.Module, loader: DataLoader, cfg: Config,
                 loss_fn: nn.Module | None = None) -> tuple[float, np.ndarray]:
    """Mean loss per slice (NaN without ``loss_fn``) and per-slice (intersection, predicted, true) counts
    at the masks' resolution, for a loader from :func:`make_eval_loader`."""
    device = cfg.torch_device()
    model.eval()
    losses, counts, seen = [], [], 0
    for images, masks in loader:
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        logits = model(images).float()
        if logits.shape[-2:] != masks.shape[-2:]:
            logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
        if loss_fn is not None:
            losses.append(loss_fn(logits, masks).item() * len(images))
        counts.append(overlap_counts(torch.sigmoid(logits), masks, cfg.threshold).cpu())
        seen += len(images)
    loss = sum(losses) / seen if losses else float("nan")
    return loss, torch.cat(counts).numpy() if counts else np.zeros((0, 3), np.int64)


def evaluate(model: nn.Module, loader: DataLoader, patients: list[str], cfg: Config,
             loss_fn: nn.Module | None = None) -> tuple[float, pd.Series]:
    """Mean loss per slice and 3-D Dice per patient; ``patients`` names the patient of each slice in order."""
    loss, counts = slice_counts(model, loader, cfg, loss_fn)
    return loss, patient_dice(patients, counts)


@torch.no_grad()
def predict_probabilities(model: nn.Module, table: pd.DataFrame, cfg: Config) -> np.ndarray:
    """Tumour probability maps (N, H, W) at the model's input size, for the slices of ``table`` in order."""
    device = cfg.torch_device()
    model.eval()
    out = [torch.sigmoid(model(images.to(device))).squeeze(1).cpu().numpy()
           for images, _ in make_eval_loader(table, cfg)]
    return np.concatenate(out) if out else np.zeros((0, cfg.image_size, cfg.image_size), np.float32)


def score_patients(model: nn.Module, table: pd.DataFrame, cfg: Config) -> pd.Series:
    """3-D Dice per patient of ``model`` on the labelled slices of ``table``."""
    _, dice = evaluate(model, make_eval_loader(table, cfg), table["patient"].tolist(), cfg)
    return dice


def report(model: nn.Module, table: pd.DataFrame, cfg: Config) -> dict:
    """Every score of :func:`helpers.metrics.summarize` for ``model`` on the labelled slices of ``table``."""
    _, counts = slice_counts(model, make_eval_loader(table, cfg), cfg)
    return summarize(table["patient"].tolist(), counts)
