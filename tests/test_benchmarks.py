"""benchmarks/inference_sweep.py re-scores a patient_cv.py run exactly as ``evaluate`` scored it;
benchmarks/compare_runs.py pairs two runs' held-out scores patient by patient."""
import importlib.util
import json
import re
import sys

import pytest

from helpers.checkpoint import load_checkpoint
from helpers.config import Config
from helpers.data import load_dataset
from helpers.inference import report
from helpers.train import fit

from conftest import REPO


def _run_script(monkeypatch, name: str, *args: str) -> None:
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
    module.main()


def _run_sweep(monkeypatch, *args: str) -> None:
    _run_script(monkeypatch, "inference_sweep", *args)


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory, synthetic_dir):
    """A one-fold patient_cv.py-style run folder: fold0/best.pt and the held-out report evaluate wrote."""
    table = load_dataset(synthetic_dir)
    patients = sorted(table["patient"].unique())
    side = table["patient"].isin(patients[:4])
    run = tmp_path_factory.mktemp("cv") / "run"
    cfg = Config(run_dir=str(run / "fold0"), device="cpu", image_size=32, features=(4, 8, 16, 32), batch_size=8,
                 epochs=3, seed=0, workers=0)
    fit(cfg, table[side].reset_index(drop=True), table[~side].reset_index(drop=True).iloc[:0], progress=False)
    model, cfg, _ = load_checkpoint(run / "fold0" / "best.pt")
    held = table[~side].reset_index(drop=True)
    scores = report(model, held, cfg)
    (run / "fold0" / "heldout.json").write_text(json.dumps(scores))
    return run, synthetic_dir, scores


def test_the_checkpoints_own_settings_reproduce_the_evaluate_scores(cv_run, monkeypatch, capsys):
    run, data_dir, scores = cv_run
    _, cfg, _ = load_checkpoint(run / "fold0" / "best.pt")
    _run_sweep(monkeypatch, str(run), "--data-dir", str(data_dir), "--threshold", f"{cfg.threshold},0.9",
               "--grow-threshold", str(cfg.grow_threshold), "--min-volume-share", str(cfg.min_volume_share))
    out = capsys.readouterr().out
    own = re.search(r"(\d+) held-out patients; the checkpoints' own settings: mean ([\d.]+)", out)
    assert int(own.group(1)) == scores["n_patients"] == 2
    assert float(own.group(2)) == pytest.approx(scores["mean_patient_dice"], abs=1e-4)
    same = [line for line in out.splitlines() if line.endswith(f"threshold={cfg.threshold:g}, "
                                                                f"grow_threshold={cfg.grow_threshold:g}, "
                                                                f"min_volume_share={cfg.min_volume_share:g}")]
    assert len(same) == 1 and " +0.0000 " in same[0]
    assert "threshold=0.9," in out  # every setting of the grid is listed (two here)


def test_a_folder_that_is_not_a_finished_cv_run_is_named(tmp_path, synthetic_dir, monkeypatch):
    with pytest.raises(SystemExit, match=f"{tmp_path}: no fold\\*/heldout.json"):
        _run_sweep(monkeypatch, str(tmp_path), "--data-dir", str(synthetic_dir))


def _fake_run(root, name: str, folds: list[dict[str, float]]):
    """A patient_cv.py --out folder holding only the held-out reports (per-patient Dice) of its folds."""
    for k, per_patient in enumerate(folds):
        (root / name / f"fold{k}").mkdir(parents=True)
        (root / name / f"fold{k}" / "heldout.json").write_text(json.dumps({"per_patient": per_patient}))
    return root / name


def test_compare_runs_pairs_the_held_out_scores_patient_by_patient(tmp_path, monkeypatch, capsys):
    base = _fake_run(tmp_path, "base", [{"a": 0.5, "b": 0.8}, {"c": 0.6}])
    new = _fake_run(tmp_path, "new", [{"a": 0.7, "b": 0.8}, {"c": 0.5}])
    _run_script(monkeypatch, "compare_runs", f"{base}:{new}")
    out = capsys.readouterr().out
    # differences +0.2, 0, -0.1: mean +0.0333, standard deviation 0.1528, standard error 0.0882
    assert "3 paired scores: 0.667 mean / 0.700 median against 0.633 mean / 0.600 median" in out
    assert "paired +0.0333 (standard error 0.0882), 1 up and 1 down by more than 0.005, 1 of 2 folds up" in out


def test_compare_runs_summarises_bare_runs_and_rejects_unrelated_pairs(tmp_path, monkeypatch, capsys):
    one = _fake_run(tmp_path, "one", [{"a": 0.5, "b": 0.9}])
    other = _fake_run(tmp_path, "other", [{"c": 0.7}])
    _run_script(monkeypatch, "compare_runs", str(one), str(other))
    assert "3 held-out scores: 0.700 mean / 0.700 median" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="share no scored patient"):
        _run_script(monkeypatch, "compare_runs", f"{one}:{other}")
    with pytest.raises(SystemExit, match=f"{tmp_path / 'missing'}: no fold"):
        _run_script(monkeypatch, "compare_runs", str(tmp_path / "missing"))
