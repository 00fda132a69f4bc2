"""Trains a tiny U-Net with helpers.train and saves this process's final weights as RUN/weights_rank<R>.pt.

Run by tests/test_distributed.py twice on the same tiles: as one plain process that splits each batch of 8 into
2 micro-batches, and under ``torchrun --nproc_per_node=2`` (gloo on CPU), where each process takes 4 of the 8.
Usage: python tests/ddp_worker.py DATA_DIR RUN_DIR ACCUMULATE
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers import distributed  # noqa: E402
from helpers.config import Config  # noqa: E402
from helpers.data import load_dataset  # noqa: E402
from helpers.train import train_run  # noqa: E402


def main() -> None:
    data_dir, run_dir, accumulate = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # fp32, no augmentation, BCE (a mean over pixels: the mean of the halves' gradients is the batch's gradient)
    # and a constant rate, so both runs compute the same updates up to floating-point summation order.
    cfg = Config(data_dir=data_dir, run_dir=run_dir, image_size=32, features=(4, 8, 16, 32), batch_size=8,
                 accumulate=accumulate, epochs=2, lr=3e-3, loss="bce", schedule="constant", augment="off",
                 amp="off", device="cpu", workers=0, seed=0)
    procs, cfg = distributed.setup(cfg)
    final = {}
    train_run(cfg, load_dataset(data_dir), progress=False,
              on_epoch=lambda epoch, model: final.update(model.state_dict()))
    torch.save({k: v.detach().clone() for k, v in final.items()}, Path(run_dir) / f"weights_rank{procs.rank}.pt")
    distributed.barrier(procs)  # as the CLI does: no process leaves while another still communicates
    distributed.teardown()


if __name__ == "__main__":
    main()
