"""Find the ``kaggle_3m`` slices on disk, index them in a table, and serve them to PyTorch."""
from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.model_selection import StratifiedGroupKFold
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .tumour_mix import TumourMix

SLICE_RE = re.compile(r"^(?P<case>.+)_(?P<slice>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)
PATIENT_RE = re.compile(r"^TCGA_[A-Z0-9]{2}_[A-Z0-9]{4}")
FLAIR = 1  # channel order in the dataset: pre-contrast, FLAIR, post-contrast
EXPECTED_LAYOUT = ("patient folders like TCGA_CS_4941_19960909/ holding TCGA_..._<n>.tif and "
                   "TCGA_..._<n>_mask.tif")
COLUMNS = ["patient", "institution", "slice", "image_path", "mask_path", "has_tumour", "tumour_pixels"]


class DataError(ValueError):
    """A problem with the data on disk that the user can fix; the message names the file."""


def find_kaggle_3m(root: str | Path) -> Path | None:
    """The folder that holds the patient folders: ``root`` itself, or the first ``kaggle_3m`` under it.

    The Kaggle download holds the tree twice (``kaggle_3m/`` and ``lgg-mri-segmentation/kaggle_3m/``);
    the shallowest copy wins, so no slice is ever counted twice.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    if any(PATIENT_RE.match(p.name) and p.is_dir() for p in root.iterdir()):
        return root
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        if Path(dirpath).name == "kaggle_3m":
            found.append((depth, dirpath))
            dirnames[:] = []
        elif depth >= 4:
            dirnames[:] = []
    return Path(sorted(found)[0][1]) if found else None


def read_image(path: str | Path) -> np.ndarray:
    """A slice as (H, W, 3) uint8 in the dataset's channel order (pre-contrast, FLAIR, post-contrast)."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(f"{path}: cannot be read as an image (expected a 256x256 3-channel TIFF)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path) -> np.ndarray:
    """A mask as (H, W) uint8 in {0, 1}."""
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DataError(f"{path}: cannot be read as a mask (expected a 256x256 single-channel TIFF)")
    return (mask > 127).astype(np.uint8)


class SliceCache:
    """Every slice of a table decoded once and kept in RAM as uint8 (all 3929 slices of the dataset at 256x256 take
    about 1 GB), so training epochs never touch the disk or the TIFF decoder again. Paths it does not hold are
    read from disk, so one cache serves any sub-table."""

    def __init__(self, table: pd.DataFrame, progress: bool = True) -> None:
        paths = list(zip(table["image_path"], table["mask_path"]))
        self.rows: dict[str, int] = {}
        self.images: list[np.ndarray] = []
        self.masks: list[np.ndarray] = []
        for image_path, mask_path in tqdm(paths, desc="caching slices", disable=not progress, leave=False):
            if image_path not in self.rows:
                self.rows[image_path] = len(self.images)
                self.rows[mask_path] = len(self.masks)
                self.images.append(read_image(image_path))
                self.masks.append(read_mask(mask_path))
                self.images[-1].flags.writeable = self.masks[-1].flags.writeable = False  # shared: never edit

    def image(self, path: str) -> np.ndarray:
        return self.images[self.rows[path]] if path in self.rows else read_image(path)

    def mask(self, path: str) -> np.ndarray:
        return self.masks[self.rows[path]] if path in self.rows else read_mask(path)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.images) + sum(a.nbytes for a in self.masks)


def _images(paths, cache: SliceCache | None) -> list[np.ndarray]:
    return [cache.image(p) if cache is not None else read_image(p) for p in paths]


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the slice's header, without decoding it; checks that it is 3-channel 8-bit."""
    try:
        with Image.open(path) as image:
            mode, size = image.mode, image.size
    except (OSError, SyntaxError) as error:
        raise DataError(f"{path}: cannot be read as an image ({error}); expected a 3-channel 8-bit TIFF") from None
    if mode != "RGB":
        raise DataError(f"{path}: image mode {mode} {size[0]}x{size[1]}; expected a 3-channel 8-bit TIFF (RGB)")
    return size[1], size[0]


def load_dataset(data_dir: str | Path) -> pd.DataFrame:
    """One row per slice: patient, institution, slice number, image and mask paths, tumour flag and size.

    Rows are ordered by patient, then by slice number as a number (2 before 10). Checked here, each with an
    error naming the file: an image without its mask and the reverse, an image that is not 3-channel 8-bit, a
    mask of another size than its image or with values other than 0 and 255, an unreadable file. Files in a
    patient folder that are not slices (``.DS_Store``, notes, non-numeric slice names) are skipped with one
    warning that counts them. Files beside the patient folders (the Kaggle ``data.csv`` and ``README.md``) are
    not read.
    """
    data_dir = Path(data_dir)
    root = find_kaggle_3m(data_dir)
    if root is None:
        raise DataError(f"{data_dir}: no kaggle_3m slices found (expected {EXPECTED_LAYOUT})")
    rows, skipped = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and PATIENT_RE.match(p.name)):
        images, masks = {}, {}
        for f in folder.iterdir():
            m = SLICE_RE.match(f.name)
            if m and m["case"] == folder.name:
                (masks if m["mask"] else images)[int(m["slice"])] = f
            else:
                skipped.append(f)
        if no_mask := sorted(set(images) - set(masks)):
            path = images[no_mask[0]]
            raise DataError(f"{path}: image has no mask (expected {path.stem}_mask.tif beside it)")
        if no_image := sorted(set(masks) - set(images)):
            raise DataError(f"{masks[no_image[0]]}: mask has no image "
                            f"(expected {folder.name}_{no_image[0]}.tif beside it)")
        for n in sorted(images):
            height, width = _image_size(images[n])
            raw = cv2.imread(str(masks[n]), cv2.IMREAD_UNCHANGED)
            if raw is None:
                raise DataError(f"{masks[n]}: cannot be read as a mask (expected a single-channel 0/255 TIFF)")
            if raw.shape != (height, width):
                raise DataError(f"{masks[n]}: mask of shape {raw.shape}, its image is {height}x{width}; "
                                "expected a single-channel mask of the same size")
            if bad := sorted(set(np.unique(raw).tolist()) - {0, 255}):
                raise DataError(f"{masks[n]}: mask values {bad[:5]}; expected only 0 (background) and 255 (tumour)")
            pixels = int((raw > 0).sum())
            rows.append({"patient": folder.name, "institution": folder.name.split("_")[1], "slice": n,
                         "image_path": str(images[n]), "mask_path": str(masks[n]),
                         "has_tumour": pixels > 0, "tumour_pixels": pixels})
    if skipped:
        names = ", ".join(str(p.relative_to(root)) for p in skipped[:3])
        warnings.warn(f"{root}: skipped {len(skipped)} files in patient folders that are not slices "
                      f"(<patient>_<n>.tif / <patient>_<n>_mask.tif): {names}{', ...' if len(skipped) > 3 else ''}",
                      stacklevel=2)
    if not rows:
        raise DataError(f"{root}: no kaggle_3m slices found (expected {EXPECTED_LAYOUT})")
    return pd.DataFrame(rows, columns=COLUMNS)


def split_patients(table: pd.DataFrame, val_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out whole patients for validation, so no patient's slices are on both sides; with ``val_fraction`` 0
    every patient trains and the validation table is empty.

    Each validation patient is taken from the institution with the most patients still in training (ties, and
    the patient within it, drawn from ``seed``), so institutions with one or two patients keep them for training:
    validation only picks the epoch, while an institution the model has seen little of costs its patients' scores.
    In the 15-patient sample (Duke 6, Henry Ford 5, CS 2, FG 2) validation takes two Duke and one Henry Ford
    patient; a plain random draw took one of the two CS and one of the two FG patients with seed 0.
    """
    if val_fraction == 0:
        return table.reset_index(drop=True), table.iloc[:0].reset_index(drop=True)
    n_patients = table["patient"].nunique()
    if n_patients < 2:
        raise DataError(f"need at least 2 patients to hold one out for validation, found {n_patients}")
    n_val = min(max(1, round(n_patients * val_fraction)), n_patients - 1)
    rng = np.random.default_rng(seed)
    institution = table.groupby("patient")["institution"].first()
    left = {name: rng.permutation(group.index.to_numpy()).tolist()
            for name, group in institution.groupby(institution, sort=True)}
    val = []
    for _ in range(n_val):
        most = max(len(patients) for patients in left.values())
        largest = [name for name, patients in left.items() if len(patients) == most]
        val.append(left[largest[rng.integers(len(largest))]].pop())
    is_val = table["patient"].isin(val).to_numpy()
    return table[~is_val].reset_index(drop=True), table[is_val].reset_index(drop=True)


def patient_folds(table: pd.DataFrame, k: int, seed: int) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """``k`` (train, validation) pairs for patient-level cross-validation: every patient is validated exactly
    once, folds balanced by institution where the counts allow."""
    n_patients = table["patient"].nunique()
    if not 2 <= k <= n_patients:
        raise DataError(f"k-fold needs 2 <= k <= number of patients ({n_patients}), got k={k}")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(table.iloc[tr].reset_index(drop=True), table.iloc[va].reset_index(drop=True))
            for tr, va in splitter.split(table, table["institution"], groups=table["patient"])]


BRAIN_LEVEL = 90.0  # where intensity="brain" puts each channel's brain median, on the 0..255 scale
# Where intensity="landmarks" puts each channel's brain median when its 99th percentile goes to 255: the sample's
# typical ratio of the two (0.35-0.57 for 44 of its 45 volume channels; TCGA_CS_6290's post-contrast is 0.75).
LANDMARK_LEVEL = 115.0


def brain_pixels(pixels: np.ndarray) -> np.ndarray:
    """Which of a volume's (N, 3) pixels are brain: Otsu's threshold on the channel sum.

    A fixed share of the bright end is not enough: some volumes (TCGA_FG_A4MU) have a background at a quarter
    of the brain's level, and a 10%-of-the-99th-percentile cut took in every pixel, background included."""
    total = sum(channel.astype(np.int32) for channel in pixels.T)  # 8 times faster than sum(1) on (N, 3) uint8
    top = counts_quantile(np.bincount(total, minlength=766), 0.995)
    if top <= 0:
        return np.ones(len(pixels), bool)
    scaled = np.clip(np.arange(766) * (255.0 / top), 0, 255).astype(np.uint8)[total]
    level, _ = cv2.threshold(scaled.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    brain = scaled > level
    return brain if brain.any() else np.ones(len(pixels), bool)


def counts_quantile(counts: np.ndarray, q: float) -> float:
    """``np.percentile(values, 100 * q)`` (linear between order statistics) of integers given by their counts:
    ``counts[v]`` of them equal v. A volume's pixels are 8-bit, and counting them is faster than sorting them."""
    cumulative = np.cumsum(counts)
    position = (cumulative[-1] - 1) * q
    below = int(position)
    low, high = np.searchsorted(cumulative, [below, min(below + 1, cumulative[-1] - 1)], side="right")
    return float(low + (high - low) * (position - below))


def _brain_medians(pixels: np.ndarray) -> np.ndarray:
    """Each channel's median (3,) over the brain pixels of a volume's (N, 3) uint8 pixels."""
    brain = pixels[brain_pixels(pixels)]
    return np.array([counts_quantile(np.bincount(c, minlength=256), 0.5) for c in brain.T])


def _bright_level(channel: np.ndarray, percentile: float) -> float:
    """The ``percentile`` of a channel's non-zero uint8 values (255 when all are zero)."""
    counts = np.bincount(channel, minlength=256)
    counts[0] = 0
    return counts_quantile(counts, percentile / 100.0) if counts.any() else 255.0


def volume_scales(table: pd.DataFrame, percentile: float = 99.0, cache: SliceCache | None = None,
                  method: str = "volume") -> dict[str, np.ndarray]:
    """Per patient, the level of each channel that :func:`rescale` maps to 255.

    Scanners and institutions differ in overall brightness; dividing each volume by its own level puts every
    patient on one scale before the dataset-wide normalisation. ``method``:

    * "volume": the channel's ``percentile`` over the volume's non-zero pixels (its bright end: in FLAIR, often
      the tumour itself, so a large tumour darkens the rest of its volume);
    * "brain": the channel's median over the brain (:func:`brain_pixels`), mapped to :data:`BRAIN_LEVEL`; the
      tumour is a small share of the brain, so the level does not depend on it;
    * "landmarks": both, as a (2, 3) array (brain median, 99th percentile), that :func:`rescale` maps piecewise
      linearly to :data:`LANDMARK_LEVEL` and 255: the bright end and the brain's own level both land in one place,
      a two-landmark form of Nyul and Udupa's histogram standardisation.
    """
    return {patient: volume_level(_images(rows["image_path"], cache), method, percentile)
            for patient, rows in table.groupby("patient", sort=False)}


def volume_level(images: list[np.ndarray], method: str = "volume", percentile: float = 99.0) -> np.ndarray:
    """The per-channel level (3,) of one volume's slices (each (H, W, 3) uint8) that :func:`rescale` maps to 255,
    or for "landmarks" the (2, 3) brain medians and levels; ``method`` as in :func:`volume_scales`."""
    pixels = np.concatenate([image.reshape(-1, 3) for image in images])
    if method == "brain":
        return np.maximum(_brain_medians(pixels) * 255.0 / BRAIN_LEVEL, 1.0).astype(np.float32)
    levels = np.maximum([_bright_level(c, percentile) for c in pixels.T], 1.0)
    if method == "landmarks":
        medians = _brain_medians(pixels)
        return np.stack([np.clip(medians, 0.5, levels - 0.5), levels]).astype(np.float32)
    return levels.astype(np.float32)


def scales_for(intensity: str, table: pd.DataFrame, scales: dict[str, np.ndarray] | None = None,
               cache: SliceCache | None = None) -> dict[str, np.ndarray] | None:
    """The per-volume levels that ``intensity`` (a :func:`volume_scales` method, or "dataset") needs for ``table``:
    None for "dataset"; else ``scales`` when given (measured once and shared), or :func:`volume_scales`."""
    if intensity == "dataset":
        return None
    return scales if scales is not None else volume_scales(table, cache=cache, method=intensity)


def rescale(image: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Map a volume's per-channel bright level to 255, still uint8 (clipped above, rounded down); with a (2, C)
    ``scale`` (intensity="landmarks"), its brain medians to :data:`LANDMARK_LEVEL` as well, linearly between.

    A per-channel lookup table: every training step rescales its slices, and this is ten times faster than
    the same arithmetic on the whole float image."""
    scale = np.asarray(scale, np.float32)
    values = np.arange(256, dtype=np.float32)
    if scale.ndim == 2:
        levels = np.stack([np.interp(values, [0.0, median, top], [0.0, LANDMARK_LEVEL, 255.0], right=255.0)
                           for median, top in scale.T], axis=1)
    else:
        levels = values[:, None] * (255.0 / scale)
    table = np.clip(levels, 0, 255).astype(np.uint8)  # (256, channels)
    return cv2.LUT(image, table.reshape(256, 1, -1))


def channel_stats(table: pd.DataFrame, max_slices: int = 400, seed: int = 0,
                  scales: dict[str, np.ndarray] | None = None,
                  cache: SliceCache | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation (in 0..1 units) over a random sample of slices
    (after :func:`rescale` when ``scales`` are given)."""
    sample = table.sample(n=min(max_slices, len(table)), random_state=seed)
    images = _images(sample["image_path"], cache)
    if scales is not None:
        images = [rescale(im, scales[pt]) for im, pt in zip(images, sample["patient"])]
    pixels = np.stack(images).reshape(-1, 3).astype(np.float64) / 255
    return tuple(pixels.mean(0).round(5).tolist()), tuple(np.maximum(pixels.std(0), 1e-3).round(5).tolist())


def neighbour_positions(n_slices: int, context: int) -> np.ndarray:
    """(n_slices, 2 * context + 1): for each position in a volume, the positions ``-context .. +context`` around
    it (itself in the middle column), the first or last slice repeated past the volume's ends."""
    return np.clip(np.arange(n_slices)[:, None] + np.arange(-context, context + 1), 0, max(n_slices - 1, 0))


def neighbour_rows(table: pd.DataFrame, context: int) -> np.ndarray:
    """(N, 2 * context + 1) row positions: for each slice of ``table``, :func:`neighbour_positions` among the
    slices of its patient in slice order, whatever the table's row order."""
    rows = np.zeros((len(table), 2 * context + 1), np.int64)
    for _, group in table.reset_index(drop=True).groupby("patient", sort=False):
        order = group.index.to_numpy()[np.argsort(group["slice"].to_numpy(), kind="stable")]
        rows[order] = order[neighbour_positions(len(order), context)]
    return rows


def stack_neighbours(images: list[np.ndarray], context: int) -> list[np.ndarray]:
    """One volume's slices (in slice order, each (H, W, C)) as (H, W, C * (2 * context + 1)) inputs: each slice
    with its :func:`neighbour_positions`, as the training data stacks them."""
    if context == 0:
        return images
    return [np.concatenate([images[j] for j in row], axis=2) for row in neighbour_positions(len(images), context)]


class SliceDataset(Dataset):
    """(image, mask) pairs from a slice table: image (3, H, W) float, mask (1, H, W) float in {0, 1}.

    With ``context`` > 0 the image is (3 * (2 * context + 1), H, W): the slice with its neighbours in the
    volume (:func:`neighbour_rows`), so the 2-D model sees some of the third dimension (2.5-D); the mask is
    the middle slice's.
    With ``scales`` (from :func:`volume_scales`) each slice is first rescaled by its volume's bright level.
    With ``tumour_mix`` > 0 (training, single slices) that share of slices first receives the tumour of another
    tumour slice of the table (:class:`helpers.tumour_mix.TumourMix`, seeded by ``seed``).
    With ``native_masks`` the transform touches the image only and the mask keeps the slice's own resolution,
    so scores are computed at 256x256 whatever size the model runs at. With ``cache`` slices come from RAM.
    """

    def __init__(self, table: pd.DataFrame, transform: Callable[..., dict] | None = None,
                 native_masks: bool = False, scales: dict[str, np.ndarray] | None = None,
                 cache: SliceCache | None = None, context: int = 0, tumour_mix: float = 0.0, seed: int = 0) -> None:
        self.images = table["image_path"].tolist()
        self.neighbours = neighbour_rows(table, context) if context else None
        self.masks = table["mask_path"].tolist()
        self.scales = None if scales is None else [scales[p] for p in table["patient"]]
        self.transform = transform
        self.native_masks = native_masks
        self.cache = cache
        self.mix = None
        if tumour_mix > 0:
            if context:
                raise ValueError("tumour_mix works on single slices; it cannot be combined with context > 0")
            donors = np.flatnonzero(table["tumour_pixels"].to_numpy() > 0).tolist()
            self.mix = TumourMix(self._pair, donors, tumour_mix, seed)

    def __len__(self) -> int:
        return len(self.images)

    def _image(self, i: int) -> np.ndarray:
        image = self.cache.image(self.images[i]) if self.cache is not None else read_image(self.images[i])
        return rescale(image, self.scales[i]) if self.scales is not None else image

    def _mask(self, i: int) -> np.ndarray:
        return self.cache.mask(self.masks[i]) if self.cache is not None else read_mask(self.masks[i])

    def _pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self._image(i), self._mask(i)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.neighbours is None:
            image = self._image(i)
        else:
            image = np.concatenate([self._image(j) for j in self.neighbours[i]], axis=2)
        mask = self._mask(i)
        if self.mix is not None:
            image, mask = self.mix(image, mask)
        if self.transform is not None and self.native_masks:
            image = self.transform(image=image)["image"]
        elif self.transform is not None:
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()
        mask = torch.from_numpy(np.array(mask, np.float32))[None]  # a copy: cached masks are read-only
        return image, mask
