import dataclasses
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from helpers import train as training
from helpers.checkpoint import build_model, load_checkpoint
from helpers.config import Config
from helpers.data import load_dataset
from helpers.inference import evaluate, make_eval_loader, score_patients
from helpers.losses import build_loss
from helpers.synthetic import write_synthetic_dataset
from helpers.train import ema_decay, make_average, train_run

from conftest import REPO, interrupt_training_at


def test_learns_synthetic_tumours_and_generalises_to_unseen_patients(tmp_path):
    table = load_dataset(write_synthetic_dataset(tmp_path / "train", n_patients=10, n_slices=24, seed=0))
    result = train_run(Config(run_dir=str(tmp_path / "run"), device="cpu"), table, progress=False)
    # Patients from another seed: never trained on, never used to pick the best epoch.
    unseen = load_dataset(write_synthetic_dataset(tmp_path / "test", n_patients=4, n_slices=24, seed=99))
    dice = score_patients(result.model, unseen, result.cfg)
    assert len(dice) == 4
    assert dice.mean() >= 0.8, dice

    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.json", "history.csv", "split.csv", "last.pt", "best.pt"}
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == list(range(1, result.cfg.epochs + 1))
    assert {"train_loss", "val_loss", "val_dice"} <= set(history.columns)
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]
    saved = json.loads((run / "config.json").read_text())
    assert saved["image_size"] == result.cfg.image_size and saved["mean"] is not None
    split = pd.read_csv(run / "split.csv")
    assert split["patient"].is_unique and set(split["split"]) == {"train", "val"}
    model, cfg, info = load_checkpoint(run / "best.pt")
    assert info["epoch"] == result.best_epoch and cfg == result.cfg
    assert score_patients(model, unseen, cfg).mean() == pytest.approx(dice.mean())
    # The validation Dice stored in best.pt is the one `evaluate` reports for it (TTA and clean-up included).
    val_table = table[table["patient"].isin(split.loc[split["split"] == "val", "patient"])].reset_index(drop=True)
    assert info["val_dice"] == pytest.approx(score_patients(model, val_table, cfg).mean(), abs=1e-6)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "helpers", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, synthetic_dir):
    """A 2-epoch CLI run at 32px: the run folder that the CLI tests read."""
    out = tmp_path_factory.mktemp("cli") / "run"
    proc = _cli("train", "--data-dir", str(synthetic_dir), "--out", str(out), "--epochs", "2",
                "--image-size", "32", "--features", "4,8,16,32", "--batch-size", "8", "--lr", "0.003",
                "--seed", "1", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return out


def test_cli_train_writes_the_run_folder(tiny_run):
    assert len(pd.read_csv(tiny_run / "history.csv")) == 2
    cfg = Config.load(tiny_run / "config.json")
    assert (cfg.image_size, cfg.features, cfg.batch_size, cfg.lr, cfg.seed) == (32, (4, 8, 16, 32), 8, 0.003, 1)
    assert (tiny_run / "best.pt").exists() and (tiny_run / "last.pt").exists()


def test_cli_evaluate_writes_the_report(tiny_run, synthetic_dir, tmp_path):
    report = tmp_path / "out" / "report.json"
    proc = _cli("evaluate", "--checkpoint", str(tiny_run / "best.pt"), "--data-dir", str(synthetic_dir),
                "--report", str(report))
    assert proc.returncode == 0, proc.stderr
    scores = json.loads(report.read_text())
    assert {"mean_patient_dice", "median_patient_dice", "per_patient", "tumour_slice_dice", "iou", "precision",
            "recall", "n_patients", "n_slices"} <= set(scores)
    table = load_dataset(synthetic_dir)
    assert scores["n_patients"] == 6 and scores["n_slices"] == len(table)
    assert sorted(scores["per_patient"]) == sorted(table["patient"].unique())
    assert all(0.0 <= v <= 1.0 for v in scores["per_patient"].values())


def test_scores_are_counted_at_the_original_resolution(synthetic_dir):
    from helpers.checkpoint import build_model
    from helpers.inference import make_eval_loader, slice_counts

    table = load_dataset(synthetic_dir).head(10)
    cfg = Config(image_size=32, features=(4, 8, 16, 32), batch_size=4, workers=0, device="cpu",
                 mean=(0.1,) * 3, std=(0.2,) * 3)
    _, counts = slice_counts(build_model(cfg), make_eval_loader(table, cfg), cfg)
    assert counts[:, 2].tolist() == table["tumour_pixels"].tolist()  # true pixels at 256x256, not 32x32


def test_time_budget_and_patience_stop_cleanly(tmp_path, synthetic_dir):
    table = load_dataset(synthetic_dir)
    small = dict(image_size=32, features=(4, 8, 16, 32), device="cpu", epochs=50)
    result = train_run(Config(run_dir=str(tmp_path / "budget"), time_budget=0.0, **small), table, progress=False)
    assert len(result.history) == 1 and (tmp_path / "budget" / "best.pt").exists()
    patience = Config(run_dir=str(tmp_path / "patience"), patience=2, lr=0.0, schedule="constant", **small)
    result = train_run(patience, table, progress=False)
    assert len(result.history) == 3  # lr 0 never improves after epoch 1: epochs 2 and 3 without gain


def test_cli_trains_on_the_real_sample(tmp_path, real_sample):
    proc = _cli("train", "--data-dir", str(real_sample), "--out", str(tmp_path / "real"), "--epochs", "1",
                "--image-size", "32", "--features", "4,8,16,32", "--quiet")
    assert proc.returncode == 0, proc.stderr
    split = pd.read_csv(tmp_path / "real" / "split.csv")
    assert len(split) == 15 and (split["split"] == "val").sum() == 3


def test_cli_bad_data_dir_is_one_clear_line(tmp_path):
    proc = _cli("train", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"error: {tmp_path}: data_dir has no kaggle_3m slices" in proc.stderr


def test_val_fraction_zero_trains_on_every_patient_and_keeps_the_last_epoch(tmp_path, synthetic_dir):
    table = load_dataset(synthetic_dir)
    cfg = Config(run_dir=str(tmp_path / "all"), val_fraction=0.0, image_size=32, features=(4, 8, 16, 32),
                 device="cpu", epochs=3)
    result = train_run(cfg, table, progress=False)
    split = pd.read_csv(tmp_path / "all" / "split.csv")
    assert set(split["split"]) == {"train"} and len(split) == table["patient"].nunique()
    assert result.val_table.empty and result.best_epoch == 3
    assert result.history["val_dice"].isna().all()
    _, _, info = load_checkpoint(tmp_path / "all" / "best.pt")
    assert info["epoch"] == 3
    with pytest.raises(ValueError, match="need validation patients"):
        Config(val_fraction=0.0, patience=3)


def test_make_average_is_a_moving_average_of_weights_and_batchnorm_statistics():
    assert make_average(Config(ema=0.0), build_model(Config(features=(4, 8, 16, 32)))) is None
    cfg = Config(ema=0.9, features=(4, 8, 16, 32))
    model = build_model(cfg)
    average = make_average(cfg, model)
    state = model.state_dict()
    floats = [k for k, v in state.items() if v.is_floating_point()]
    with torch.no_grad():
        for value in 0.0, 1.0, 1.0:
            for k in floats:
                state[k].fill_(value)
            average.update_parameters(model)
    averaged = average.module.state_dict()
    # The first update copies (0); the next ones decay by min(0.9, (1 + n) / (10 + n)) after n updates:
    # 2/11 * 0 + 9/11 * 1, then 3/12 * 9/11 + 9/12 * 1.
    expected = 3 / 12 * 9 / 11 + 9 / 12
    assert "downs.0.1.running_mean" in floats
    for k in floats:
        assert torch.allclose(averaged[k], torch.full_like(averaged[k], expected)), k
    assert ema_decay(0.99, 0) == pytest.approx(0.1) and ema_decay(0.99, 10_000) == 0.99
    with pytest.raises(ValueError, match="ema must be in"):
        Config(ema=1.0)
    saved = Config().to_dict()
    del saved["ema"]  # a run from before the knob: it trained without an average, and resumes so
    assert Config.from_dict(saved).ema == 0.0 and Config().ema == 0.99


def test_ema_run_validates_and_saves_the_average_and_resume_continues_it(tmp_path, synthetic_dir, monkeypatch):
    table = load_dataset(synthetic_dir)
    cfg = Config(run_dir=str(tmp_path / "ema"), data_dir=str(synthetic_dir), ema=0.9, image_size=32,
                 features=(4, 8, 16, 32), batch_size=8, device="cpu", workers=0, epochs=3)
    interrupt_training_at(monkeypatch, 9)  # in epoch 2 (7 steps per epoch)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, table, progress=False)
    monkeypatch.undo()
    result = training.resume_run(tmp_path / "ema", progress=False)
    assert result.history["epoch"].tolist() == [1, 2, 3] and result.best_epoch == 3  # select_after: epoch 3 only

    last = torch.load(tmp_path / "ema" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "ema" / "best.pt", weights_only=True)
    # One average over every step of the run, interrupted or not; the trained weights are kept apart, to resume.
    assert last["resume"]["n_averaged"] == last["resume"]["steps"] == 3 * (len(result.train_table) // 8)
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    assert any(not torch.equal(last["model"][k], last["resume"]["trained"][k]) for k in last["model"])
    # The saved model is the one that was validated (its validation loss, not only its Dice, is the logged one).
    model, saved, _ = load_checkpoint(tmp_path / "ema" / "best.pt")
    plain = dataclasses.replace(saved, min_volume_share=0.0)
    val = result.val_table
    loss, _ = evaluate(model, make_eval_loader(val, plain), val["patient"].tolist(), plain, build_loss(plain))
    # The reloaded model's loss differs from the logged one by float rounding (0.8e-5 to 1.1e-5 relative, seen here
    # and in CI); the trained weights' loss, by 1.9e-4 (checked below, so the tolerance still tells them apart).
    assert loss == pytest.approx(result.history["val_loss"].iloc[-1], rel=5e-5)
    model.load_state_dict(last["resume"]["trained"])
    trained_loss, _ = evaluate(model, make_eval_loader(val, plain), val["patient"].tolist(), plain, build_loss(plain))
    assert trained_loss != pytest.approx(result.history["val_loss"].iloc[-1], rel=1e-4)


def test_training_on_crops_learns_and_validates_whole_slices(tmp_path):
    table = load_dataset(write_synthetic_dataset(tmp_path / "train", n_patients=10, n_slices=24, seed=0))
    cfg = Config(run_dir=str(tmp_path / "run"), device="cpu", image_size=64, crop=32)
    result = train_run(cfg, table, progress=False)
    assert result.cfg.crop == 32 and load_checkpoint(tmp_path / "run" / "best.pt")[1].crop == 32
    unseen = load_dataset(write_synthetic_dataset(tmp_path / "test", n_patients=4, n_slices=24, seed=99))
    dice = score_patients(result.model, unseen, result.cfg)  # whole 64 px slices, scored at 256
    assert dice.mean() >= 0.7, dice
