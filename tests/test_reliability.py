"""Interruptions, numerical faults and untrusted checkpoints lose nothing and run nothing."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers import train as training
from helpers.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from helpers.config import Config
from helpers.data import load_dataset
from helpers.model import UNet

from conftest import interrupt_training_at

REPO = Path(__file__).resolve().parents[1]
TINY = dict(image_size=32, features=(4, 8, 16, 32), batch_size=8, device="cpu", workers=0)


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    payload = _RunsCode()
    payload.marker = marker
    torch.save({"model": payload, "config": {}}, tmp_path / "evil.pt")  # a "checkpoint" that runs a command
    with pytest.raises(CheckpointError, match="refused.*posix.system"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_corrupt_foreign_and_mismatched_checkpoints_give_clear_errors(tmp_path):
    cfg = Config(features=(4, 8, 16, 32))
    save_checkpoint(tmp_path / "good.pt", UNet(features=(4, 8, 16, 32)), cfg, epoch=1)
    (tmp_path / "cut.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:200])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable checkpoint, truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(tmp_path / "foreign.pt")
    save_checkpoint(tmp_path / "other.pt", UNet(features=(8, 16, 32, 64)), cfg, epoch=1)  # weights of another width
    with pytest.raises(CheckpointError, match="other.pt: its weights do not fit"):
        load_checkpoint(tmp_path / "other.pt")
    assert not list(tmp_path.glob("*.tmp"))  # written atomically: no temporary left behind


def test_two_runs_with_one_seed_give_identical_losses(synthetic_dir, tmp_path):
    table = load_dataset(synthetic_dir)
    losses = []
    for k in range(2):
        cfg = Config(run_dir=str(tmp_path / f"run{k}"), epochs=2, seed=7, **TINY)
        losses.append(training.train_run(cfg, table, progress=False).history["train_loss"].tolist())
    assert losses[0] == losses[1]


def test_a_nan_loss_stops_with_the_step_and_keeps_the_last_good_epoch(synthetic_dir, tmp_path, monkeypatch):
    real = training.build_loss
    calls = {"n": 0}

    def poisoned(cfg):
        loss = real(cfg)

        def forward(logits, target):
            calls["n"] += torch.is_grad_enabled()  # training steps only, not validation
            value = loss(logits, target)
            poison = torch.is_grad_enabled() and calls["n"] == 9  # epoch 2 (7 steps per epoch), step 2
            return value * float("nan") if poison else value
        return forward

    monkeypatch.setattr(training, "build_loss", poisoned)
    cfg = Config(run_dir=str(tmp_path / "run"), epochs=3, **TINY)
    with pytest.raises(training.TrainingError, match=r"epoch 2/3, step 2: the loss is nan.*last.pt keeps epoch 1"):
        training.train_run(cfg, load_dataset(synthetic_dir), progress=False)
    _, _, info = load_checkpoint(tmp_path / "run" / "last.pt")
    assert info["epoch"] == 1


def test_ctrl_c_then_resume_finishes_the_same_run(synthetic_dir, tmp_path, monkeypatch):
    interrupt_training_at(monkeypatch, 10)  # in epoch 2
    cfg = Config(run_dir=str(tmp_path / "run"), data_dir=str(synthetic_dir), epochs=4, **TINY)
    with pytest.raises(KeyboardInterrupt):
        training.train_run(cfg, load_dataset(synthetic_dir), progress=False)
    monkeypatch.undo()
    result = training.resume_run(tmp_path / "run", progress=False)
    assert result.history["epoch"].tolist() == [1, 2, 3, 4]
    assert pd.read_csv(tmp_path / "run" / "history.csv")["epoch"].tolist() == [1, 2, 3, 4]
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state["epoch"] == 4 and state["resume"]["finished"]
    assert training.resume_run(tmp_path / "run", progress=False).history["epoch"].tolist() == [1, 2, 3, 4]


def _train_command(data_dir: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "helpers", "train", "--data-dir", str(data_dir), "--out", str(out), "--quiet",
            "--image-size", "32", "--features", "4,8,16,32", "--batch-size", "8", *extra]


def _kill_during_an_epoch(command: list[str], history: Path, after_epochs: int) -> None:
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if history.exists() and len(history.read_text().splitlines()) > after_epochs:
            time.sleep(0.3)  # into the next epoch
            break
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_sigkill_mid_epoch_then_resume_gives_every_epoch_once(synthetic_dir, tmp_path):
    run = tmp_path / "run"
    _kill_during_an_epoch(_train_command(synthetic_dir, run, "--epochs", "20"), run / "history.csv", after_epochs=2)
    before = torch.load(run / "last.pt", weights_only=True)["epoch"]
    assert 2 <= before < 20
    done = subprocess.run([sys.executable, "-m", "helpers", "train", "--resume", str(run), "--quiet"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming after epoch {before}" in done.stdout
    assert pd.read_csv(run / "history.csv")["epoch"].tolist() == list(range(1, 21))
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 20
