"""DistributedDataParallel on CPU: two gloo processes under torchrun train like one process with the same batch."""
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from helpers.checkpoint import load_checkpoint
from helpers.train import EpochSampler

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _run(command: list[str], **env: str) -> None:
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_two_processes_together_see_the_one_process_batches():
    for weights in (None, [0.1] * 10 + [1.0] * 13):
        one = list(EpochSampler(23, seed=3, weights=weights))
        ranks = [list(EpochSampler(23, seed=3, weights=weights, rank=r, world=2, batch=4)) for r in (0, 1)]
        assert len(ranks[0]) == len(ranks[1]) == 8  # two global batches of 8; the last 7 slices dropped
        for k in range(0, 8, 4):  # each process takes one contiguous half of each global batch
            assert ranks[0][k:k + 4] + ranks[1][k:k + 4] == one[2 * k:2 * k + 8]
    sampler = EpochSampler(23, seed=3)
    assert list(sampler) != list(sampler)  # a fresh order every epoch


def test_ddp_two_processes_match_one_process(synthetic_dir, tmp_path):
    worker = str(REPO / "tests" / "ddp_worker.py")
    # torchrun gives each process one thread; the one process gets one too, so that every convolution sums in
    # the same order (with 2 threads the runs drift apart by float rounding, which AdamW amplifies).
    _run([sys.executable, worker, str(synthetic_dir), str(tmp_path / "one"), "2"], OMP_NUM_THREADS="1")
    _run([*TORCHRUN, worker, str(synthetic_dir), str(tmp_path / "ddp"), "1"])  # 2 processes x 4

    rank0 = torch.load(tmp_path / "ddp" / "weights_rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ddp" / "weights_rank1.pt", weights_only=True)
    single = torch.load(tmp_path / "one" / "weights_rank0.pt", weights_only=True)
    for name in rank0:  # DDP keeps every process's weights (and BatchNorm buffers) identical
        assert torch.equal(rank0[name], rank1[name]), name

    # The same global batches of 8, each process taking the half that the one process's micro-batch takes (so
    # BatchNorm sees the same 4 slices), gradients averaged. 14 AdamW steps move the weights by about 20% of their
    # norm; the two runs agree to float rounding (measured: exactly).
    weights = [n for n, v in single.items() if v.is_floating_point() and "running" not in n]
    diff = torch.cat([(rank0[n] - single[n]).flatten() for n in weights]).norm()
    size = torch.cat([single[n].flatten() for n in weights]).norm()
    print(f"relative weight difference DDP vs one process: {diff / size:.2e}")
    assert diff / size < 1e-5

    history = pd.read_csv(tmp_path / "ddp" / "history.csv")  # written once, by the main process
    assert history["epoch"].tolist() == [1, 2]
    model, cfg, info = load_checkpoint(tmp_path / "ddp" / "best.pt")
    assert cfg.batch_size == 8 and info["epoch"] in (1, 2)


def test_torchrun_cli_trains_and_only_the_main_process_writes(synthetic_dir, tmp_path):
    _run([*TORCHRUN, "-m", "helpers", "train", "--data-dir", str(synthetic_dir), "--out", str(tmp_path / "run"),
          "--epochs", "1", "--image-size", "32", "--features", "4,8,16,32", "--batch-size", "8", "--device", "cpu",
          "--quiet"])
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "best.pt", "config.json", "history.csv", "last.pt", "split.csv"]
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 1


def test_global_batch_must_split_evenly(monkeypatch):
    from helpers import distributed
    from helpers.config import Config

    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    with pytest.raises(ValueError, match="must divide evenly over 3 processes"):
        distributed.setup(Config(batch_size=16, device="cpu"))


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    """Two processes on a one-GPU machine: a message that says what to run, not CUDA's 'invalid device ordinal'."""
    from helpers import distributed
    from helpers.config import Config

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed.torch.cuda, "device_count", lambda: 1)
    expected = r"local process 1 but this machine has 1 GPU.*--nproc_per_node=1.*--device cpu"
    with pytest.raises(ValueError, match=expected):
        distributed.setup(Config(device="cuda"))
