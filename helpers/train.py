"""Training: patient-level split, the loop, per-epoch history and checkpoints in a run folder.

The notebook and ``python -m helpers train`` both call :func:`fit`, so they write the same run folder:
``config.json``, ``split.csv``, ``history.csv`` (one row per epoch), ``last.pt`` and ``best.pt``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import CheckpointError, build_model, load_checkpoint, read_checkpoint, save_checkpoint, unwrap
from .config import Config
from .data import DataError, SliceCache, SliceDataset, channel_stats, load_dataset, scales_for, split_patients
from .inference import choose_threshold, evaluate, make_eval_loader
from .losses import build_loss
from .precision import amp_dtype, autocast, grad_scaler, place_model, to_layout
from .synthetic import is_synthetic_table
from .transforms import train_transform


class TrainingError(RuntimeError):
    """Training cannot go on (a NaN or infinite loss); the message names the epoch and step."""


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


def prepare_config(cfg: Config, train_table: pd.DataFrame, scales: dict[str, np.ndarray] | None = None,
                   cache: SliceCache | None = None) -> Config:
    """Fill sizes for this hardware and the normalisation statistics from the training patients (after
    per-volume rescaling by ``scales``, measured here when needed and not given)."""
    cfg = cfg.resolved(synthetic=is_synthetic_table(train_table))
    if cfg.mean is None or cfg.std is None:
        scales = scales_for(cfg.intensity, train_table, scales, cache)
        mean, std = channel_stats(train_table, seed=cfg.seed, scales=scales, cache=cache)
        cfg = dataclasses.replace(cfg, mean=mean, std=std)
    return cfg


def parallelize(model: nn.Module, cfg: Config, procs: distributed.Processes | None = None) -> nn.Module:
    """Move to ``cfg``'s device and layout, then wrap: DistributedDataParallel under ``torchrun`` (``procs``),
    else DataParallel when one process sees several GPUs (the seed's choice); ``torch.compile`` with
    ``cfg.compile``."""
    model = place_model(model, cfg)
    if cfg.torch_device().type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest convolutions once
    if procs is not None and procs.distributed:
        model = distributed.wrap(model, cfg, procs)
    elif cfg.torch_device().type == "cuda" and torch.cuda.device_count() > 1:
        print(f"DataParallel over {torch.cuda.device_count()} GPUs")
        model = nn.DataParallel(model)
    return torch.compile(model) if cfg.compile else model


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

    def __call__(self, progress: float | None = None) -> float:
        """The learning rate at ``progress`` (default: now)."""
        if self.cfg.schedule == "constant":
            return self.cfg.lr
        p = self.progress() if progress is None else progress
        if p < self.cfg.warmup:
            return self.cfg.lr * (0.1 + 0.9 * p / self.cfg.warmup)
        return self.cfg.lr * 0.5 * (1 + math.cos(math.pi * (p - self.cfg.warmup) / (1 - self.cfg.warmup)))


class EpochSampler(Sampler[int]):
    """Slice indices for one epoch, a fresh order on each pass: a permutation, or with ``weights`` as many draws
    (with replacement) in proportion to them.

    Under DDP every process draws the same global order from ``seed`` and the epoch number, cut into global
    batches of ``world`` x ``batch`` slices, and takes the ``rank``-th block of ``batch`` from each (the last
    incomplete global batch is dropped, as the one-process loader does). The processes together thus see exactly
    the global batches of a one-process run, each split into the micro-batches of ``cfg.accumulate``.
    """

    def __init__(self, n: int, seed: int, weights: np.ndarray | None = None, rank: int = 0, world: int = 1,
                 batch: int = 1) -> None:
        self.n, self.seed, self.rank, self.world, self.batch, self.epoch = n, seed, rank, world, batch, 0
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        self.epoch += 1
        if self.weights is None:
            order = torch.randperm(self.n, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=generator)
        if self.world > 1:
            order = order.repeat(math.ceil(len(self) * self.world / self.n))[:len(self) * self.world]
            order = order.view(-1, self.batch)[self.rank::self.world].flatten()
        return iter(order.tolist())

    def __len__(self) -> int:
        if self.world == 1:
            return self.n
        step = self.world * self.batch
        return max(self.n // step, 1) * self.batch


def _seed_worker_augmentation(worker_id: int) -> None:
    """Give each DataLoader worker its own augmentation stream (they start as copies of one seeded pipeline);
    torch seeds each worker reproducibly from the run's seed."""
    dataset = torch.utils.data.get_worker_info().dataset
    if hasattr(dataset.transform, "set_random_seed"):
        dataset.transform.set_random_seed(torch.initial_seed() % 2**32)
    if dataset.mix is not None:
        dataset.mix.set_random_seed(torch.initial_seed() % 2**32 + 1)


def make_train_loader(cfg: Config, train_table: pd.DataFrame, scales: dict[str, np.ndarray] | None = None,
                      cache: SliceCache | None = None, procs: distributed.Processes | None = None) -> DataLoader:
    """Shuffled, augmented training slices; with ``cfg.tumour_share`` tumour slices are drawn at that share.
    Under DDP (``procs``) each process loads its share of every global batch of ``cfg.batch_size``."""
    procs = procs or distributed.Processes()
    weights = None
    if cfg.tumour_share is not None and 0 < train_table["has_tumour"].mean() < 1:
        tumour = train_table["has_tumour"].to_numpy()
        weights = np.where(tumour, cfg.tumour_share / tumour.sum(), (1 - cfg.tumour_share) / (~tumour).sum())
    per_process = cfg.batch_size // procs.world
    sampler = EpochSampler(len(train_table), cfg.seed, weights, procs.rank, procs.world, per_process)
    scales = scales_for(cfg.intensity, train_table, scales, cache)
    dataset = SliceDataset(train_table, train_transform(cfg), scales=scales, cache=cache, context=cfg.context,
                           tumour_mix=cfg.tumour_mix, seed=cfg.seed)
    return DataLoader(dataset, batch_size=per_process, sampler=sampler, worker_init_fn=_seed_worker_augmentation,
                      drop_last=len(train_table) > cfg.batch_size, num_workers=cfg.workers,
                      pin_memory=cfg.torch_device().type == "cuda", persistent_workers=cfg.workers > 0,
                      prefetch_factor=4 if cfg.workers > 0 else None)


def make_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    kind = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def train_step(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, loss_fn: nn.Module,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, cfg: Config) -> float:
    """One optimizer step on a batch already on the device; the forward pass runs under ``cfg``'s mixed precision,
    the loss in fp32. With ``cfg.accumulate`` > 1 the batch goes through in that many micro-batches whose
    gradients add up before the step (less memory; BatchNorm then sees micro-batches, as each DDP process
    does). Returns the batch's loss (the mean over micro-batches)."""
    optimizer.zero_grad(set_to_none=True)
    chunks = list(zip(images.chunk(cfg.accumulate), masks.chunk(cfg.accumulate)))
    total = 0.0
    for k, (x, y) in enumerate(chunks):
        # Under DDP, gradients are averaged over processes once, after the last micro-batch.
        sync = k == len(chunks) - 1 or not hasattr(model, "no_sync")
        with contextlib.nullcontext() if sync else model.no_sync():
            with autocast(cfg):
                outputs = model(x)  # logits, or a tuple of them (deep supervision's scales, an ensemble's members)
            outputs = tuple(o.float() for o in outputs) if isinstance(outputs, tuple) else outputs.float()
            loss = loss_fn(outputs, y) / len(chunks)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss is {loss.item() * len(chunks)}")
            scaler.scale(loss).backward()
        total += loss.item()
    scaler.step(optimizer)
    scaler.update()
    return total


def ema_decay(decay: float, updates: int) -> float:
    """The decay used for the moving average's update after ``updates`` earlier ones: ``decay``, but at most
    (1 + n) / (10 + n), so that a short run's average is not dominated by the random initial weights (with 0.99
    and a fixed decay, 38% of the average after 96 steps would still be the initialisation)."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


def make_average(cfg: Config, model: nn.Module) -> AveragedModel | None:
    """The exponential moving average of ``model``'s weights and BatchNorm statistics that ``cfg.ema`` asks for
    (None when it is 0). BatchNorm's own running statistics follow the last ten or so batches of augmented
    slices; the average follows the last ``1 / (1 - ema)`` steps, so the validated model moves less from epoch
    to epoch."""
    if not cfg.ema:
        return None

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor) -> None:
        weight = 1.0 - ema_decay(cfg.ema, int(n_averaged))
        for a, c in zip(averaged, current):
            if a.is_floating_point():
                a.lerp_(c, weight)
            else:  # BatchNorm's batch counter
                a.copy_(c)

    return AveragedModel(unwrap(model), multi_avg_fn=update, use_buffers=True)


def train_one_epoch(model: nn.Module, loader: DataLoader, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    cfg: Config, progress: bool = True, desc: str = "train", deadline: float = float("inf"),
                    schedule: LearningRate | None = None, scaler: torch.amp.GradScaler | None = None,
                    procs: distributed.Processes | None = None, average: AveragedModel | None = None) -> float:
    """One pass over ``loader`` (cut short once ``time.monotonic()`` passes ``deadline``); mean loss per image,
    over all processes under DDP (where every process also agrees on when to stop and on the learning rate).
    ``average`` (from :func:`make_average`) is updated after every step."""
    device = cfg.torch_device()
    procs = procs or distributed.Processes()
    scaler = scaler if scaler is not None else grad_scaler(cfg)
    model.train()
    total, seen = 0.0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=not (progress and procs.main))
    for step, (images, masks) in enumerate(bar, start=1):
        clock = schedule.progress() if schedule is not None else 0.0
        clock, late = distributed.max_over([clock, float(time.monotonic() > deadline)], procs)
        if late:
            break
        if schedule is not None:
            for group in optimizer.param_groups:
                group["lr"] = schedule(clock)
            schedule.step_count += 1
        images, masks = to_layout(images.to(device, non_blocking=True), cfg), masks.to(device, non_blocking=True)
        try:
            total += train_step(model, images, masks, loss_fn, optimizer, scaler, cfg) * len(images)
        except FloatingPointError as error:
            raise TrainingError(f"{desc}, step {step}: {error}; the weights were not updated with it") from None
        if average is not None:
            average.update_parameters(unwrap(model))
        seen += len(images)
        bar.set_postfix(loss=f"{total / seen:.4f}")
    distributed.average_buffers(model, procs)
    return distributed.mean_over(total / seen if seen else float("nan"), procs)


def fit(cfg: Config, train_table: pd.DataFrame, val_table: pd.DataFrame, progress: bool = True,
        on_epoch: Callable[[int, nn.Module], None] | None = None, resume: dict[str, Any] | None = None
        ) -> TrainResult:
    """Train for ``cfg.epochs`` and keep the epoch with the best validation Dice, writing the run folder.

    Validation Dice is the mean over validation patients of their 3-D Dice (see :mod:`helpers.metrics`). Each
    epoch's, in ``history.csv``, is of plain predictions (no TTA, no clean-up); the one stored in ``best.pt`` and
    returned is scored as ``evaluate`` scores.
    Under ``torchrun`` every process trains its share of each batch (DDP); the main process validates and writes
    the run folder, and the others follow its decisions. ``on_epoch(epoch, model)`` is called on every process
    after each epoch with the unwrapped model (for live plots, or to inspect the weights).

    ``last.pt`` is written after every epoch with everything needed to go on: optimizer, loss scaler, schedule
    clock, history, best epoch and data order. ``resume`` (see :func:`resume_run`) continues from it; a run
    interrupted by Ctrl-C, a crash or a killed session loses at most the epoch in progress.

    With ``cfg.ema`` the moving average of the weights (:func:`make_average`) is what is validated and saved
    as ``best.pt`` and ``last.pt``; ``last.pt`` also holds the trained weights themselves, to resume from.
    """
    shared = set(train_table["patient"]) & set(val_table["patient"])
    if shared:
        raise ValueError(f"patients on both sides of the split: {sorted(shared)[:5]}")
    procs, cfg = distributed.setup(cfg)
    progress = progress and procs.main
    validating = len(val_table) > 0
    say = print if procs.main else (lambda *args, **kwargs: None)
    set_seed(cfg.seed)
    # Slices are decoded once (into RAM unless cfg.cache is off) and each patient's intensity level is measured
    # once, for the statistics and both loaders.
    table = pd.concat([train_table, val_table])
    cache = SliceCache(table, progress) if cfg.cache else None
    scales = scales_for(cfg.intensity, table, cache=cache)
    cfg = prepare_config(cfg, train_table, scales, cache)
    device = cfg.torch_device()
    run_dir = Path(cfg.run_dir)
    if procs.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / "config.json")
        split = pd.concat([train_table.assign(split="train"), val_table.assign(split="val")])
        split.groupby("patient", sort=False)["split"].first().reset_index().to_csv(run_dir / "split.csv", index=False)

    train_loader = make_train_loader(cfg, train_table, scales, cache, procs)
    val_loader = make_eval_loader(val_table, cfg, scales, cache) if procs.main and validating else None
    # Each epoch is scored on plain predictions (no TTA, no clean-up): scoring in full took about 10% of the epochs in
    # a CPU time budget and lost 0.009 (SE 0.007) in CV (runs VF0, VF0b), and best.pt barely depends on which epoch
    # is picked. That figure runs lower than `evaluate`'s, so best.pt is scored again as `evaluate` scores it at the
    # end.
    select_cfg = dataclasses.replace(cfg, tta=False, min_component=0, min_volume_share=0.0, grow_threshold=0.0,
                                     fill_holes=False)
    model = parallelize(build_model(cfg), cfg, procs)
    average = make_average(cfg, model) if procs.main else None  # only the main process validates and saves

    def validated() -> nn.Module:  # the model that is scored and saved: the moving average, when there is one
        return average.module if average is not None else unwrap(model)

    loss_fn = build_loss(cfg)
    optimizer = make_optimizer(cfg, model)
    schedule = LearningRate(cfg, cfg.epochs * len(train_loader))
    scaler = grad_scaler(cfg)
    say(f"training on {device}{f' x {procs.world} processes' if procs.distributed else ''}: "
        f"{train_table['patient'].nunique()} patients / {len(train_table)} slices, "
        + (f"validating on {val_table['patient'].nunique()} patients / {len(val_table)} slices, " if validating
           else "no validation patients (best.pt will be the last epoch), ") +
        f"{cfg.image_size}px{f' (trained on {cfg.crop}px windows)' if cfg.crop else ''}, "
        f"widths {cfg.features}{f' x {cfg.ensemble} U-Nets' if cfg.ensemble > 1 else ''}, "
        f"{cfg.epochs} epochs, precision {amp_dtype(cfg) or 'fp32'}"
        + (f", {cache.nbytes / 2**20:.0f} MiB of slices cached" if cache is not None else ""))

    rows, best_dice, best_epoch, finished = [], -1.0, 0, False
    if resume is not None:
        unwrap(model).load_state_dict(resume.get("trained", resume["model"]))
        if average is not None:
            average.module.load_state_dict(resume["model"])
            average.n_averaged.fill_(resume.get("n_averaged", 1))  # continue the average, do not restart it
        optimizer.load_state_dict(resume["optimizer"])
        scaler.load_state_dict(resume["scaler"])
        schedule.step_count = resume["steps"]
        schedule.start -= resume["train_seconds"]  # the time budget and the schedule's clock go on
        train_loader.sampler.epoch = resume["sampler_epoch"]
        rows, best_dice, best_epoch = list(resume["history"]), resume["best_dice"], resume["best_epoch"]
        finished = resume["finished"] or len(rows) >= cfg.epochs
        say(f"resuming after epoch {len(rows)} ({resume['train_seconds']:.0f}s of training done)"
            + ("; that run had already finished" if finished else ""))
    deadline = schedule.start + (cfg.time_budget if cfg.time_budget is not None else float("inf"))

    def save_last(epoch: int, done: bool) -> None:
        state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "steps": schedule.step_count,
                 "train_seconds": time.monotonic() - schedule.start, "sampler_epoch": train_loader.sampler.epoch,
                 "history": rows, "best_dice": best_dice, "best_epoch": best_epoch, "finished": done}
        if average is not None:
            state.update(trained=unwrap(model).state_dict(), n_averaged=int(average.n_averaged))
        save_checkpoint(run_dir / "last.pt", validated(), cfg, epoch=epoch, val_dice=rows[-1]["val_dice"],
                        resume=state)

    for epoch in range(len(rows) + 1, 0 if finished else cfg.epochs + 1):
        start = time.perf_counter()
        try:
            train_loss = train_one_epoch(model, train_loader, loss_fn, optimizer, cfg, progress,
                                         desc=f"epoch {epoch}/{cfg.epochs}", deadline=deadline, schedule=schedule,
                                         scaler=scaler, procs=procs, average=average)
        except KeyboardInterrupt:
            say(f"\ninterrupted in epoch {epoch}; {run_dir}/last.pt holds epoch {epoch - 1}: go on with "
                f"`python -m helpers train --resume {run_dir}` or helpers.train.resume_run({str(run_dir)!r})")
            raise
        except TrainingError as error:
            raise TrainingError(f"{error}. Training stopped; {run_dir}/last.pt keeps epoch {epoch - 1}, the last "
                                "good one (try a lower lr, or amp='off')") from None
        if on_epoch is not None:
            on_epoch(epoch, unwrap(model))
        decision = None
        if procs.main:
            val_loss = val_dice = val_median = float("nan")
            if validating:
                # Validation runs on the main process alone, on the unwrapped model or its average (no collective
                # calls inside).
                val_loss, dice = evaluate(validated(), val_loader, val_table["patient"].tolist(), select_cfg,
                                          loss_fn)
                val_dice, val_median = float(dice.mean()), float(dice.median())
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_dice": val_dice,
                   "val_dice_median": val_median, "seconds": time.perf_counter() - start}
            # With a decaying schedule, early high-learning-rate epochs are not candidates: their validation Dice on
            # a few patients is noisy, and picking its maximum there loses to the annealed model (README, "Accuracy").
            eligible = validating and (cfg.schedule == "constant" or schedule.progress() >= cfg.select_after)
            decision = {"row": row, "better": eligible and row["val_dice"] > best_dice,
                        "late": time.monotonic() > deadline}
        decision = distributed.from_main(decision, procs)
        rows.append(decision["row"])
        if decision["better"]:
            best_dice, best_epoch = rows[-1]["val_dice"], epoch
        stop = decision["late"] or (cfg.patience is not None and best_epoch and epoch - best_epoch >= cfg.patience)
        if procs.main:
            if decision["better"]:
                save_checkpoint(run_dir / "best.pt", validated(), cfg, epoch=epoch, val_dice=best_dice)
            save_last(epoch, bool(stop) or epoch == cfg.epochs)
            pd.DataFrame(rows).to_csv(run_dir / "history.csv", index=False)
        say(f"epoch {epoch:3d}  loss {train_loss:.4f}  "
            + (f"val loss {rows[-1]['val_loss']:.4f}  plain val Dice {rows[-1]['val_dice']:.3f}  " if validating
               else "")
            + f"({rows[-1]['seconds']:.0f}s)")
        if decision["late"]:
            say(f"time budget of {cfg.time_budget:.0f}s reached after epoch {epoch}; keeping the best epoch")
            break
        if stop:
            say(f"no better validation Dice for {cfg.patience} epochs; stopping early")
            break

    if not best_epoch:  # stopped before any epoch was a candidate: the last one is the best there is
        best_dice, best_epoch = rows[-1]["val_dice"], rows[-1]["epoch"]
        if procs.main:
            save_checkpoint(run_dir / "best.pt", validated(), cfg, epoch=best_epoch, val_dice=best_dice)
    distributed.barrier(procs)  # best.pt is on disk for every process
    best_model, _, _ = load_checkpoint(run_dir / "best.pt", device)
    if validating and procs.main:
        if cfg.tune_threshold:
            curve = choose_threshold(best_model, val_table, cfg)
            curve.sort_index().to_csv(run_dir / "threshold_curve.csv")
            cfg = dataclasses.replace(cfg, threshold=float(curve.index[0]))
            best_dice = float(curve.iloc[0])
            say(f"threshold {cfg.threshold:.2f} (validation Dice {best_dice:.3f}; 0.5 gives {curve[0.5]:.3f})")
            cfg.save(run_dir / "config.json")
        else:
            best_dice = float(evaluate(best_model, val_loader, val_table["patient"].tolist(), cfg)[1].mean())
        save_checkpoint(run_dir / "best.pt", best_model, cfg, epoch=best_epoch, val_dice=best_dice)
    cfg, best_dice = distributed.from_main((cfg, best_dice), procs)
    return TrainResult(best_model, cfg, pd.DataFrame(rows), train_table, val_table, run_dir, best_epoch, best_dice)


def train_run(cfg: Config, table: pd.DataFrame, progress: bool = True,
              on_epoch: Callable[[int, nn.Module], None] | None = None) -> TrainResult:
    """Split ``table`` by patient (``cfg.val_fraction``, ``cfg.seed``) and :func:`fit`; what the CLI runs."""
    train_table, val_table = split_patients(table, cfg.val_fraction, cfg.seed)
    return fit(cfg, train_table, val_table, progress, on_epoch)


def resume_run(run_dir: str | Path, data_dir: str | None = None, progress: bool = True,
               on_epoch: Callable[[int, nn.Module], None] | None = None) -> TrainResult:
    """Go on with the run in ``run_dir`` from its ``last.pt``: the same config, patient split, optimizer,
    schedule, history and data order, until the epochs or the time budget it was started with are used up.
    ``data_dir`` points at the data when it has moved since. Augmentation draws are not replayed."""
    from .source import resolve_data

    run_dir = Path(run_dir)
    state = read_checkpoint(run_dir / "last.pt")
    if "resume" not in state:
        raise CheckpointError(f"{run_dir / 'last.pt'}: written before runs could be resumed; start a new run")
    cfg = Config.from_dict(state["config"])
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir), data_dir=data_dir or cfg.data_dir)
    table = load_dataset(resolve_data(cfg).path)
    split = pd.read_csv(run_dir / "split.csv")
    if missing := sorted(set(split["patient"]) - set(table["patient"])):
        raise DataError(f"{run_dir / 'split.csv'}: patients {missing[:3]} of the run are not in the data "
                        f"({len(missing)} missing); pass the data folder the run was trained on")
    side = dict(zip(split["patient"], split["split"]))
    train_table = table[table["patient"].map(side) == "train"].reset_index(drop=True)
    val_table = table[table["patient"].map(side) == "val"].reset_index(drop=True)
    return fit(cfg, train_table, val_table, progress, on_epoch, resume={**state["resume"], "model": state["model"]})
