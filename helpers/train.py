"""Training: patient-level split, the loop, per-epoch history and checkpoints in a run folder.

The notebook and ``python -m helpers train`` both call :func:`fit`, so they write the same run folder:
``config.json``, ``split.csv``, ``history.csv`` (one row per epoch), ``last.pt`` and ``best.pt``.
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, WeightedRandomSampler
from tqdm.auto import tqdm

from .checkpoint import build_model, load_checkpoint, save_checkpoint
from .config import Config
from .data import SliceDataset, channel_stats, scales_for, split_patients
from .inference import choose_threshold, evaluate, make_eval_loader
from .losses import build_loss
from .precision import amp_dtype, autocast, grad_scaler, place_model, to_layout
from .synthetic import is_synthetic_table
from .transforms import train_transform


@dataclass
class TrainResult:
    """What a finished run hands back; the same facts are on disk in ``run_dir``."""

    model: nn.Module  # the best epoch's weights, unwrapped, in eval mode
    cfg: Config  # fully resolved: sizes, widths, normalisation statistics
    history: pd.DataFrame
    train_table: pd.DataFrame
    val_table: pd.DataFrame
    run_dir: Path
    best_epoch: int
    best_val_dice: float


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_config(cfg: Config, train_table: pd.DataFrame, scales: dict[str, np.ndarray] | None = None) -> Config:
    """Fill sizes for this hardware and the normalisation statistics from the training patients (after
    per-volume rescaling by ``scales``, measured here when needed and not given)."""
    cfg = cfg.resolved(synthetic=is_synthetic_table(train_table))
    if cfg.mean is None or cfg.std is None:
        scales = scales_for(cfg.intensity, train_table, scales)
        mean, std = channel_stats(train_table, seed=cfg.seed, scales=scales)
        cfg = dataclasses.replace(cfg, mean=mean, std=std)
    return cfg


def parallelize(model: nn.Module, cfg: Config) -> nn.Module:
    """Move to ``cfg``'s device and layout; wrap in DataParallel when more than one GPU is visible (the seed's
    choice)."""
    model = place_model(model, cfg)
    if cfg.torch_device().type == "cuda" and torch.cuda.device_count() > 1:
        print(f"DataParallel over {torch.cuda.device_count()} GPUs")
        model = nn.DataParallel(model)
    return model


class LearningRate:
    """Linear warm-up then cosine decay to zero, driven by progress in [0, 1]: the larger of the share of steps
    done and the share of the time budget spent, so a run cut by ``--time-budget`` still ends its decay."""

    def __init__(self, cfg: Config, total_steps: int) -> None:
        self.cfg, self.total_steps, self.step_count = cfg, max(total_steps, 1), 0
        self.start = time.monotonic()

    def progress(self) -> float:
        done = self.step_count / self.total_steps
        if self.cfg.time_budget:
            done = max(done, (time.monotonic() - self.start) / self.cfg.time_budget)
        return min(done, 1.0)

    def __call__(self) -> float:
        if self.cfg.schedule == "constant":
            return self.cfg.lr
        p = self.progress()
        if p < self.cfg.warmup:
            return self.cfg.lr * (0.1 + 0.9 * p / self.cfg.warmup)
        return self.cfg.lr * 0.5 * (1 + math.cos(math.pi * (p - self.cfg.warmup) / (1 - self.cfg.warmup)))


def make_train_loader(cfg: Config, train_table: pd.DataFrame,
                      scales: dict[str, np.ndarray] | None = None) -> DataLoader:
    """Shuffled, augmented training slices; with ``cfg.tumour_share`` tumour slices are drawn at that share."""
    generator = torch.Generator().manual_seed(cfg.seed)
    sampler = None
    if cfg.tumour_share is not None and 0 < train_table["has_tumour"].mean() < 1:
        tumour = train_table["has_tumour"].to_numpy()
        weights = np.where(tumour, cfg.tumour_share / tumour.sum(), (1 - cfg.tumour_share) / (~tumour).sum())
        sampler = WeightedRandomSampler(torch.as_tensor(weights), len(train_table), generator=generator)
    dataset = SliceDataset(train_table, train_transform(cfg), scales=scales_for(cfg.intensity, train_table, scales))
    return DataLoader(dataset, batch_size=cfg.batch_size,
                      shuffle=sampler is None, sampler=sampler, generator=generator,
                      drop_last=len(train_table) > cfg.batch_size, num_workers=cfg.workers,
                      pin_memory=cfg.torch_device().type == "cuda", persistent_workers=cfg.workers > 0)


def make_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_step(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, loss_fn: nn.Module,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, cfg: Config) -> float:
    """One optimizer step on a batch already on the device; the forward pass runs under ``cfg``'s mixed precision,
    the loss in fp32. Returns the batch's loss."""
    with autocast(cfg):
        logits = model(images)
    loss = loss_fn(logits.float(), masks)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.item()


def train_one_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    cfg: Config, progress: bool = True, desc: str = "train", deadline: float = float("inf"),
                    schedule: LearningRate | None = None, scaler: torch.amp.GradScaler | None = None) -> float:
    """One pass over ``loader`` (cut short once ``time.monotonic()`` passes ``deadline``); mean loss per image."""
    device = cfg.torch_device()
    scaler = scaler if scaler is not None else grad_scaler(cfg)
    model.train()
    total, seen = 0.0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not progress)
    for images, masks in bar:
        if time.monotonic() > deadline:
            break
        if schedule is not None:
            for group in optimizer.param_groups:
                group["lr"] = schedule()
            schedule.step_count += 1
        images, masks = to_layout(images.to(device, non_blocking=True), cfg), masks.to(device, non_blocking=True)
        total += train_step(model, images, masks, loss_fn, optimizer, scaler, cfg) * len(images)
        seen += len(images)
        bar.set_postfix(loss=f"{total / seen:.4f}")
    return total / seen if seen else float("nan")


def fit(cfg: Config, train_table: pd.DataFrame, val_table: pd.DataFrame, progress: bool = True) -> TrainResult:
    """Train for ``cfg.epochs`` and keep the epoch with the best validation Dice, writing the run folder.

    Validation Dice is the mean over validation patients of their 3-D Dice (see :mod:`helpers.metrics`).
    """
    shared = set(train_table["patient"]) & set(val_table["patient"])
    if shared:
        raise ValueError(f"patients on both sides of the split: {sorted(shared)[:5]}")
    set_seed(cfg.seed)
    # Each patient's intensity level is read once, for the statistics and both loaders.
    scales = scales_for(cfg.intensity, pd.concat([train_table, val_table]))
    cfg = prepare_config(cfg, train_table, scales)
    device = cfg.torch_device()
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(run_dir / "config.json")
    split = pd.concat([train_table.assign(split="train"), val_table.assign(split="val")])
    split.groupby("patient", sort=False)["split"].first().reset_index().to_csv(run_dir / "split.csv", index=False)

    train_loader = make_train_loader(cfg, train_table, scales)
    val_loader = make_eval_loader(val_table, cfg, scales)
    # Per-epoch model selection scores plain predictions; TTA and blob removal are for the final choices.
    select_cfg = dataclasses.replace(cfg, tta=False, min_component=0, min_volume_share=0.0)
    model = parallelize(build_model(cfg), cfg)
    loss_fn = build_loss(cfg)
    optimizer = make_optimizer(cfg, model)
    schedule = LearningRate(cfg, cfg.epochs * len(train_loader))
    scaler = grad_scaler(cfg)
    print(f"training on {device}: {train_table['patient'].nunique()} patients / {len(train_table)} slices, "
          f"validating on {val_table['patient'].nunique()} patients / {len(val_table)} slices, "
          f"{cfg.image_size}px, widths {cfg.features}, {cfg.epochs} epochs, precision {amp_dtype(cfg) or 'fp32'}")

    rows, best_dice, best_epoch = [], -1.0, 0
    deadline = time.monotonic() + (cfg.time_budget if cfg.time_budget is not None else float("inf"))
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        train_loss = train_one_epoch(model, train_loader, loss_fn, optimizer, cfg, progress,
                                     desc=f"epoch {epoch}/{cfg.epochs}", deadline=deadline, schedule=schedule,
                                     scaler=scaler)
        val_loss, dice = evaluate(model, val_loader, val_table["patient"].tolist(), select_cfg, loss_fn)
        rows.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                     "val_dice": float(dice.mean()), "val_dice_median": float(dice.median()),
                     "seconds": time.perf_counter() - start})
        pd.DataFrame(rows).to_csv(run_dir / "history.csv", index=False)
        save_checkpoint(run_dir / "last.pt", model, cfg, epoch=epoch, val_dice=rows[-1]["val_dice"])
        # With a decaying schedule, early high-learning-rate epochs are not candidates: their validation Dice on
        # a few patients is noisy, and picking its maximum there loses to the annealed model (README, "Accuracy").
        eligible = cfg.schedule == "constant" or schedule.progress() >= cfg.select_after
        if eligible and rows[-1]["val_dice"] > best_dice:
            best_dice, best_epoch = rows[-1]["val_dice"], epoch
            save_checkpoint(run_dir / "best.pt", model, cfg, epoch=epoch, val_dice=best_dice)
        print(f"epoch {epoch:3d}  loss {train_loss:.4f}  val loss {val_loss:.4f}  "
              f"val Dice {rows[-1]['val_dice']:.3f}  ({rows[-1]['seconds']:.0f}s)")
        if time.monotonic() > deadline:
            print(f"time budget of {cfg.time_budget:.0f}s reached after epoch {epoch}; keeping the best epoch")
            break
        if cfg.patience is not None and best_epoch and epoch - best_epoch >= cfg.patience:
            print(f"no better validation Dice for {cfg.patience} epochs; stopping early")
            break

    if not best_epoch:  # stopped before any epoch was a candidate: the last one is the best there is
        best_dice, best_epoch = rows[-1]["val_dice"], rows[-1]["epoch"]
        save_checkpoint(run_dir / "best.pt", model, cfg, epoch=best_epoch, val_dice=best_dice)
    best_model, _, _ = load_checkpoint(run_dir / "best.pt", device)
    if cfg.tune_threshold:
        curve = choose_threshold(best_model, val_table, cfg)
        curve.sort_index().to_csv(run_dir / "threshold_curve.csv")
        cfg = dataclasses.replace(cfg, threshold=float(curve.index[0]))
        best_dice = float(curve.iloc[0])
        print(f"threshold {cfg.threshold:.2f} (validation Dice {best_dice:.3f}; 0.5 gives {curve[0.5]:.3f})")
        save_checkpoint(run_dir / "best.pt", best_model, cfg, epoch=best_epoch, val_dice=best_dice)
        cfg.save(run_dir / "config.json")
    return TrainResult(best_model, cfg, pd.DataFrame(rows), train_table, val_table, run_dir, best_epoch, best_dice)


def train_run(cfg: Config, table: pd.DataFrame, progress: bool = True) -> TrainResult:
    """Split ``table`` by patient (``cfg.val_fraction``, ``cfg.seed``) and :func:`fit`; what the CLI runs."""
    train_table, val_table = split_patients(table, cfg.val_fraction, cfg.seed)
    return fit(cfg, train_table, val_table, progress)
