"""Figures for the notebook: EDA, augmentation check, training curves, prediction overlays and volume views.

Each function returns its matplotlib Figure, so the notebook shows it and a script can save it.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .data import FLAIR, read_image, read_mask



def summary(table: pd.DataFrame) -> pd.Series:
    """Counts a reader checks first: patients, slices, slices with tumour and their share."""
    return pd.Series({"patients": table["patient"].nunique(), "slices": len(table),
                      "tumour slices": int(table["has_tumour"].sum()),
                      "tumour share": round(float(table["has_tumour"].mean()), 3)})


def plot_class_balance(table: pd.DataFrame) -> Figure:
    """Slices with and without tumour, and slices per patient split the same way."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [1, 3]})
    counts = table["has_tumour"].value_counts().reindex([False, True], fill_value=0)
    ax1.bar(["no tumour", "tumour"], counts.values, color=["tab:gray", "tab:red"])
    for x, v in enumerate(counts.values):
        ax1.text(x, v, str(v), ha="center", va="bottom")
    ax1.set_title("Slices by label")
    per_patient = table.groupby("patient")["has_tumour"].agg(["size", "sum"]).sort_values("size")
    x = np.arange(len(per_patient))
    ax2.bar(x, per_patient["size"] - per_patient["sum"], color="tab:gray", label="no tumour")
    ax2.bar(x, per_patient["sum"], bottom=per_patient["size"] - per_patient["sum"], color="tab:red", label="tumour")
    ax2.set_xticks([])
    ax2.set_xlabel(f"{len(per_patient)} patients")
    ax2.set_ylabel("slices")
    ax2.set_title("Slices per patient")
    ax2.legend()
    fig.tight_layout()
    return fig


def plot_tumour_sizes(table: pd.DataFrame) -> Figure:
    """Distribution of tumour area (pixels at 256x256) over slices that have a tumour."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    sizes = table.loc[table["has_tumour"], "tumour_pixels"]
    ax.hist(sizes, bins=40, color="tab:red")
    ax.set_xlabel("tumour pixels per slice")
    ax.set_ylabel("slices")
    ax.set_title(f"Tumour size ({len(sizes)} slices, median {int(sizes.median()) if len(sizes) else 0} px)")
    fig.tight_layout()
    return fig


def _show(ax: plt.Axes, image: np.ndarray, title: str = "", masks: tuple[tuple[np.ndarray, str], ...] = ()) -> None:
    ax.imshow(image[..., FLAIR] if image.ndim == 3 else image, cmap="gray")
    for mask, color in masks:
        if mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors=color, linewidths=1.2)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def plot_montage(table: pd.DataFrame, n: int = 12, seed: int = 0) -> Figure:
    """FLAIR channel of random tumour slices with the true outline in red."""
    rows = table[table["has_tumour"]]
    rows = rows.sample(n=min(n, len(rows)), random_state=seed) if len(rows) else table.head(n)
    cols = 6
    n_rows = max(1, -(-len(rows) // cols))
    fig, axes = plt.subplots(n_rows, cols, figsize=(2.2 * cols, 2.5 * n_rows + 0.4), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, row) in zip(axes.flat, rows.iterrows()):
        _show(ax, read_image(row["image_path"]), f"{row['patient'][:12]} #{row['slice']}",
              ((read_mask(row["mask_path"]), "red"),))
    fig.suptitle("FLAIR with tumour outline")
    return fig


def plot_augmentations(image: np.ndarray, mask: np.ndarray, transform, n: int = 5) -> Figure:
    """One slice through ``transform`` ``n`` times; the outline must follow the tumour in every copy."""
    fig, axes = plt.subplots(1, n + 1, figsize=(2.4 * (n + 1), 2.6))
    _show(axes[0], image, "original", ((mask, "red"),))
    for ax in axes[1:]:
        out = transform(image=image, mask=mask)
        _show(ax, out["image"], "augmented", ((out["mask"], "red"),))
    fig.tight_layout()
    return fig


def plot_history(history: pd.DataFrame) -> Figure:
    """Train and validation loss, and validation Dice, per epoch."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
    ax1.plot(history["epoch"], history["train_loss"], label="train")
    ax1.plot(history["epoch"], history["val_loss"], label="validation")
    ax1.set_xlabel("epoch")
    ax1.set_title("Loss")
    ax1.legend()
    ax2.plot(history["epoch"], history["val_dice"], color="tab:green", label="mean")
    if "val_dice_median" in history:
        ax2.plot(history["epoch"], history["val_dice_median"], color="tab:olive", ls="--", label="median")
    ax2.set_ylim(0, 1)
    ax2.set_xlabel("epoch")
    ax2.set_title("Validation Dice per patient (plain predictions)")
    ax2.legend()
    fig.tight_layout()
    return fig


def plot_predictions(table: pd.DataFrame, preds: np.ndarray, n: int = 6, seed: int = 0) -> Figure:
    """Rows of image / ground truth / prediction, at the original resolution, for tumour slices of ``table``.

    ``preds`` are the final masks (N, H, W) for the slices of ``table`` in order, as
    :func:`helpers.inference.predict_masks` returns them.
    """
    positive = np.flatnonzero(table["has_tumour"].to_numpy())
    pool = positive if len(positive) else np.arange(len(table))
    picks = np.random.default_rng(seed).choice(pool, size=min(n, len(pool)), replace=False)
    fig, axes = plt.subplots(len(picks), 3, figsize=(7.5, 2.5 * len(picks)), squeeze=False)
    for ax_row, i in zip(axes, picks):
        row = table.iloc[i]
        image, mask = read_image(row["image_path"]), read_mask(row["mask_path"])
        pred = preds[i]
        _show(ax_row[0], image, f"{row['patient'][:12]} #{row['slice']}")
        _show(ax_row[1], image, "ground truth", ((mask, "red"),))
        _show(ax_row[2], image, "prediction", ((pred, "yellow"),))
    fig.tight_layout()
    return fig


def plot_patient_dice(per_patient: pd.Series) -> Figure:
    """Dice per patient, sorted, with the mean and median marked."""
    values = per_patient.sort_values()
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(values)), 3.5))
    ax.bar(range(len(values)), values.to_numpy(), color="tab:blue")
    ax.axhline(values.mean(), color="tab:red", label=f"mean {values.mean():.3f}")
    ax.axhline(values.median(), color="tab:orange", ls="--", label=f"median {values.median():.3f}")
    ax.set_xticks(range(len(values)), [p[:12] for p in values.index], rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice")
    ax.set_title(f"Dice per patient ({len(values)} patients)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def plot_threshold_curve(curve: pd.Series, chosen: float) -> Figure:
    """Mean patient Dice against the decision threshold (as :func:`helpers.inference.choose_threshold` gives)."""
    curve = curve.sort_index()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(curve.index, curve.to_numpy(), marker="o")
    ax.axvline(chosen, color="tab:red", ls="--", label=f"threshold {chosen:.2f}")
    ax.set_xlabel("threshold")
    ax.set_ylabel("mean patient Dice")
    ax.set_title("Threshold curve (validation patients)")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_volume(prediction, patient: str | None = None) -> Figure:
    """The volume view that :func:`helpers.predict.predict` wrote for ``patient`` (default: its first): slices
    with tumour, predicted outline red, true outline green where a mask exists."""
    patient = patient or prediction.summary["patient"].iloc[0]
    first = prediction.slices.loc[prediction.slices["patient"] == patient, "prediction"].iloc[0]
    grid = plt.imread(Path(first).parent / f"{patient}_volume.png")
    fig, ax = plt.subplots(figsize=(14, 14 * grid.shape[0] / grid.shape[1] + 0.5))
    ax.imshow(grid)
    ax.set_title(f"{patient}: predicted tumour (red), ground truth (green)")
    ax.axis("off")
    fig.tight_layout()
    return fig
