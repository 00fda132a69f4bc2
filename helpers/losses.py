"""Training losses on logits: the seed's BCE, a soft Dice, and their weighted sum."""
from __future__ import annotations

import torch
from torch import nn

from .config import Config


class SoftDiceLoss(nn.Module):
    """1 - a soft Tversky index over the whole batch, TP / (TP + (1 - b) FP + b FN), which is the soft Dice at
    b = ``recall_weight`` = 0.5; b > 0.5 makes a missed tumour pixel cost more than a false alarm.
    ``smooth`` keeps tumour-free batches from dividing by zero."""

    def __init__(self, smooth: float = 1.0, recall_weight: float = 0.5) -> None:
        super().__init__()
        self.smooth, self.beta = smooth, recall_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.sigmoid(logits.float())
        tp = (probs * target).sum()
        fp, fn = probs.sum() - tp, target.sum() - tp
        return 1 - (tp + self.smooth / 2) / (tp + (1 - self.beta) * fp + self.beta * fn + self.smooth / 2)


class BCEDiceLoss(nn.Module):
    """(1 - w) * BCE + w * soft Dice: BCE gives every pixel a gradient, Dice counters the class imbalance."""

    def __init__(self, dice_weight: float = 0.5, recall_weight: float = 0.5) -> None:
        super().__init__()
        self.bce, self.dice, self.w = nn.BCEWithLogitsLoss(), SoftDiceLoss(recall_weight=recall_weight), dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (1 - self.w) * self.bce(logits, target) + self.w * self.dice(logits, target)


def build_loss(cfg: Config) -> nn.Module:
    """The loss named by ``cfg.loss``."""
    if cfg.loss == "bce":
        return nn.BCEWithLogitsLoss()
    if cfg.loss == "dice":
        return SoftDiceLoss(recall_weight=cfg.recall_weight)
    return BCEDiceLoss(cfg.dice_weight, cfg.recall_weight)
