"""Mask-aware preprocessing and augmentation with albumentations 2.x.

Every geometric transform moves the image and its mask together; intensity transforms touch the image only.
"""
from __future__ import annotations

import functools
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks PyPI on import otherwise

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from .config import Config  # noqa: E402


def _normalize(cfg: Config) -> A.Normalize:
    if cfg.mean is None or cfg.std is None:
        raise ValueError("cfg.mean/cfg.std are not set: measure them with helpers.data.channel_stats first")
    # With neighbouring slices as input each sequence's statistics repeat per slice.
    return A.Normalize(mean=cfg.mean * cfg.slices, std=cfg.std * cfg.slices, max_pixel_value=255.0)


class ChannelGamma(A.ImageOnlyTransform):
    """A gamma drawn per channel from [1 / (1 + limit), 1 + limit] (log-uniform), on uint8 images.

    It changes each sequence's contrast on its own: in the sample, tumour over brain in FLAIR ranges from 1.0
    (TCGA_DU_7306) to 2.1 (TCGA_HT_8113) after per-volume rescaling, and in the other two sequences from 0.5 to
    1.2. albumentations' RandomGamma draws one gamma for all channels."""

    def __init__(self, limit: float = 0.5, p: float = 0.5) -> None:
        super().__init__(p=p)
        if not limit > 0:
            raise ValueError(f"ChannelGamma limit must be positive, got {limit}")
        self.limit = limit

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        bound = np.log1p(self.limit)
        channels = data["image"].shape[-1] if data["image"].ndim == 3 else 1
        return {"gammas": np.exp(self.random_generator.uniform(-bound, bound, size=channels))}

    def apply(self, img: np.ndarray, gammas: np.ndarray, **params) -> np.ndarray:
        levels = np.arange(256, dtype=np.float64)[:, None] / 255.0
        table = np.round(255.0 * levels ** gammas[None, :]).astype(np.uint8)  # (256, channels)
        return cv2.LUT(img, table.reshape(256, 1, -1)) if img.ndim == 3 else cv2.LUT(img, table[:, 0])


class SequenceGain(A.ImageOnlyTransform):
    """A random gain per MR sequence, the same for every slice of a 2.5-D input (channels ordered slice by slice,
    ``sequences`` per slice): drawn from [1 - limit, 1 + limit], on uint8 images."""

    def __init__(self, limit: float = 0.2, sequences: int = 3, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.limit, self.sequences = limit, sequences

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        gains = self.random_generator.uniform(1 - self.limit, 1 + self.limit, size=self.sequences)
        return {"gains": np.tile(gains, data["image"].shape[-1] // self.sequences)}

    def apply(self, img: np.ndarray, gains: np.ndarray, **params) -> np.ndarray:
        return np.clip(img * gains.astype(np.float32), 0, 255).astype(np.uint8)


class SequenceDropout(A.ImageOnlyTransform):
    """One MR sequence, drawn at random, set to its mean level ``fill`` (uint8, one per sequence), which the
    normalisation then maps to about 0 (to 8-bit rounding); with a 2.5-D input the same sequence in every slice.

    Meant for tumours that one sequence barely shows (TCGA_DU_7306's FLAIR): a model that sometimes has to do
    without a sequence learns to use all three (ModDrop, HeMIS). No gain measured (README, run SD)."""

    def __init__(self, fill: tuple[int, ...], p: float = 0.3) -> None:
        super().__init__(p=p)
        self.fill = np.asarray(fill, np.uint8)

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        return {"sequence": int(self.random_generator.integers(len(self.fill)))}

    def apply(self, img: np.ndarray, sequence: int, **params) -> np.ndarray:
        out = img.copy()
        out[..., sequence::len(self.fill)] = self.fill[sequence]
        return out


@functools.lru_cache(maxsize=8)
def _polynomial_basis(shape: tuple[int, int], terms: tuple[tuple[int, int], ...]) -> np.ndarray:
    """x**i * y**j for each (i, j) of ``terms`` over a (H, W) grid spanning [-1, 1]: shape (H, W, terms)."""
    y, x = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij")
    return np.stack([x**i * y**j for i, j in terms], axis=-1)


class BiasField(A.ImageOnlyTransform):
    """A smooth random gain field per MR sequence, as a receive coil's uneven sensitivity makes one (MRI's bias
    field): the log-gain is a random cubic polynomial of the position, scaled so that its largest excursion over the
    slice is drawn from [0, ``limit``]; gains then lie within [exp(-limit), exp(limit)]. On uint8 images.

    With a 2.5-D input (channels ordered slice by slice, ``sequences`` per slice) each sequence has one field for
    all its slices. After TorchIO's ``RandomBiasField`` and MONAI's ``RandBiasField``: the sample's failures are
    scanner-specific, and shading across a slice is what ten-odd training patients show little of. No gain
    measured (README, run BF)."""

    def __init__(self, limit: float = 0.3, sequences: int = 3, order: int = 3, p: float = 0.5) -> None:
        super().__init__(p=p)
        if not limit > 0:
            raise ValueError(f"BiasField limit must be positive, got {limit}")
        self.limit, self.sequences, self.order = limit, sequences, order

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        image = data["image"]
        channels = image.shape[-1] if image.ndim == 3 else 1
        sequences = min(self.sequences, channels)
        terms = tuple((i, j) for i in range(self.order + 1) for j in range(self.order + 1 - i) if i + j > 0)
        coefficients = self.random_generator.uniform(-1, 1, size=(sequences, len(terms)))
        strengths = self.random_generator.uniform(0, self.limit, size=sequences)
        repeats = channels // sequences
        return {"terms": terms, "coefficients": np.tile(coefficients, (repeats, 1)),
                "strengths": np.tile(strengths, repeats)}

    def apply(self, img: np.ndarray, terms: tuple, coefficients: np.ndarray, strengths: np.ndarray,
              **params) -> np.ndarray:
        log_gain = _polynomial_basis(img.shape[:2], tuple(terms)) @ coefficients.T.astype(np.float32)
        peak = np.abs(log_gain).max(axis=(0, 1))
        log_gain *= (strengths / np.where(peak > 0, peak, 1)).astype(np.float32)
        gain = np.exp(log_gain)
        out = img.astype(np.float32) * (gain if img.ndim == 3 else gain[..., 0])
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _elastic(size: int, p: float) -> A.ElasticTransform:
    """A smooth random displacement field, the same for every channel and the mask: about 2% of the image
    (2.8 px rms at 128, about 5 at 256) on average, smoothed over about a thirteenth of it, so tumour outlines bend
    while the brain keeps its shape. The displacement grows as alpha / sigma, hence alpha with the size squared.
    Off by default: its cross-validation run (README, run E) scored lower."""
    scale = size / 128
    return A.ElasticTransform(alpha=300 * scale**2, sigma=10 * scale, border_mode=cv2.BORDER_CONSTANT, fill=0,
                              fill_mask=0, p=p)


def _window(cfg: Config) -> A.BasicTransform:
    """The training window: anywhere in the slice, or, in ``cfg.crop_on_tumour`` of the slices that show tumour,
    around one of its pixels (albumentations' ``CropNonEmptyMaskIfExists``, a random crop on empty masks), so that
    tumours near the brain's rim are not cut away as often."""
    share = cfg.crop_on_tumour or 0.0  # None: not resolved for the hardware yet, so no placement
    if share == 0:  # no OneOf: its extra random draw would change the default runs' augmentation
        return A.RandomCrop(cfg.crop, cfg.crop)
    # OneOf draws one child with probabilities proportional to their p
    return A.OneOf([A.CropNonEmptyMaskIfExists(cfg.crop, cfg.crop, p=share),
                    A.RandomCrop(cfg.crop, cfg.crop, p=1 - share)], p=1)


def eval_transform(cfg: Config) -> A.Compose:
    """Resize to the model's size and normalise per channel; what validation and inference see."""
    return A.Compose([A.Resize(cfg.image_size, cfg.image_size, interpolation=cv2.INTER_AREA), _normalize(cfg)])


def train_transform(cfg: Config) -> A.Compose:
    """The eval pipeline plus augmentation, by ``cfg.augment``:

    * "light": flips, small affine moves (±15°, ±10% zoom, ±5% shift), brightness/contrast jitter
      (``cfg.intensity_jitter``) and, with ``cfg.channel_gain``, a random gain per channel (scanners weight the
      three sequences differently), with ``cfg.channel_gamma``, a random gamma per channel (their contrast) and,
      with ``cfg.sequence_dropout``, one sequence blanked in that share of slices (:class:`SequenceDropout`)
      and, with ``cfg.elastic``, a smooth random deformation in that share of slices (:func:`_elastic`);
    * "strong": as "light" with wider affine moves (±25°, 0.8-1.25 zoom, ±8% shift, more often), plus gamma,
      Gaussian noise and blur, after nnU-Net's 2-D recipe: with ten-odd training patients the model otherwise
      learns their scanners rather than the tumour;
    * "off": none.

    With ``cfg.crop`` each slice is then cut to a random ``crop`` x ``crop`` window (before the intensity changes,
    which then touch fewer pixels): the fully convolutional U-Net trains on windows and sees whole slices later.
    In ``cfg.crop_on_tumour`` of the tumour slices the window is placed to hold some tumour (:func:`_window`).
    """
    resize = A.Resize(cfg.image_size, cfg.image_size, interpolation=cv2.INTER_AREA)
    crop = [_window(cfg)] if cfg.crop else []
    if cfg.augment == "off":
        return A.Compose([resize, *crop, _normalize(cfg)], seed=cfg.seed) if crop else eval_transform(cfg)
    normalize = _normalize(cfg)
    strong = cfg.augment == "strong"
    intensity = []
    if cfg.intensity_jitter > 0:
        intensity.append(A.RandomBrightnessContrast(brightness_limit=cfg.intensity_jitter,
                                                    contrast_limit=cfg.intensity_jitter, p=0.5))
    if cfg.channel_gain > 0 and cfg.context:
        intensity.append(SequenceGain(cfg.channel_gain, cfg.in_channels, p=0.5))
    elif cfg.channel_gain > 0:
        intensity.append(A.MultiplicativeNoise(multiplier=(1 - cfg.channel_gain, 1 + cfg.channel_gain),
                                               per_channel=True, elementwise=False, p=0.5))
    if cfg.channel_gamma > 0:
        intensity.append(ChannelGamma(cfg.channel_gamma, p=0.5))
    if cfg.bias_field > 0:
        intensity.append(BiasField(cfg.bias_field, cfg.in_channels, p=0.5))
    if strong:
        intensity += [A.RandomGamma(gamma_limit=(70, 150), p=0.3),
                      A.GaussNoise(std_range=(0.0, 0.04), p=0.15),
                      A.GaussianBlur(blur_limit=(3, 5), sigma_limit=(0.5, 1.0), p=0.15)]
    if cfg.sequence_dropout > 0:  # after the intensity changes, so that a blanked sequence normalises to about 0
        levels = tuple(int(round(255 * m)) for m in cfg.mean)
        intensity.append(SequenceDropout(levels, p=cfg.sequence_dropout))
    affine = (A.Affine(scale=(0.8, 1.25), translate_percent=(-0.08, 0.08), rotate=(-25, 25),
                       border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.8) if strong else
              A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), rotate=(-15, 15),
                       border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.5))
    # Seeded: albumentations otherwise draws from OS entropy and two runs with one seed would differ.
    return A.Compose([
        resize,
        A.HorizontalFlip(p=0.5),
        affine,
        *([_elastic(cfg.image_size, cfg.elastic)] if cfg.elastic > 0 else []),
        *crop,
        *intensity,
        normalize,
    ], seed=cfg.seed)
