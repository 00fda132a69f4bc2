import re

import numpy as np
import pandas as pd

from helpers.data import read_image, read_mask
from helpers.synthetic import write_synthetic_dataset


def test_writes_the_exact_kaggle_3m_layout(synthetic_dir):
    folders = sorted(p for p in synthetic_dir.iterdir() if p.is_dir())
    assert len(folders) == 6
    for folder in folders:
        assert re.fullmatch(r"TCGA_[A-Z]{2}_\d{4}_\d{8}", folder.name)
        names = {f.name for f in folder.iterdir()}
        assert names == {f"{folder.name}_{n}.tif" for n in range(1, 13)} | {
            f"{folder.name}_{n}_mask.tif" for n in range(1, 13)}
    csv = pd.read_csv(synthetic_dir / "data.csv")
    assert list(csv["Patient"]) == ["_".join(f.name.split("_")[:3]) for f in folders]


def test_tiles_are_256_uint8_with_binary_masks_and_a_flair_bright_tumour(synthetic_dir):
    folder = sorted(p for p in synthetic_dir.iterdir() if p.is_dir())[0]
    positives = []
    for n in range(1, 13):
        image = read_image(folder / f"{folder.name}_{n}.tif")
        raw_mask = __import__("cv2").imread(str(folder / f"{folder.name}_{n}_mask.tif"), 0)
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8
        assert raw_mask.shape == (256, 256) and set(np.unique(raw_mask)) <= {0, 255}
        mask = read_mask(folder / f"{folder.name}_{n}_mask.tif").astype(bool)
        if mask.any():
            positives.append(n)
            ring = __import__("cv2").dilate(mask.astype(np.uint8), np.ones((15, 15), np.uint8)).astype(bool) & ~mask
            # FLAIR (channel 1) is bright in the tumour, brighter than in the other channels there.
            assert image[..., 1][mask].mean() > image[..., 1][ring].mean() + 20
            assert image[..., 1][mask].mean() > image[..., 0][mask].mean()
    # One tumour blob: a run of consecutive slices.
    assert positives and positives == list(range(positives[0], positives[-1] + 1))


def test_about_a_third_of_slices_have_tumour(tmp_path):
    root = write_synthetic_dataset(tmp_path, n_patients=5, n_slices=24, seed=3)
    flags = [read_mask(m).any() for m in sorted(root.glob("*/*_mask.tif"))]
    assert 0.2 <= np.mean(flags) <= 0.45


def test_same_parameters_reuse_the_tree(tmp_path):
    first = write_synthetic_dataset(tmp_path, n_patients=2, n_slices=3, seed=0)
    stamp = next(first.glob("*/*_1.tif")).stat().st_mtime_ns
    again = write_synthetic_dataset(tmp_path, n_patients=2, n_slices=3, seed=0)
    assert again == first and next(again.glob("*/*_1.tif")).stat().st_mtime_ns == stamp
    write_synthetic_dataset(tmp_path, n_patients=3, n_slices=3, seed=0)
    assert len([p for p in first.iterdir() if p.is_dir()]) == 3
