"""Tumour mixing (CarveMix-style augmentation): the pasted region, its labels, when it is skipped, training."""
import cv2
import numpy as np
import pytest
import torch

from helpers.config import Config
from helpers.data import SliceDataset, load_dataset
from helpers.train import train_run
from helpers.tumour_mix import TumourMix, carve


def _slice(level: int, tumour_at: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A 64x64 'head' of uniform tissue at ``level`` (background 0 outside a centred square), and a tumour disc of
    radius 6 at 200 where asked."""
    image = np.zeros((64, 64, 3), np.uint8)
    image[8:56, 8:56] = level
    mask = np.zeros((64, 64), np.uint8)
    if tumour_at is not None:
        cv2.circle(mask, tumour_at, 6, 1, -1)
        image[mask > 0] = 200
    return image, mask


def test_carve_puts_the_donor_tumour_in_with_its_labels():
    image, mask = _slice(90, tumour_at=(44, 44))  # the receiving slice has its own tumour elsewhere
    donor, donor_mask = _slice(100, tumour_at=(20, 20))
    mixed, labels = carve(image, mask, donor, donor_mask, margin=4, feather=1.0)
    assert mixed.dtype == np.uint8 and labels.dtype == mask.dtype and set(np.unique(labels)) <= {0, 1}
    assert (labels[donor_mask > 0] == 1).all() and (mixed[donor_mask > 0] == 200).all()
    assert (labels[mask > 0] == 1).all()  # the receiving slice's own tumour is untouched
    assert (mixed[40:50, 40:50] == image[40:50, 40:50]).all()
    ring = cv2.dilate(donor_mask, np.ones((5, 5), np.uint8)) & ~donor_mask.astype(bool)
    assert (labels[ring > 0] == 0).all()  # the margin around the tumour is pasted, but labelled as tissue
    assert (np.abs(mixed[ring > 0].astype(int) - 100) <= 2).all()


def test_carve_skips_a_region_without_tissue():
    donor, donor_mask = _slice(100, tumour_at=(20, 20))
    background = np.zeros_like(donor)
    mixed, labels = carve(background, np.zeros((64, 64), np.uint8), donor, donor_mask, margin=4)
    assert (mixed == 0).all() and (labels == 0).all()


def test_tumour_mix_draws_reproducibly_at_its_rate():
    donors = [_slice(100, tumour_at=(20 + k, 24)) for k in range(4)]
    image, mask = _slice(90)

    def outcomes(p: float, seed: int) -> list[int]:
        mix = TumourMix(lambda i: donors[i], list(range(4)), p=p, seed=seed)
        return [int(mix(image, mask)[1].sum()) for _ in range(200)]

    assert outcomes(0.0, 0) == [0] * 200
    mixed = np.array(outcomes(0.3, 0)) > 0
    assert 0.2 < mixed.mean() < 0.4
    assert outcomes(0.3, 0) == outcomes(0.3, 0) and outcomes(0.3, 0) != outcomes(0.3, 1)
    with pytest.raises(ValueError, match="probability"):
        TumourMix(lambda i: donors[i], [0], p=1.5)


def test_dataset_mixes_tumours_of_its_own_table(synthetic_dir):
    table = load_dataset(synthetic_dir)
    plain = SliceDataset(table)
    mixing = SliceDataset(table, tumour_mix=1.0, seed=0)
    empty = np.flatnonzero(~table["has_tumour"].to_numpy())
    gained = 0
    for i in empty[:20]:
        image, mask = mixing[i]
        assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
        gained += int(mask.sum() > 0)
        assert plain[i][1].sum() == 0
    assert gained >= 10  # most empty slices received a tumour (some were skipped: no tissue there)
    with pytest.raises(ValueError, match="single slices"):
        SliceDataset(table, tumour_mix=0.5, context=1)
    for bad in ({"tumour_mix": 1.5}, {"tumour_mix": 0.3, "context": 1}):
        with pytest.raises(ValueError, match="tumour_mix"):
            Config(**bad)


def test_a_model_trained_with_tumour_mixing_learns(tmp_path, synthetic_dir):
    cfg = Config(run_dir=str(tmp_path / "run"), device="cpu", image_size=64, features=(8, 16, 32, 64), batch_size=8,
                 epochs=20, lr=3e-3, seed=3, tumour_mix=0.3)
    result = train_run(cfg, load_dataset(synthetic_dir), progress=False)
    assert result.best_val_dice > 0.5, result.history
