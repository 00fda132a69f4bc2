"""The training recipe's pieces: schedule, tumour-aware sampling, post-processing, threshold choice."""
import numpy as np
import pandas as pd
import pytest

from helpers.checkpoint import build_model
from helpers.config import Config
from helpers.data import load_dataset
from helpers.inference import binarize, choose_threshold
from helpers.train import LearningRate, make_train_loader


def test_cosine_schedule_warms_up_then_decays_to_zero():
    schedule = LearningRate(Config(lr=1.0, schedule="cosine", warmup=0.1), total_steps=100)
    rates = []
    for _ in range(101):
        rates.append(schedule())
        schedule.step_count += 1
    assert rates[0] == pytest.approx(0.1) and max(rates) == pytest.approx(1.0, abs=0.02)
    assert np.argmax(rates) == 10 and rates[-1] == pytest.approx(0.0, abs=1e-9)
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    constant = LearningRate(Config(lr=0.5), total_steps=10)
    assert constant() == 0.5


def test_schedule_follows_the_time_budget():
    schedule = LearningRate(Config(lr=1.0, schedule="cosine", warmup=0.0, time_budget=10.0), total_steps=10**6)
    schedule.start -= 10.0  # the whole budget is spent
    assert schedule.progress() == 1.0 and schedule() == pytest.approx(0.0, abs=1e-9)


def test_tumour_share_draws_tumour_slices_at_that_share(synthetic_dir):
    table = load_dataset(synthetic_dir)
    cfg = Config(image_size=32, batch_size=8, workers=0, mean=(0.1,) * 3, std=(0.2,) * 3, tumour_share=0.5)
    loader = make_train_loader(cfg, table)
    drawn = [int(i) for i in loader.sampler]
    share = table["has_tumour"].to_numpy()[drawn].mean()
    assert table["has_tumour"].mean() < 0.4 and 0.4 < share < 0.6


def test_binarize_drops_small_blobs_only():
    probs = np.zeros((64, 64), np.float32)
    probs[5:25, 5:25] = 0.9  # 400 px
    probs[50:53, 50:53] = 0.8  # 9 px
    assert binarize(probs, 0.5).sum() == 409
    kept = binarize(probs, 0.5, min_component=20)
    assert kept.sum() == 400 and kept[10, 10] and not kept[51, 51]


def test_threshold_curve_covers_the_candidates(synthetic_dir):
    table = load_dataset(synthetic_dir).head(12)
    cfg = Config(image_size=32, features=(4, 8, 16, 32), batch_size=4, workers=0, device="cpu",
                 mean=(0.1,) * 3, std=(0.2,) * 3, tta=True)
    curve = choose_threshold(build_model(cfg), table, cfg, candidates=(0.3, 0.5, 0.7))
    assert sorted(curve.index) == [0.3, 0.5, 0.7] and curve.is_monotonic_decreasing
    assert ((curve >= 0) & (curve <= 1)).all()


def test_bad_recipe_values_are_rejected():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        Config(optimizer="sgd")
    with pytest.raises(ValueError, match="tumour_share"):
        Config(tumour_share=1.5)
