"""The training recipe's pieces: schedule, tumour-aware sampling, post-processing, threshold choice."""
import numpy as np
import pandas as pd
import pytest
import torch

from helpers.checkpoint import build_model
from helpers.config import Config
from helpers.data import load_dataset
from helpers.inference import (PatientBatches, binarize, choose_threshold, clean_volume, make_eval_loader, model_logits,
                               slice_counts)
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
    constant = LearningRate(Config(lr=0.5, schedule="constant"), total_steps=10)
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


def test_clean_volume_keeps_the_main_lesion_across_slices():
    probs = np.zeros((6, 32, 32), np.float32)
    probs[1:5, 8:20, 8:20] = 0.9  # one lesion through four slices: 576 voxels
    probs[2, 28:31, 28:31] = 0.9  # a 9-voxel false alarm on one slice
    probs[4, 0:8, 24:32] = 0.9  # a 64-voxel one elsewhere
    assert clean_volume(probs, Config(min_volume_share=0.0)).sum() == 576 + 9 + 64  # clean-up off
    only_main = clean_volume(probs, Config(min_volume_share=0.2))
    assert only_main.sum() == 576 and only_main[1:5, 8:20, 8:20].all()
    assert clean_volume(probs, Config(min_volume_share=0.1)).sum() == 576 + 64
    assert clean_volume(probs, Config(min_component=20, min_volume_share=0.1)).sum() == 576 + 64
    assert clean_volume(probs, Config(min_volume_share=1.0), threshold=0.95).sum() == 0


def test_grow_threshold_takes_a_found_tumour_whole_and_nothing_else():
    probs = np.zeros((4, 32, 32), np.float32)
    probs[1:3, 8:20, 8:20] = 0.4  # a tumour, faint at its edge ...
    probs[1:3, 12:16, 12:16] = 0.8  # ... found in part (32 voxels)
    probs[0, 24:30, 0:6] = 0.4  # a faint area elsewhere, touching nothing found: 36 voxels
    plain = Config(min_volume_share=0.0, grow_threshold=0.0)
    assert clean_volume(probs, plain).sum() == 32
    grown = clean_volume(probs, Config(min_volume_share=0.0, grow_threshold=0.3))
    assert grown.sum() == 2 * 144 and grown[1:3, 8:20, 8:20].all() and not grown[0].any()
    assert clean_volume(probs, Config(min_volume_share=0.0, grow_threshold=0.45)).sum() == 32  # over the edge
    # Not a lower threshold in disguise: with nothing over the threshold, nothing grows.
    assert clean_volume(np.minimum(probs, 0.45), Config(grow_threshold=0.3)).sum() == 0
    with pytest.raises(ValueError, match="grow_threshold"):
        Config(grow_threshold=1.0)


def test_fill_holes_closes_a_ring_but_not_a_notch():
    probs = np.zeros((3, 32, 32), np.float32)
    probs[1, 4:16, 4:16] = 0.9
    probs[1, 8:12, 8:12] = 0.1  # a darker core the net left out: 16 pixels
    probs[2, 4:16, 18:30] = 0.9
    probs[2, 8:12, 22:30] = 0.1  # a notch open to the outside: not a hole
    plain = clean_volume(probs, Config(fill_holes=False))
    filled = clean_volume(probs, Config())
    assert filled.sum() == plain.sum() + 16 and filled[1, 4:16, 4:16].all()
    assert np.array_equal(filled[2], plain[2]) and not filled[0].any()
    # Configs saved before the knob existed were scored without it, and load that way.
    assert not Config.from_dict({}).fill_holes and Config().fill_holes


def test_evaluation_batches_never_mix_patients():
    patients = ["a"] * 5 + ["b"] * 2 + ["c"] * 9
    sampler = PatientBatches(patients, batch_size=4)
    assert [len(b) for b in sampler] == [4, 1, 2, 4, 4, 1]
    assert sum(sampler.batches, []) == list(range(16))
    assert all(len({patients[i] for i in b}) == 1 for b in sampler)
    with pytest.raises(ValueError, match="patient a are not consecutive"):
        PatientBatches(["a", "b", "a"], batch_size=4)


def test_cleaning_is_applied_per_patient_when_scoring(synthetic_dir):
    table = load_dataset(synthetic_dir)
    table = table[table["patient"].isin(table["patient"].unique()[:2])]
    cfg = Config(image_size=32, features=(4, 8, 16, 32), batch_size=5, workers=0, device="cpu",
                 mean=(0.1,) * 3, std=(0.2,) * 3, threshold=0.3)
    model = build_model(cfg)
    _, raw = slice_counts(model, make_eval_loader(table, cfg), cfg)
    _, cleaned = slice_counts(model, make_eval_loader(table, cfg), Config(**{**cfg.to_dict(), "min_volume_share": 1.0}))
    assert raw.shape == cleaned.shape == (len(table), 3)
    assert (cleaned[:, 2] == raw[:, 2]).all() and (cleaned[:, 1] <= raw[:, 1]).all()


def test_threshold_curve_covers_the_candidates(synthetic_dir):
    table = load_dataset(synthetic_dir).head(12)
    cfg = Config(image_size=32, features=(4, 8, 16, 32), batch_size=4, workers=0, device="cpu",
                 mean=(0.1,) * 3, std=(0.2,) * 3, tta=True)
    curve = choose_threshold(build_model(cfg), table, cfg, candidates=(0.3, 0.5, 0.7))
    assert sorted(curve.index) == [0.3, 0.5, 0.7] and curve.is_monotonic_decreasing
    assert ((curve >= 0) & (curve <= 1)).all()


def test_flip_tta_averages_the_probabilities_of_a_slice_and_its_mirror_image():
    torch.manual_seed(0)
    cfg = Config(image_size=32, features=(4, 8, 16, 32), device="cpu", amp="off", tta=True)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.final_conv.bias.zero_()  # logits spread far from 0, where means of logits and of probabilities differ
        model.final_conv.weight.normal_(0, 10)
        x = torch.randn(2, 3, 32, 32)
        plain, mirrored = torch.sigmoid(model(x)), torch.sigmoid(model(x.flip(-1))).flip(-1)
        averaged = torch.sigmoid(model_logits(model, x, cfg, (32, 32)))
    assert torch.allclose(averaged, (plain + mirrored) / 2, atol=1e-4)
    assert not torch.allclose(averaged, torch.sigmoid((torch.logit(plain) + torch.logit(mirrored)) / 2), atol=1e-3)


def test_bad_recipe_values_are_rejected():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        Config(optimizer="sgd")
    with pytest.raises(ValueError, match="tumour_share"):
        Config(tumour_share=1.5)
    with pytest.raises(ValueError, match="min_volume_share"):
        Config(min_volume_share=2.0)
    with pytest.raises(ValueError, match="amp must be one of"):
        Config(amp="fp8")


def test_best_checkpoint_comes_from_the_annealed_part_of_a_cosine_run(tmp_path, synthetic_dir):
    from helpers.train import train_run

    cfg = Config(run_dir=str(tmp_path / "run"), image_size=32, features=(4, 8, 16, 32), device="cpu", epochs=4,
                 schedule="cosine", select_after=0.75)
    result = train_run(cfg, load_dataset(synthetic_dir), progress=False)
    late = result.history[result.history["epoch"] >= 3]
    assert result.best_epoch in (3, 4) and result.best_val_dice == pytest.approx(late["val_dice"].max())


def test_training_reads_each_volume_level_once(tmp_path, synthetic_dir, monkeypatch):
    import helpers.data
    from helpers.train import train_run

    calls = []
    measure = helpers.data.volume_scales
    monkeypatch.setattr(helpers.data, "volume_scales",
                        lambda table, **kw: calls.append(len(table)) or measure(table, **kw))
    table = load_dataset(synthetic_dir)
    cfg = Config(run_dir=str(tmp_path / "run"), image_size=32, features=(4, 8, 16, 32), device="cpu", epochs=1,
                 intensity="volume")
    train_run(cfg, table, progress=False)
    assert calls == [len(table)]  # training and validation patients together, once
