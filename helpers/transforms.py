"""Mask-aware preprocessing and augmentation with albumentations 2.x.

Every geometric transform moves the image and its mask together; intensity transforms touch the image only.
"""
from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks PyPI on import otherwise

import albumentations as A  # noqa: E402
import cv2  # noqa: E402

from .config import Config  # noqa: E402


def _normalize(cfg: Config) -> A.Normalize:
    if cfg.mean is None or cfg.std is None:
        raise ValueError("cfg.mean/cfg.std are not set: measure them with helpers.data.channel_stats first")
    return A.Normalize(mean=cfg.mean, std=cfg.std, max_pixel_value=255.0)


def eval_transform(cfg: Config) -> A.Compose:
    """Resize to the model's size and normalise per channel; what validation and inference see."""
    return A.Compose([A.Resize(cfg.image_size, cfg.image_size, interpolation=cv2.INTER_AREA), _normalize(cfg)])


def train_transform(cfg: Config) -> A.Compose:
    """The eval pipeline plus augmentation, by ``cfg.augment``:

    * "light": flips, small affine moves (±15°, ±10% zoom, ±5% shift), brightness/contrast jitter
      (``cfg.intensity_jitter``) and, with ``cfg.channel_gain``, a random gain per channel (scanners weight the
      three sequences differently);
    * "strong": as "light" with wider affine moves (±25°, 0.8-1.25 zoom, ±8% shift, more often), plus gamma,
      Gaussian noise and blur, after nnU-Net's 2-D recipe: with ten-odd training patients the model otherwise
      learns their scanners rather than the tumour;
    * "off": none.
    """
    if cfg.augment == "off":
        return eval_transform(cfg)
    strong = cfg.augment == "strong"
    intensity = []
    if cfg.intensity_jitter > 0:
        intensity.append(A.RandomBrightnessContrast(brightness_limit=cfg.intensity_jitter,
                                                    contrast_limit=cfg.intensity_jitter, p=0.5))
    if cfg.channel_gain > 0:
        intensity.append(A.MultiplicativeNoise(multiplier=(1 - cfg.channel_gain, 1 + cfg.channel_gain),
                                               per_channel=True, elementwise=False, p=0.5))
    if strong:
        intensity += [A.RandomGamma(gamma_limit=(70, 150), p=0.3),
                      A.GaussNoise(std_range=(0.0, 0.04), p=0.15),
                      A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.5, 1.0), p=0.15)]
    affine = (A.Affine(scale=(0.8, 1.25), translate_percent=(-0.08, 0.08), rotate=(-25, 25),
                       border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.8) if strong else
              A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-15, 15),
                       border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.5))
    # Seeded: albumentations otherwise draws from OS entropy and two runs with one seed would differ.
    return A.Compose([
        A.Resize(cfg.image_size, cfg.image_size, interpolation=cv2.INTER_AREA),
        A.HorizontalFlip(p=0.5),
        affine,
        *intensity,
        _normalize(cfg),
    ], seed=cfg.seed)
