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
    """The eval pipeline plus flips, small affine moves and brightness/contrast jitter."""
    if not cfg.augment:
        return eval_transform(cfg)
    return A.Compose([
        A.Resize(cfg.image_size, cfg.image_size, interpolation=cv2.INTER_AREA),
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-15, 15),
                 border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        _normalize(cfg),
    ])
