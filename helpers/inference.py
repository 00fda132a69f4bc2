"""Running a trained model over slice tables: probabilities, validation loss and scores.

Scores are computed at each slice's own resolution (256x256 in the dataset): logits are upsampled from the
model's input size before thresholding, so a model trained at 128px is judged on the same pixels as one at 256.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterator

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from torch.utils.data import DataLoader, Sampler

from .config import Config
from .data import SliceCache, SliceDataset, scales_for
from .metrics import overlap_counts, patient_dice, summarize
from .model import mean_probability_logits
from .precision import autocast, place_model, to_layout
from .transforms import eval_transform


class PatientBatches(Sampler[list[int]]):
    """Batches of consecutive slice indices that never mix two patients, so predictions stack into volumes."""

    def __init__(self, patients: list[str], batch_size: int) -> None:
        self.batches: list[list[int]] = []
        self.owners: list[str] = []
        start = 0
        for patient, run in itertools.groupby(patients):
            n = len(list(run))
            if patient in self.owners:
                raise ValueError(f"the slices of patient {patient} are not consecutive in the table; sort it by "
                                 "patient and slice (load_dataset does)")
            for i in range(start, start + n, batch_size):
                self.batches.append(list(range(i, min(i + batch_size, start + n))))
                self.owners.append(patient)
            start += n

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def make_eval_loader(table: pd.DataFrame, cfg: Config, scales: dict[str, np.ndarray] | None = None,
                     cache: SliceCache | None = None) -> DataLoader:
    """Slices in table order, batched per patient: images preprocessed as at validation time, masks at their own
    resolution. Unless ``cfg.intensity`` is "dataset", the per-volume ``scales`` (from
    :func:`helpers.data.volume_scales`) are measured here when not given. ``cache`` serves slices from RAM."""
    scales = scales_for(cfg.intensity, table, scales, cache)
    return DataLoader(SliceDataset(table, eval_transform(cfg), native_masks=True, scales=scales, cache=cache,
                                   context=cfg.context),
                      batch_sampler=PatientBatches(table["patient"].tolist(), cfg.batch_size),
                      num_workers=cfg.workers, pin_memory=cfg.torch_device().type == "cuda")


def model_logits(model: nn.Module, images: torch.Tensor, cfg: Config, size: tuple[int, int]) -> torch.Tensor:
    """Logits at ``size``; with ``cfg.tta`` those of the mean probability of the slice and its mirror image.

    Probabilities, not logits, are averaged: where one view is sure (logit 8) and the other is not (-4), the mean
    logit still says tumour (2), the mean probability is on the fence; on the CV folds the logit mean gained
    nothing (-0.001), the probability mean +0.008 (README, "Accuracy")."""
    images = to_layout(images, cfg)
    with autocast(cfg):
        logits = model(images).float()
        if cfg.tta:
            mirrored = model(images.flip(-1)).float().flip(-1)
            logits = mean_probability_logits([logits, mirrored])
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits


TOUCHING_3D = np.ones((3, 3, 3), bool)  # voxels touch across faces, edges and corners, within and across slices


def binarize(probs: np.ndarray, threshold: float, min_component: int = 0) -> np.ndarray:
    """Tumour mask (H, W) bool from probabilities: threshold, then drop blobs under ``min_component`` pixels."""
    mask = probs > threshold
    if min_component > 0 and mask.any():
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        keep = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= min_component)
        mask = np.isin(labels, keep[keep > 0])
    return mask


def fill_holes(masks: np.ndarray | list[np.ndarray]) -> list[np.ndarray]:
    """Each 2-D mask with the holes inside its regions filled (a notch open to the outside is not a hole)."""
    return [_filled(m) for m in masks]


def _filled(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes`` searched only inside the mask's bounding box, where every hole lies (any
    background pixel on the box's edge reaches the image border around it): most slices are empty or hold a small
    tumour, and the whole 256 px search cost more than the rest of the clean-up together."""
    filled = mask.astype(bool)
    if not filled.any():
        return filled
    rows, cols = np.flatnonzero(filled.any(1)), np.flatnonzero(filled.any(0))
    box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    filled[box] = ndimage.binary_fill_holes(filled[box])
    return filled


def clean_volume(probs: np.ndarray, cfg: Config, threshold: float | None = None) -> np.ndarray:
    """One patient's tumour mask (N, H, W) bool from its probability maps, slices in order.

    Thresholds at ``threshold`` (default ``cfg.threshold``), drops 2-D blobs under ``cfg.min_component`` pixels,
    grows what is left into the 3-D regions over ``cfg.grow_threshold`` that touch it (hysteresis: a tumour
    found in part is taken whole down to the lower level, and faint areas elsewhere stay out), then, with
    ``cfg.min_volume_share`` > 0, keeps only the 3-D connected regions with at least that share of the largest
    region's voxels: a glioma is one lesion, and scattered false alarms are small. Last, with ``cfg.fill_holes``,
    holes inside each slice's mask are filled: the dataset's masks outline the whole abnormal region and have
    none, while a net can leave a darker core of a tumour out.
    """
    threshold = cfg.threshold if threshold is None else threshold
    mask = np.stack([binarize(p, threshold, cfg.min_component) for p in probs]) if len(probs) else probs > threshold
    if 0 < cfg.grow_threshold < threshold and mask.any():
        labels, _ = ndimage.label(probs > cfg.grow_threshold, structure=TOUCHING_3D)
        mask = np.isin(labels, np.unique(labels[mask]))  # every found region holds a voxel of mask
    if cfg.min_volume_share > 0 and mask.any():
        labels, n = ndimage.label(mask, structure=TOUCHING_3D)
        if n > 1:
            sizes = np.bincount(labels.ravel())[1:]
            keep = np.flatnonzero(sizes >= cfg.min_volume_share * sizes.max()) + 1
            mask = np.isin(labels, keep)
    if cfg.fill_holes and mask.any():
        mask = np.stack(fill_holes(mask))
    return mask


def _needs_cleaning(cfg: Config) -> bool:
    return cfg.min_component > 0 or cfg.min_volume_share > 0 or cfg.grow_threshold > 0 or cfg.fill_holes


@torch.no_grad()
def patient_volumes(model: nn.Module, loader: DataLoader, cfg: Config, loss_fn: nn.Module | None = None
                    ) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, float]]:
    """Per patient, in table order: (patient, probabilities (N, H, W), masks (N, H, W), summed loss) at the masks'
    resolution, for a loader from :func:`make_eval_loader`. The loss sum is 0 without ``loss_fn``."""
    device = cfg.torch_device()
    place_model(model, cfg).eval()
    owners = loader.batch_sampler.owners
    probs, masks, loss = [], [], 0.0
    for k, (images, truth) in enumerate(loader):
        images, truth = images.to(device, non_blocking=True), truth.to(device, non_blocking=True)
        logits = model_logits(model, images, cfg, truth.shape[-2:])
        if loss_fn is not None:
            loss += loss_fn(logits, truth).item() * len(images)
        probs.append(torch.sigmoid(logits)[:, 0])
        masks.append(truth[:, 0])
        if k + 1 == len(owners) or owners[k + 1] != owners[k]:
            yield owners[k], torch.cat(probs), torch.cat(masks), loss
            probs, masks, loss = [], [], 0.0


def slice_counts(model: nn.Module, loader: DataLoader, cfg: Config, loss_fn: nn.Module | None = None,
                 thresholds: tuple[float, ...] | None = None) -> tuple[float, np.ndarray]:
    """Mean loss per slice (NaN without ``loss_fn``) and per-slice (intersection, predicted, true) counts at the
    masks' resolution, after :func:`clean_volume`, for a loader from :func:`make_eval_loader`. Counts have shape
    (N, 3), or (T, N, 3) for several ``thresholds`` at once (one forward pass for all)."""
    levels = thresholds if thresholds is not None else (cfg.threshold,)
    losses, counts, seen = 0.0, [], 0
    for _, probs, masks, loss in patient_volumes(model, loader, cfg, loss_fn):
        losses += loss
        seen += len(probs)
        if _needs_cleaning(cfg):
            volume = probs.cpu().numpy()
            preds = [torch.from_numpy(clean_volume(volume, cfg, t)).float() for t in levels]
            counts.append(torch.stack([overlap_counts(p, masks.cpu(), 0.5) for p in preds]))
        else:
            counts.append(torch.stack([overlap_counts(probs, masks, t).cpu() for t in levels]))
    loss = losses / seen if loss_fn is not None and seen else float("nan")
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


def predict_probabilities(model: nn.Module, table: pd.DataFrame, cfg: Config) -> np.ndarray:
    """Tumour probability maps (N, H, W) at the slices' own resolution, for the slices of ``table`` in order."""
    out = [probs.cpu().numpy() for _, probs, _, _ in patient_volumes(model, make_eval_loader(table, cfg), cfg)]
    return np.concatenate(out) if out else np.zeros((0, 256, 256), np.float32)


def predict_masks(model: nn.Module, table: pd.DataFrame, cfg: Config) -> np.ndarray:
    """Final tumour masks (N, H, W) bool, cleaned per patient (:func:`clean_volume`), for the slices of ``table``."""
    out = [clean_volume(probs.cpu().numpy(), cfg)
           for _, probs, _, _ in patient_volumes(model, make_eval_loader(table, cfg), cfg)]
    return np.concatenate(out) if out else np.zeros((0, 256, 256), bool)


def score_patients(model: nn.Module, table: pd.DataFrame, cfg: Config) -> pd.Series:
    """3-D Dice per patient of ``model`` on the labelled slices of ``table``."""
    _, dice = evaluate(model, make_eval_loader(table, cfg), table["patient"].tolist(), cfg)
    return dice


def report(model: nn.Module, table: pd.DataFrame, cfg: Config) -> dict:
    """Every score of :func:`helpers.metrics.summarize` for ``model`` on the labelled slices of ``table``."""
    _, counts = slice_counts(model, make_eval_loader(table, cfg), cfg)
    return summarize(table["patient"].tolist(), counts)
