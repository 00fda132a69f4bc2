"""Tumour mixing, a training augmentation: a tumour carved from another training slice, with a margin of the
tissue around it, replaces the same region of the slice being trained on (after CarveMix, Zhang et al. 2021).

With ten-odd training patients the model sees ten-odd tumours, each in its own brain; mixing shows it those
tumours in other brains, against other backgrounds and scanners' contrasts. The slices of the dataset are
roughly aligned (centred heads, axial), so the tumour is put back at its own position, and only when the
receiving slice has tissue there (not background).
"""
from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

SliceSource = Callable[[int], tuple[np.ndarray, np.ndarray]]  # index -> (image (H, W, C) uint8, mask (H, W) uint8)


class TumourMix:
    """With probability ``p``, :meth:`__call__` pastes a donor's tumour into (image, mask).

    The donor is drawn from ``donors`` (indices of tumour slices that ``source`` serves). The carved region is
    the donor's tumour grown by a random margin of ``margin`` pixels (at 256x256), its edge blended over
    ``feather`` pixels; inside it the mask is the donor's. The paste is skipped when the receiving slice is much
    darker there than the donor (background, or the edge of the head): ``min_tissue`` is the least ratio of
    their mean brightness in the region.
    """

    def __init__(self, source: SliceSource, donors: list[int], p: float = 0.3, seed: int = 0,
                 margin: tuple[int, int] = (3, 15), feather: float = 2.0, min_tissue: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"tumour mix probability must be in [0, 1], got {p}")
        self.source, self.donors, self.p = source, list(donors), p
        self.margin, self.feather, self.min_tissue = margin, feather, min_tissue
        self.rng = np.random.default_rng(seed)

    def set_random_seed(self, seed: int) -> None:
        """A fresh stream (each DataLoader worker gets its own)."""
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.donors or self.rng.random() >= self.p:
            return image, mask
        donor_image, donor_mask = self.source(self.donors[self.rng.integers(len(self.donors))])
        if donor_image.shape != image.shape or not donor_mask.any():
            return image, mask
        if self.rng.random() < 0.5:  # either hemisphere: the tumours of ten patients sit on one side or the other
            donor_image, donor_mask = donor_image[:, ::-1], donor_mask[:, ::-1]
        return carve(image, mask, donor_image, donor_mask, int(self.rng.integers(*self.margin, endpoint=True)),
                     self.feather, self.min_tissue)


def carve(image: np.ndarray, mask: np.ndarray, donor_image: np.ndarray, donor_mask: np.ndarray, margin: int,
          feather: float = 2.0, min_tissue: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(image, mask) with the donor's tumour and ``margin`` pixels around it put in; unchanged when the receiving
    slice is darker there than ``min_tissue`` times the donor."""
    size = 2 * margin + 1
    region = cv2.dilate(donor_mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))
    inside = region.astype(bool)
    here, there = image[inside].astype(np.float32).sum(), donor_image[inside].astype(np.float32).sum()
    if here < min_tissue * there:
        return image, mask
    alpha = cv2.GaussianBlur(region.astype(np.float32), (0, 0), feather) if feather > 0 else region.astype(np.float32)
    alpha = np.maximum(alpha, donor_mask.astype(np.float32))[..., None]  # the tumour itself never blends
    mixed = np.clip(alpha * donor_image + (1 - alpha) * image, 0, 255).astype(np.uint8)
    labels = np.where(alpha[..., 0] >= 0.5, donor_mask, mask).astype(mask.dtype)
    return np.ascontiguousarray(mixed), labels
