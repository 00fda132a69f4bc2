"""Overlap metrics, used by training, ``evaluate``, the notebook and the tests.

Conventions, stated once:
* Dice (or IoU) of two empty masks is 1: nothing to find, nothing found. Dice with one side empty is 0.
* Patient Dice stacks all slices of a patient into one volume, 2|P n G| / (|P| + |G|), so a patient with a large
  tumour and one with a small tumour weigh the same in the mean, and empty slices cannot inflate it.
* Tumour-slice Dice and IoU are means over the slices whose ground truth has tumour; slices without tumour
  (where "both empty = 1" would flatter a model that predicts nothing) are left out of them.
* Precision and recall pool all pixels of all slices. With nothing predicted, precision is 1 only when there
  was nothing to find; with nothing to find, recall is 1.
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


def summarize(patients: Sequence[str], counts: np.ndarray | torch.Tensor) -> dict:
    """The report of ``python -m helpers evaluate`` from per-slice counts; see the module's conventions."""
    counts = np.asarray(counts, dtype=np.float64).reshape(-1, 3)
    per_patient = patient_dice(patients, counts)
    inter, pred, true = counts.T
    tumour = true > 0
    slice_dice = 2 * inter[tumour] / (pred[tumour] + true[tumour])
    slice_iou = inter[tumour] / (pred[tumour] + true[tumour] - inter[tumour])
    tp, fp, fn = inter.sum(), (pred - inter).sum(), (true - inter).sum()
    return {
        "mean_patient_dice": float(per_patient.mean()) if len(per_patient) else float("nan"),
        "median_patient_dice": float(per_patient.median()) if len(per_patient) else float("nan"),
        "per_patient": {k: float(v) for k, v in per_patient.items()},
        "tumour_slice_dice": float(slice_dice.mean()) if tumour.any() else float("nan"),
        "iou": float(slice_iou.mean()) if tumour.any() else float("nan"),
        "precision": float(tp / (tp + fp)) if tp + fp else 1.0 if fn == 0 else 0.0,
        "recall": float(tp / (tp + fn)) if tp + fn else 1.0,
        "n_patients": int(len(per_patient)),
        "n_slices": int(len(counts)),
        "n_tumour_slices": int(tumour.sum()),
    }
