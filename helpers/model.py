"""The seed project's U-Net (Ronneberger et al. 2015, as re-implemented by the seed), widths configurable."""
from __future__ import annotations

from collections.abc import Sequence

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import NORMS

SEED_FEATURES = (64, 128, 256, 512)
# Share of tumour pixels the untrained model predicts (about 1% of pixels are tumour in the LGG data).
FOREGROUND_PRIOR = 0.01


def norm_layer(norm: str, channels: int) -> nn.Module:
    """BatchNorm (the seed's), or InstanceNorm with a learned scale and shift: each slice's feature maps
    normalised by their own statistics, so a scan brighter or of other contrast than the training scans is
    normalised away at every layer rather than only at the input (nnU-Net's choice)."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


class DoubleConv(nn.Sequential):
    """(3x3 conv without bias, stride 1 -> norm -> ReLU) twice; the bias is redundant before the norm."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch") -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False),
            norm_layer(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """Encoder of DoubleConv + 2x2 max-pool per level, a bottleneck of twice the last width, and a decoder of
    2x2 transposed convs whose output is concatenated with the skip connection. Returns logits, (N, 1, H, W).

    With the seed widths (64, 128, 256, 512) and 3 input channels it has 31,037,633 parameters (either
    ``norm``: both learn a scale and shift per channel).

    ``dropout`` > 0 zeroes that share of the bottleneck's features in training, at the end of the contracting
    path as in the U-Net paper (0.5 there), so the decoder cannot lean on a few memorised features.

    ``deep_supervision`` adds a 1x1 output conv on the decoder's 1/4- and 1/2-scale levels; in training the
    model then returns ``(logits, half_scale_logits, quarter_scale_logits)`` for :class:`~helpers.losses.
    DeepSupervisionLoss`, so the coarse levels learn the mask directly rather than only through the finer ones
    (nnU-Net's deep supervision). In eval mode it returns the full-scale logits alone, as without it.

    The output bias starts at the logit of :data:`FOREGROUND_PRIOR` (as in RetinaNet) instead of 0: with BCE
    and ~1% tumour pixels, a zero start spends many epochs unlearning "half the image is tumour", and some seeds
    collapse to predicting no tumour at all. Same architecture and parameter count as the seed.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1,
                 features: Sequence[int] = SEED_FEATURES, norm: str = "batch", dropout: float = 0.0,
                 deep_supervision: bool = False) -> None:
        super().__init__()
        self.features = tuple(features)
        if deep_supervision and len(self.features) < 3:
            raise ValueError(f"deep supervision needs at least 3 U-Net levels, got features={self.features}")
        self.downs = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        for width in self.features:
            self.downs.append(DoubleConv(in_channels, width, norm))
            in_channels = width
        self.bottleneck = DoubleConv(self.features[-1], self.features[-1] * 2, norm)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        for width in reversed(self.features):
            self.ups.append(nn.ConvTranspose2d(width * 2, width, kernel_size=2, stride=2))
            self.ups.append(DoubleConv(width * 2, width, norm))
        self.final_conv = nn.Conv2d(self.features[0], out_channels, kernel_size=1)
        # Heads for the decoder levels at 1/4 and 1/2 scale (the coarsest, 1/8, is too coarse for a 128 px mask).
        self.aux_convs = nn.ModuleList(nn.Conv2d(width, out_channels, kernel_size=1)
                                       for width in self.features[1:3]) if deep_supervision else nn.ModuleList()
        for conv in (self.final_conv, *self.aux_convs):
            nn.init.constant_(conv.bias, math.log(FOREGROUND_PRIOR / (1 - FOREGROUND_PRIOR)))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        skips, levels = [], []
        for down in self.downs:
            x = down(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottleneck(x))
        for up, conv, skip in zip(self.ups[::2], self.ups[1::2], reversed(skips)):
            x = up(x)
            if x.shape[-2:] != skip.shape[-2:]:
                # Odd sizes lose a row/column to pooling; pad back rather than resize, so pixels stay aligned.
                dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
                x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
            x = conv(torch.cat((skip, x), dim=1))
            if self.aux_convs:  # kept only for the heads, so plain inference frees each level as it goes
                levels.append(x)
        logits = self.final_conv(x)
        if not (self.training and self.aux_convs):
            return logits
        # levels[-2] is the 1/2-scale decoder output (width features[1]), levels[-3] the 1/4-scale one.
        return (logits, self.aux_convs[0](levels[-2]), self.aux_convs[1](levels[-3]))


def mean_probability_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The logit of the mean of several predictions' probabilities (flip TTA's views, an ensemble's members), in
    fp32 and with operators every ONNX runtime has. Probabilities, not logits, are averaged: one view sure of
    tumour (logit 8) would otherwise outvote one sure of none (-4)."""
    probs = torch.stack([torch.sigmoid(out.float()) for out in logits]).mean(0).clamp(1e-6, 1 - 1e-6)
    return torch.log(probs / (1 - probs))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class Ensemble(nn.Module):
    """Independently initialised U-Nets (``members``) trained side by side on the same patients; their tumour
    probabilities are averaged.

    In eval mode it returns the logit of the members' mean probability, so everything that takes a U-Net's
    logits (validation, ``evaluate``, ``predict``, the exports) takes an ensemble unchanged. In training mode it
    returns the tuple of the members' logits, for :class:`~helpers.losses.EnsembleLoss`: each member learns from
    its own loss, as if trained alone. Models of a few patients disagree a lot from one seed to the next
    (README, "Accuracy"); their average is steadier than any one of them.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        outputs = tuple(member(x) for member in self.members)
        return outputs if self.training else mean_probability_logits(outputs)
