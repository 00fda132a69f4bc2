"""Training losses on logits: the seed's BCE, a soft Dice, and their weighted sum."""
from __future__ import annotations

import torch
from torch import nn

from .config import Config


class SoftDiceLoss(nn.Module):
    """1 - soft Dice over the whole batch; smooth keeps tumour-free batches from dividing by zero."""

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.sigmoid(logits.float())
        inter = (probs * target).sum()
        return 1 - (2 * inter + self.smooth) / (probs.sum() + target.sum() + self.smooth)


class BCEDiceLoss(nn.Module):
    """(1 - w) * BCE + w * soft Dice: BCE gives every pixel a gradient, Dice counters the class imbalance."""

    def __init__(self, dice_weight: float = 0.5) -> None:
        super().__init__()
        self.bce, self.dice, self.w = nn.BCEWithLogitsLoss(), SoftDiceLoss(), dice_weight

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (1 - self.w) * self.bce(logits, target) + self.w * self.dice(logits, target)


def build_loss(cfg: Config) -> nn.Module:
    """The loss named by ``cfg.loss``."""
    if cfg.loss == "bce":
        return nn.BCEWithLogitsLoss()
    if cfg.loss == "dice":
        return SoftDiceLoss()
    return BCEDiceLoss(cfg.dice_weight)
