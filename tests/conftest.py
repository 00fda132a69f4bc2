"""Shared fixtures: small synthetic trees, the real sample when present, a non-interactive plot backend."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

from helpers.synthetic import write_synthetic_dataset  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REAL_SAMPLE = REPO.parent / "shared" / "data" / "lgg-sample" / "kaggle_3m"


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic kaggle_3m tree: 6 patients x 12 slices."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic"), n_patients=6, n_slices=12, seed=1)


@pytest.fixture()
def real_sample() -> Path:
    if not (REAL_SAMPLE / "data.csv").exists():
        pytest.skip("real LGG sample not present (../shared/data/lgg-sample)")
    return REAL_SAMPLE


@pytest.fixture()
def real_sample_or_synthetic(tmp_path: Path) -> Path:
    """The real sample when present, else a synthetic tree of the same size."""
    if (REAL_SAMPLE / "data.csv").exists():
        return REAL_SAMPLE
    return write_synthetic_dataset(tmp_path, n_patients=15, n_slices=4, seed=2)


def interrupt_training_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Make ``helpers.train.train_step`` raise KeyboardInterrupt at its ``call``-th call, as Ctrl-C would in the
    middle of an epoch; ``monkeypatch.undo()`` gives the real step back."""
    from helpers import train

    real, calls = train.train_step, {"n": 0}

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(train, "train_step", interrupted)
