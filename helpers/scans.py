"""New scans on disk, with or without masks: find their slices and read them as the model's 3-channel uint8.

Input may be one slice, one patient folder (a volume) or a tree of patient folders (``kaggle_3m``). Slices are
``.tif``/``.tiff``/``.png`` files; ``<stem>_mask.*`` beside a slice is its ground truth, used for outlines and a
Dice column when present. Files this project writes (``*_pred.png``, ``*_overlay.png``, ``*_volume.*``) are not
slices, so predicting into the input folder twice does not read its own output.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from .data import DataError, find_kaggle_3m, read_mask

SUFFIXES = (".tif", ".tiff", ".png")
OWN_OUTPUTS = re.compile(r"_(mask|pred|overlay|volume)$", re.IGNORECASE)
OWN_TABLES = {"summary.csv", "slices.csv", "skipped.csv"}
NUMBER = re.compile(r"_(\d+)$")
CHANNELS = "the dataset's three channels (pre-contrast, FLAIR, post-contrast) as one RGB image"


@dataclass
class ScanSet:
    """What :func:`find_scans` found: one row per slice (patient, slice, image_path, mask_path or "", out_dir
    relative to the output folder), ordered by patient and slice number, and the files it set aside."""
    table: pd.DataFrame
    ignored: list[Path] = field(default_factory=list)


def _slice_key(path: Path) -> tuple[int, str]:
    number = NUMBER.search(path.stem)
    return (int(number[1]) if number else -1, path.name)


def _folder_slices(folder: Path, patient: str, out_dir: str) -> tuple[list[dict], list[Path]]:
    files = [f for f in folder.iterdir() if f.is_file()]
    by_stem = {f.stem: f for f in files if f.suffix.lower() in SUFFIXES}
    images = sorted((f for f in by_stem.values() if not OWN_OUTPUTS.search(f.stem)), key=_slice_key)
    ignored = [f for f in files if f.suffix.lower() not in SUFFIXES and not f.name.startswith(".")
               and not OWN_OUTPUTS.search(f.stem) and f.name not in OWN_TABLES]
    rows = []
    for k, image in enumerate(images):
        number = NUMBER.search(image.stem)
        mask = by_stem.get(image.stem + "_mask")
        rows.append({"patient": patient, "slice": int(number[1]) if number else k, "image_path": str(image),
                     "mask_path": str(mask) if mask else "", "out_dir": out_dir})
    return rows, ignored


def find_scans(path: str | Path) -> ScanSet:
    """The slices under ``path``: a slice file, a patient folder of slices, or a folder of patient folders.

    Output folders mirror the input: a slice or a patient folder writes straight into the output folder, a tree
    writes one subfolder per patient. Raises :class:`DataError` when there is nothing to predict on.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder (expected a slice, a patient folder or a "
                                "kaggle_3m folder)")
    if path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(f"{path}: not a slice (expected a {'/'.join(SUFFIXES)} file)")
        case = NUMBER.sub("", path.stem)
        mask = next((m for m in (path.with_name(path.stem + "_mask" + s) for s in SUFFIXES) if m.is_file()), None)
        number = NUMBER.search(path.stem)
        row = {"patient": case or path.stem, "slice": int(number[1]) if number else 0, "image_path": str(path),
               "mask_path": str(mask) if mask else "", "out_dir": ""}
        return ScanSet(pd.DataFrame([row]))
    rows, ignored = _folder_slices(path, path.name, "")
    if not rows:  # a tree: files beside the patient folders (data.csv, README.md) are not slices
        root, ignored = find_kaggle_3m(path) or path, []
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found, skipped = _folder_slices(folder, folder.name, folder.name)
            rows += found
            ignored += skipped
    if not rows:
        raise DataError(f"{path}: no slices found (expected {'/'.join(SUFFIXES)} slices in this folder or in "
                        "patient folders inside it)")
    if ignored:
        names = ", ".join(p.name for p in ignored[:3]) + (", ..." if len(ignored) > 3 else "")
        warnings.warn(f"{path}: ignored {len(ignored)} files that are not {'/'.join(SUFFIXES)} slices: {names}",
                      stacklevel=2)
    return ScanSet(pd.DataFrame(rows), ignored)


def read_slice(path: str | Path) -> np.ndarray:
    """A slice as (H, W, 3) RGB in the dataset's channel order, converted where that is safe.

    3-channel 8-bit is returned as is; an alpha channel that is the same everywhere is dropped; 16-bit or float
    slices are returned as float32 in their own units, for :func:`to_uint8` to scale with the rest of their
    volume. Grayscale (one modality cannot stand in for three), a varying alpha channel, negative or non-finite
    values raise :class:`DataError` naming the file.
    """
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise DataError(f"{path}: cannot be read as an image (expected {CHANNELS}, 8-bit)")
    channels = 1 if raw.ndim == 2 else raw.shape[2]
    if channels == 4:
        alpha = raw[..., 3]
        if alpha.min() != alpha.max():
            raise DataError(f"{path}: RGBA with a varying alpha channel; transparent pixels have no defined "
                            f"intensity (expected {CHANNELS})")
        raw = raw[..., :3]
    elif channels != 3:
        raise DataError(f"{path}: {channels} channel{'s' if channels > 1 else ''} ({raw.dtype}); the model needs "
                        f"{CHANNELS}, and a single modality cannot stand in for them")
    image = cv2.cvtColor(raw, cv2.COLOR_BGR2RGB)
    if image.dtype == np.uint8:
        return image
    if image.dtype.kind not in "uif" or not np.isfinite(image).all() or image.min() < 0:
        raise DataError(f"{path}: pixel values of type {raw.dtype} that are negative or not finite; expected "
                        "8-bit, or 16-bit / float intensities of 0 and above")
    return image.astype(np.float32)


def to_uint8(images: list[np.ndarray]) -> list[np.ndarray]:
    """One volume's slices as uint8: 8-bit slices as they are, 16-bit or float slices scaled together so the
    volume's brightest value maps to 255 (one linear map for the whole volume keeps slices comparable)."""
    wide = [im for im in images if im.dtype != np.uint8]
    if not wide:
        return images
    top = max(float(im.max()) for im in wide) or 1.0
    return [im if im.dtype == np.uint8 else np.clip(np.rint(im * (255.0 / top)), 0, 255).astype(np.uint8)
            for im in images]


def read_mask_any(path: str | Path) -> np.ndarray | None:
    """A ground-truth mask as (H, W) bool, or None when it cannot be read (outlines are then left out)."""
    try:
        return read_mask(path) > 0
    except DataError:
        return None
