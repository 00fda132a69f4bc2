"""Training losses on logits: the seed's BCE, a soft Dice, and their weighted sum."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import Config


class SoftDiceLoss(nn.Module):
    """1 - a soft Tversky index, TP / (TP + (1 - b) FP + b FN), which is the soft Dice at b = ``recall_weight`` =
    0.5; b > 0.5 makes a missed tumour pixel cost more than a false alarm. ``over="batch"`` counts TP, FP and FN
    over the whole batch, so large tumours weigh most; ``over="slice"`` scores each slice with tumour on its own
    and averages them, so a small tumour counts as much as a large one, as it does in the per-patient Dice (slices
    without tumour are then left to the BCE term; a batch without any falls back to the batch count).
    ``smooth`` keeps tumour-free batches from dividing by zero."""

    def __init__(self, smooth: float = 1.0, recall_weight: float = 0.5, over: str = "batch") -> None:
        super().__init__()
        self.smooth, self.beta, self.over = smooth, recall_weight, over

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        probs = torch.sigmoid(logits.float())
        if self.over == "slice":
            has_tumour = target.flatten(1).sum(1) > 0
            if has_tumour.any():
                return self.tversky_loss(probs[has_tumour].flatten(1), target[has_tumour].flatten(1)).mean()
        return self.tversky_loss(probs.flatten(), target.flatten())

    def tversky_loss(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """1 - the Tversky index over the last dimension (one value per row)."""
        tp = (probs * target).sum(-1)
        fp, fn = probs.sum(-1) - tp, target.sum(-1) - tp
        return 1 - (tp + self.smooth / 2) / (tp + (1 - self.beta) * fp + self.beta * fn + self.smooth / 2)


class BCEDiceLoss(nn.Module):
    """(1 - w) * BCE + w * soft Dice: BCE gives every pixel a gradient, Dice counters the class imbalance."""

    def __init__(self, dice_weight: float = 0.5, recall_weight: float = 0.5, dice_over: str = "batch") -> None:
        super().__init__()
        self.bce, self.w = nn.BCEWithLogitsLoss(), dice_weight
        self.dice = SoftDiceLoss(recall_weight=recall_weight, over=dice_over)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (1 - self.w) * self.bce(logits, target) + self.w * self.dice(logits, target)


class MultiOutputLoss(nn.Module):
    """``loss`` over a model that returns a tuple of logits in training: a plain tensor of logits (evaluation) gets
    ``loss`` alone, a tuple what :meth:`combine` makes of it."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, outputs: torch.Tensor | tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        return self.loss(outputs, target) if isinstance(outputs, torch.Tensor) else self.combine(outputs, target)

    def combine(self, outputs: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DeepSupervisionLoss(MultiOutputLoss):
    """``loss`` on the full-scale logits plus, down-weighted, on each coarser output of a deeply supervised U-Net
    (weights 1, 1/2, 1/4, ... normalised to sum to 1, as in nnU-Net). A coarser output is compared with the mask
    average-pooled to its size, so a border pixel's target is the tumour share it covers."""

    def combine(self, outputs: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        weights = [0.5 ** k for k in range(len(outputs))]
        total = sum(weights)
        return sum(w / total * self.loss(out, F.adaptive_avg_pool2d(target, out.shape[-2:]))
                   for w, out in zip(weights, outputs))


class EnsembleLoss(MultiOutputLoss):
    """The mean of ``loss`` over the members' logits of a training :class:`~helpers.model.Ensemble`: each member's
    gradient comes from its own output alone, as if it were trained by itself."""

    def combine(self, outputs: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
        return sum(self.loss(out, target) for out in outputs) / len(outputs)


def build_loss(cfg: Config) -> nn.Module:
    """The loss named by ``cfg.loss``, over all the model's outputs with ``cfg.deep_supervision`` or an
    ensemble of ``cfg.members`` U-Nets."""
    if cfg.loss == "bce":
        loss = nn.BCEWithLogitsLoss()
    elif cfg.loss == "dice":
        loss = SoftDiceLoss(recall_weight=cfg.recall_weight, over=cfg.dice_over)
    else:
        loss = BCEDiceLoss(cfg.dice_weight, cfg.recall_weight, cfg.dice_over)
    if cfg.deep_supervision:
        loss = DeepSupervisionLoss(loss)
    return EnsembleLoss(loss) if cfg.members > 1 else loss
