"""Overlap metrics. One convention everywhere: a Dice of two empty masks is 1 (nothing to find, nothing found).

Patient-level Dice stacks all slices of a patient into one volume, 2|P n G| / (|P| + |G|), so a patient with a
large tumour and one with a small tumour weigh the same in the mean, and empty slices cannot inflate it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch


def dice(pred: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """Dice of two binary masks of any shape; 1.0 when both are empty."""
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(pred, target).sum() / total)


def overlap_counts(probs: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-slice (intersection, predicted, true) pixel counts, shape (N, 3), from probabilities and masks."""
    pred = (probs > threshold).flatten(1)
    true = masks.bool().flatten(1)
    return torch.stack([(pred & true).sum(1), pred.sum(1), true.sum(1)], dim=1)


def patient_dice(patients: Sequence[str], counts: np.ndarray | torch.Tensor) -> pd.Series:
    """3-D Dice per patient from per-slice counts (as :func:`overlap_counts` returns), indexed by patient."""
    frame = pd.DataFrame(np.asarray(counts, dtype=np.float64), columns=["inter", "pred", "true"])
    frame["patient"] = list(patients)
    sums = frame.groupby("patient", sort=True)[["inter", "pred", "true"]].sum()
    total = sums["pred"] + sums["true"]
    return (2 * sums["inter"] / total.where(total > 0)).fillna(1.0).rename("dice")
