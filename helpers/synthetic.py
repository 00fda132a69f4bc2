"""Synthetic MRI tiles written in the exact ``kaggle_3m`` layout, so every other module runs unchanged.

Each synthetic patient is a stack of axial slices through an elliptical head: a bright scalp, brain tissue
with smooth texture, dark ventricles, and a 3-D tumour blob (an irregular ellipsoid) that is bright in the
FLAIR channel on a run of consecutive slices, about a third of them, as in the real data. The scalp is
bright too, so a plain intensity threshold does not solve the task: a model has to learn shape and context.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

SIZE = 256
INSTITUTION = "SY"  # a code no real TCGA institution uses, so synthetic ids never pass for real ones
# Columns of the real data.csv; synthetic patients fill only the id.
CSV_COLUMNS = ["Patient", "RNASeqCluster", "MethylationCluster", "miRNACluster", "CNCluster", "RPPACluster",
               "OncosignCluster", "COCCluster", "histological_type", "neoplasm_histologic_grade",
               "tumor_tissue_site", "laterality", "tumor_location", "gender", "age_at_initial_pathologic",
               "race", "ethnicity", "death01"]
MARKER = "synthetic.json"


def _ellipse(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((yy - cy) / max(ry, 1e-6)) ** 2 + ((xx - cx) / max(rx, 1e-6)) ** 2


def _smooth_noise(rng: np.random.Generator, sigma: float) -> np.ndarray:
    noise = cv2.GaussianBlur(rng.standard_normal((SIZE, SIZE)).astype(np.float32), (0, 0), sigma)
    return noise / (noise.std() + 1e-6)


def synthetic_patient(rng: np.random.Generator, n_slices: int) -> tuple[np.ndarray, np.ndarray]:
    """One patient's volume: images (n, 256, 256, 3) uint8 in (pre-contrast, FLAIR, post-contrast) order
    and masks (n, 256, 256) uint8 in {0, 255}."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cy, cx = SIZE / 2 + rng.uniform(-8, 8, size=2)
    head_ry, head_rx = rng.uniform(100, 112), rng.uniform(82, 96)
    # The tumour: an ellipsoid inside the brain spanning about a third of the slices.
    tz = rng.uniform(0.35, 0.65) * n_slices
    tr_z = max(1.5, n_slices * rng.uniform(0.14, 0.20))
    angle = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(0.15, 0.45)
    ty, tx = cy + offset * head_ry * np.sin(angle), cx + offset * head_rx * np.cos(angle)
    tr_y, tr_x = rng.uniform(14, 30), rng.uniform(14, 30)
    lobes, phase = int(rng.integers(2, 5)), rng.uniform(0, 2 * np.pi)
    theta = np.arctan2(yy - ty, xx - tx)
    wobble = 1.0 + 0.18 * np.sin(lobes * theta + phase)

    images = np.zeros((n_slices, SIZE, SIZE, 3), np.uint8)
    masks = np.zeros((n_slices, SIZE, SIZE), np.uint8)
    for z in range(n_slices):
        # Slices near the top and bottom of the head cut a smaller ellipse, like the real volumes.
        extent = np.sqrt(max(0.0, 1.0 - ((z + 0.5 - n_slices / 2) / (0.56 * n_slices)) ** 2))
        head = _ellipse(yy, xx, cy, cx, head_ry * extent, head_rx * extent) <= 1.0
        brain = _ellipse(yy, xx, cy, cx, head_ry * extent * 0.86, head_rx * extent * 0.86) <= 1.0
        scalp = head & ~brain
        ventricles = (_ellipse(yy, xx, cy - 6, cx - 12, 18 * extent, 6 * extent) <= 1.0) | (
            _ellipse(yy, xx, cy - 6, cx + 12, 18 * extent, 6 * extent) <= 1.0)
        tumour = np.zeros_like(brain)
        cut = 1.0 - ((z - tz) / tr_z) ** 2
        if cut > 0.05:
            scale = np.sqrt(cut)
            tumour = (_ellipse(yy, xx, ty, tx, tr_y * scale, tr_x * scale) <= wobble ** 2) & brain
        texture = 0.05 * _smooth_noise(rng, 6.0)
        pre = np.where(brain, 0.45 + texture, 0) + np.where(scalp, 0.80, 0) - np.where(ventricles & brain, 0.25, 0)
        flair = np.where(brain, 0.38 + texture, 0) + np.where(scalp, 0.62, 0) - np.where(ventricles & brain, 0.22, 0)
        post = np.where(brain, 0.42 + texture, 0) + np.where(scalp, 0.85, 0) - np.where(ventricles & brain, 0.2, 0)
        # FLAIR hyperintensity with a soft oedema halo; slightly dark on T1, faint enhancement after contrast.
        halo = cv2.GaussianBlur(tumour.astype(np.float32), (0, 0), 3.0)
        flair = flair + 0.34 * halo + 0.05 * tumour * _smooth_noise(rng, 2.0)
        pre = pre - 0.08 * halo
        post = post + 0.10 * halo
        stack = np.stack([pre, flair, post], axis=-1) * head[..., None]
        stack = stack + rng.normal(0, 0.02, stack.shape)
        images[z] = np.clip(cv2.GaussianBlur(stack.astype(np.float32), (3, 3), 0) * 255, 0, 255).astype(np.uint8)
        masks[z] = tumour.astype(np.uint8) * 255
    return images, masks


def write_synthetic_dataset(root: str | Path, n_patients: int = 10, n_slices: int = 24, seed: int = 0) -> Path:
    """Write ``root/kaggle_3m`` with ``n_patients`` synthetic patients and return that folder.

    Reuses an existing tree written with the same parameters (a ``synthetic.json`` marker beside it).
    """
    if n_patients < 1 or n_slices < 1:
        raise ValueError(f"need at least one patient and one slice, got {n_patients} x {n_slices}")
    root = Path(root)
    out = root / "kaggle_3m"
    params = {"n_patients": n_patients, "n_slices": n_slices, "seed": seed, "version": 1}
    marker = root / MARKER
    if marker.exists() and json.loads(marker.read_text()) == params and out.is_dir():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"TCGA_{INSTITUTION}_*"):
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        case = f"TCGA_{INSTITUTION}_{p + 1:04d}"
        folder = out / f"{case}_{20000101 + p * 7}"
        folder.mkdir()
        images, masks = synthetic_patient(rng, n_slices)
        for z in range(n_slices):
            stem = f"{folder.name}_{z + 1}"
            cv2.imwrite(str(folder / f"{stem}.tif"), images[z][..., ::-1])  # OpenCV writes BGR
            cv2.imwrite(str(folder / f"{stem}_mask.tif"), masks[z])
        rows.append({"Patient": case})
    pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(out / "data.csv", index=False)
    marker.write_text(json.dumps(params) + "\n")
    return out


def is_synthetic_table(table: pd.DataFrame) -> bool:
    """True when every slice of a table from :func:`helpers.data.load_dataset` is synthetic."""
    return len(table) > 0 and bool((table["institution"] == INSTITUTION).all())
