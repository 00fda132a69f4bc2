"""Running a trained model over slice tables: probabilities, validation loss and per-patient Dice."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from .config import Config
from .data import SliceDataset
from .metrics import overlap_counts, patient_dice
from .transforms import eval_transform


def make_eval_loader(table: pd.DataFrame, cfg: Config) -> DataLoader:
    """Slices in table order, preprocessed as at validation time."""
    return DataLoader(SliceDataset(table, eval_transform(cfg)), batch_size=cfg.batch_size, shuffle=False,
                      num_workers=cfg.workers, pin_memory=cfg.torch_device().type == "cuda")


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, patients: list[str], cfg: Config,
             loss_fn: nn.Module | None = None) -> tuple[float, pd.Series]:
    """Mean loss per slice (NaN without ``loss_fn``) and 3-D Dice per patient.

    ``loader`` yields slices in table order and ``patients`` names the patient of each slice.
    """
    device = cfg.torch_device()
    model.eval()
    losses, counts = [], []
    for images, masks in loader:
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        logits = model(images)
        if loss_fn is not None:
            losses.append(loss_fn(logits, masks).item() * len(images))
        counts.append(overlap_counts(torch.sigmoid(logits), masks, cfg.threshold).cpu())
    loss = sum(losses) / len(patients) if losses else float("nan")
    return loss, patient_dice(patients, torch.cat(counts).numpy())


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
