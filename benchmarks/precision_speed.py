"""Training-step speed of the U-Net in fp32 / bf16 and NCHW / channels-last, measured side by side in one run.

Tensors are already in memory (no loader), so this is the pure model step: forward, BCE + Dice, backward,
AdamW. Prints images/s per setting and the ratio to plain fp32.

    python benchmarks/precision_speed.py                       # one 128 px U-Net of widths 16..128
    python benchmarks/precision_speed.py --features 8,16,32,64 --ensemble 2   # the CPU defaults with real data
    python benchmarks/precision_speed.py --size 256 --features 64,128,256,512 --device cuda
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from helpers.bench import step_rate  # noqa: E402
from helpers.config import Config  # noqa: E402
from helpers.precision import amp_dtype  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--features", default="16,32,64,128")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--ensemble", type=int, default=1, help="U-Nets trained side by side per step")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    base = Config(image_size=args.size, features=tuple(int(f) for f in args.features.split(",")),
                  batch_size=args.batch_size, ensemble=args.ensemble, lr=1e-3, device=args.device)
    half = "bf16" if amp_dtype(Config(device=args.device, amp="auto")) in (None, torch.bfloat16) else "fp16"
    reference = None
    print(f"{args.size}px, widths {base.features} x {base.ensemble}, batch {args.batch_size}, {base.torch_device()}")
    for amp in ("off", half):
        for channels_last in (False, True):
            cfg = Config(**{**base.to_dict(), "amp": amp, "channels_last": channels_last})
            rate = step_rate(cfg, args.steps)
            reference = reference or rate
            print(f"amp={amp:4s} channels_last={channels_last!s:5s} {rate:7.1f} images/s  {rate / reference:4.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
