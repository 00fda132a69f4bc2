"""The fast path: slices decoded once into RAM, counted rather than sorted pixels, holes filled inside each
mask's box, gradient accumulation, and the speed benchmark's figures."""
import json
from unittest import mock

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage
from torch.utils.flop_counter import FlopCounterMode

from helpers import bench, data
from helpers.checkpoint import build_model
from helpers.cli import main
from helpers.config import Config
from helpers.data import (BRAIN_LEVEL, SliceCache, SliceDataset, counts_quantile, load_dataset, rescale,
                          volume_level, volume_scales)
from helpers.inference import fill_holes
from helpers.transforms import eval_transform


def test_cache_decodes_each_slice_once_and_serves_the_same_tensors(synthetic_dir):
    table = load_dataset(synthetic_dir)
    with mock.patch.object(data, "read_image", wraps=data.read_image) as reads:
        cache = SliceCache(table, progress=False)
        assert reads.call_count == len(table)
        volume_scales(table, cache=cache)
        assert reads.call_count == len(table)  # statistics come from RAM too
    assert cache.nbytes == len(table) * 256 * 256 * 4
    cfg = Config(image_size=32, mean=(0.1,) * 3, std=(0.2,) * 3)
    scales = volume_scales(table)
    cached = SliceDataset(table, eval_transform(cfg), scales=scales, cache=cache)
    disk = SliceDataset(table, eval_transform(cfg), scales=scales)
    for i in (0, 5, len(table) - 1):
        assert all(torch.equal(a, b) for a, b in zip(cached[i], disk[i]))
    with pytest.raises(ValueError, match="read-only"):
        cache.image(table["image_path"][0])[0, 0, 0] = 1  # shared by every epoch: nothing may edit it
    other = SliceCache(table.iloc[:3], progress=False)
    assert np.array_equal(other.image(table["image_path"][7]), data.read_image(table["image_path"][7]))  # from disk


def test_rescale_lookup_table_matches_the_arithmetic():
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    scale = np.array([180.3, 97.1, 255.9], np.float32)
    expected = np.clip(image.astype(np.float32) * (255.0 / scale), 0, 255).astype(np.uint8)
    assert np.array_equal(rescale(image, scale), expected)


def test_counted_quantiles_equal_numpys_sorted_ones():
    rng = np.random.default_rng(0)
    for _ in range(500):
        values = rng.integers(0, int(rng.integers(1, 300)), int(rng.integers(1, 60)))
        for q in (0.0, 0.5, 0.99, 0.995, 1.0, rng.random()):
            assert counts_quantile(np.bincount(values), q) == pytest.approx(np.percentile(values, 100 * q), abs=1e-9)


def _reference_level(images: list[np.ndarray], method: str) -> np.ndarray:
    """volume_level as np.percentile and np.median compute it on the pixels themselves."""
    pixels = np.concatenate([im.reshape(-1, 3) for im in images])
    total = pixels.sum(1, dtype=np.int32)
    scaled = np.clip(total * (255.0 / np.percentile(total, 99.5)), 0, 255).astype(np.uint8)
    otsu, _ = cv2.threshold(scaled.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    medians = np.median(pixels[scaled > otsu], axis=0)
    if method == "brain":
        return np.maximum(medians * 255.0 / BRAIN_LEVEL, 1.0).astype(np.float32)
    levels = np.maximum([np.percentile(c[c > 0], 99) for c in pixels.T], 1.0)
    if method == "landmarks":
        return np.stack([np.clip(medians, 0.5, levels - 0.5), levels]).astype(np.float32)
    return levels.astype(np.float32)


@pytest.mark.parametrize("method", ["volume", "brain", "landmarks"])
def test_volume_levels_from_pixel_counts_equal_the_sorted_pixels(method, real_sample_or_synthetic):
    table = load_dataset(real_sample_or_synthetic)
    for _, rows in list(table.groupby("patient"))[:4]:
        images = [data.read_image(path) for path in rows["image_path"]]
        assert np.array_equal(volume_level(images, method), _reference_level(images, method))


def test_holes_filled_inside_the_box_equal_the_whole_slice_search():
    rng = np.random.default_rng(0)
    for k in range(600):
        mask = rng.random(tuple(rng.integers(1, 30, 2))) < rng.random()
        if k % 2:  # away from the image border, as a tumour is
            mask = np.pad(mask, [tuple(rng.integers(0, 8, 2)), tuple(rng.integers(0, 8, 2))])
        filled = fill_holes([mask])[0]
        assert filled.dtype == bool and np.array_equal(filled, ndimage.binary_fill_holes(mask))
    assert not fill_holes([np.zeros((8, 8), bool)])[0].any()


def test_accumulate_must_divide_the_batch():
    with pytest.raises(ValueError, match="accumulate must be a positive divisor"):
        Config(batch_size=16, accumulate=3)


def test_flop_count_covers_forward_and_backward():
    cfg = Config(image_size=32, features=(4, 8, 16, 32), batch_size=2)
    model = build_model(cfg)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, 32, 32))
    forward = counter.get_total_flops()
    assert 2.5 * forward < bench.train_flops_per_image(cfg) <= 3 * forward  # backward is about twice the forward


def test_bench_writes_every_figure(synthetic_dir, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--data-dir", str(synthetic_dir), "--image-size", "32", "--features", "4,8,16,32",
                 "--batch-size", "8", "--steps", "2", "--no-seed-unet", "--ensemble", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    for key in ("peak_gflops", "model_gflop_per_image", "model_step_images_per_s", "end_to_end_images_per_s",
                "end_to_end_over_model_step", "fraction_of_peak", "seed_style_images_per_s",
                "speedup_over_seed_style"):
        assert isinstance(result[key], float) and result[key] > 0, key
    assert result["end_to_end_over_model_step"] == pytest.approx(
        result["model_step_images_per_s"] / result["end_to_end_images_per_s"])
    assert result["fraction_of_peak"] == pytest.approx(
        result["model_gflop_per_image"] * result["model_step_images_per_s"] / result["peak_gflops"])
    assert result["device"] and result["config"]["image_size"] == 32 and result["config"]["batch_size"] == 8
    assert result["config"]["ensemble"] == 2  # the pair's step, its members in threads of their own
