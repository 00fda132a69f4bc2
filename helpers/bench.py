"""``python -m helpers bench``: how close training comes to the hardware, measured side by side in one run.

* **peak**: the machine's measured matrix-multiply rate (a large fp32 matmul on CPU; bf16 on GPU; on a CPU with
  native bf16 the bf16 rate is reported too);
* **model step**: forward, loss, backward and AdamW on a batch already in memory, and its FLOPs per image
  (PyTorch's FLOP counter over one full training step: forward and backward);
* **end to end**: the same steps fed by the real training loader from a ``kaggle_3m`` tree on disk (slices
  cached in RAM, augmentation included), and their time ratio to the pure model step;
* **seed style**: the seed notebook's loop as a baseline: PIL decodes every slice on every step, fp32, no cache.

Step rates are medians over timed steps after warm-up; compare ratios from one run, since a shared machine is noisy.
"""
from __future__ import annotations

import dataclasses
import itertools
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from .checkpoint import build_model
from .config import Config
from .data import SliceCache, load_dataset
from .losses import build_loss
from .precision import amp_dtype, cpu_has_bf16, grad_scaler, place_model, to_layout
from .synthetic import is_synthetic_table, write_synthetic_dataset
from .train import make_optimizer, make_train_loader, prepare_config, train_step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, n: int | None = None, repeats: int = 10) -> float:
    """Best observed GFLOP/s of an n x n matmul (2 n^3 FLOPs) in ``dtype``: the practical peak for dense math."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _model_parts(cfg: Config) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.nn.Module, Any]:
    torch.manual_seed(0)
    model = place_model(build_model(cfg), cfg).train()
    return model, make_optimizer(cfg, model), build_loss(cfg), grad_scaler(cfg)


def _random_batch(cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    device = cfg.torch_device()
    images = to_layout(torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device), cfg)
    masks = (torch.rand(cfg.batch_size, 1, cfg.image_size, cfg.image_size, device=device) > 0.95).float()
    return images, masks


def train_flops_per_image(cfg: Config) -> float:
    """FLOPs of one training step (forward + backward) per image, counted by PyTorch's FLOP counter."""
    plain = dataclasses.replace(cfg, device="cpu", amp="off", batch_size=1)
    model, loss_fn = build_model(plain).train(), build_loss(plain)
    images, masks = _random_batch(plain)
    with FlopCounterMode(display=False) as counter:
        loss_fn(model(images), masks).backward()
    return float(counter.get_total_flops())


def step_rate(cfg: Config, steps: int, warmup: int = 2) -> float:
    """Median images/s of ``steps`` training steps on one batch already in memory (the pure model step)."""
    model, optimizer, loss_fn, scaler = _model_parts(cfg)
    images, masks = _random_batch(cfg)
    times = []
    for _ in range(warmup + steps):
        start = time.perf_counter()
        train_step(model, images, masks, loss_fn, optimizer, scaler, cfg)
        _sync(cfg.torch_device())
        times.append(time.perf_counter() - start)
    return cfg.batch_size / statistics.median(times[warmup:])


def loader_rate(cfg: Config, loader: DataLoader, steps: int, warmup: int = 2) -> float:
    """Images/s of ``steps`` training steps fed by ``loader`` (epochs restart as needed), loading included: the
    median of the per-step times, each from the end of one step to the end of the next."""
    model, optimizer, loss_fn, scaler = _model_parts(cfg)
    device = cfg.torch_device()
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    times, sizes = [], []
    start = time.perf_counter()
    for images, masks in itertools.islice(batches, warmup + steps):
        images = to_layout(images.to(device, non_blocking=True), cfg)
        train_step(model, images, masks.to(device, non_blocking=True), loss_fn, optimizer, scaler, cfg)
        _sync(device)
        now = time.perf_counter()
        times.append(now - start)
        sizes.append(len(images))
        start = now
    return statistics.median(sizes[warmup:]) / statistics.median(times[warmup:])


class SeedStyleDataset(Dataset):
    """The seed notebook's loading: PIL opens and decodes both TIFFs on every access, resizes, scales to 0..1."""

    def __init__(self, table: pd.DataFrame, size: int) -> None:
        self.rows = list(zip(table["image_path"], table["mask_path"]))
        self.size = size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image_path, mask_path = self.rows[i]
        image = Image.open(image_path).convert("RGB").resize((self.size, self.size))
        mask = Image.open(mask_path).convert("L").resize((self.size, self.size), Image.NEAREST)
        image = torch.from_numpy(np.asarray(image, np.float32) / 255).permute(2, 0, 1)
        mask = torch.from_numpy((np.asarray(mask) > 127).astype(np.float32))[None]
        return image, mask


def _data(cfg: Config, data_dir: str | None, work: Path) -> pd.DataFrame:
    if data_dir is None:
        data_dir = write_synthetic_dataset(work, cfg.synthetic_patients, cfg.synthetic_slices, seed=0)
    return load_dataset(data_dir)


def run(cfg: Config, data_dir: str | None = None, steps: int = 10, seed_unet: bool = True,
        progress: bool = False) -> dict[str, Any]:
    """Every figure of the benchmark for ``cfg`` (its unset knobs resolved for the device, as ``train`` does) on
    the slices under ``data_dir`` (synthetic tiles written to a temporary folder when None)."""
    with tempfile.TemporaryDirectory() as tmp:
        table = _data(cfg, data_dir, Path(tmp))
        cfg = prepare_config(cfg, table)
        device = cfg.torch_device()
        peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        result: dict[str, Any] = {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
            f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads",
            "precision": str(amp_dtype(cfg) or "fp32").replace("torch.", ""),
            "data": "synthetic" if is_synthetic_table(table) else str(data_dir),
            "peak_gflops": matmul_peak_gflops(device, peak_dtype),
            "peak_dtype": str(peak_dtype).replace("torch.", ""),
        }
        if device.type == "cpu" and cpu_has_bf16():
            result["peak_gflops_bf16"] = matmul_peak_gflops(device, torch.bfloat16)
        flops = train_flops_per_image(cfg)
        result["model_gflop_per_image"] = flops / 1e9
        result["model_step_images_per_s"] = step_rate(cfg, steps)

        start = time.perf_counter()
        cache = SliceCache(table, progress) if cfg.cache else None
        result["cache_seconds"] = time.perf_counter() - start
        result["end_to_end_images_per_s"] = loader_rate(cfg, make_train_loader(cfg, table, cache=cache), steps)
        result["end_to_end_over_model_step"] = result["model_step_images_per_s"] / result["end_to_end_images_per_s"]
        result["fraction_of_peak"] = flops * result["model_step_images_per_s"] / 1e9 / result["peak_gflops"]

        seed_cfg = dataclasses.replace(cfg, amp="off", channels_last=False)
        seed_loader = DataLoader(SeedStyleDataset(table, cfg.image_size), batch_size=cfg.batch_size, shuffle=True,
                                 drop_last=True, num_workers=cfg.workers)
        result["seed_style_images_per_s"] = loader_rate(seed_cfg, seed_loader, max(3, steps // 2))
        result["speedup_over_seed_style"] = result["end_to_end_images_per_s"] / result["seed_style_images_per_s"]

        if seed_unet:  # the seed's own U-Net, whatever the config's widths: the model the FLOP target is about
            big = dataclasses.replace(cfg, image_size=256, features=(64, 128, 256, 512), ensemble=1,
                                      batch_size=cfg.batch_size if device.type == "cuda" else 4)
            big_flops = train_flops_per_image(big)
            result["seed_unet_gflop_per_image"] = big_flops / 1e9
            result["seed_unet_images_per_s"] = step_rate(big, max(3, steps // 3), warmup=1)
            achieved = big_flops * result["seed_unet_images_per_s"] / 1e9
            result["seed_unet_fraction_of_peak"] = achieved / result["peak_gflops"]
            if "peak_gflops_bf16" in result and amp_dtype(big) == torch.bfloat16:
                result["seed_unet_fraction_of_bf16_peak"] = achieved / result["peak_gflops_bf16"]
        result["config"] = {k: v for k, v in cfg.to_dict().items()
                            if k in ("image_size", "features", "ensemble", "batch_size", "amp", "channels_last",
                                     "workers", "cache", "augment", "intensity", "compile", "device")}
        return result


def format_table(result: dict[str, Any]) -> str:
    """The benchmark as aligned ``name  value`` lines."""
    lines = []
    for key, value in result.items():
        if key == "config":
            value = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
        lines.append(f"{key:34s} {value}")
    return "\n".join(lines)
