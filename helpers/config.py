"""The one configuration object: every hyperparameter for the notebook, the CLI and the tests."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


def gpu_loader_workers() -> int:
    """DataLoader workers per training process on a GPU machine: the CPUs shared among the processes on this
    machine (torchrun's LOCAL_WORLD_SIZE), one left to each process itself, at most 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = cpus // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(8, per_process - 1))


# The seed's U-Net at full resolution: what a GPU trains with when the user sets nothing.
GPU_DEFAULTS = {"image_size": 256, "crop": 0.0, "crop_on_tumour": 0.0, "features": (64, 128, 256, 512), "ensemble": 1,
                "batch_size": 16, "epochs": 30, "lr": 1e-3, "workers": gpu_loader_workers()}
# Sized so that 2 CPU cores train the real sample in minutes: a pair of narrow U-Nets, averaged, which beat one
# U-Net of twice the widths in the same time on 12 of 15 cross-validation folds, and batches of 32, which beat 16
# on 14 of 20 (README "The CPU protocol"). Training on random windows of 3/4 of the side (96 px of the 128 px
# slices) fits more steps in a time budget: +0.035 paired over 15 CV scores, 5 of 5 folds up (run CR0); placing the
# window on the tumour in every tumour slice: +0.016 paired over 75 CV scores, 18 of 25 folds up (runs T0-T4). Loader
# workers would only compete with the model for the cores.
CPU_DEFAULTS = {"image_size": 128, "crop": 0.75, "crop_on_tumour": 1.0, "features": (8, 16, 32, 64), "ensemble": 2,
                "batch_size": 32, "epochs": 40, "lr": 3e-3, "workers": 0}
# Synthetic tiles are easy: one such U-Net at this size learns them on a laptop in well under a minute. Their batch
# stays 16: the batch-32 comparison was made on real data only.
SYNTHETIC_CPU_DEFAULTS = {**CPU_DEFAULTS, "image_size": 64, "crop": 0.0, "crop_on_tumour": 0.0, "ensemble": 1,
                          "batch_size": 16, "epochs": 20}

# In these tables "crop" is a share of the slice's side; resolved() turns it into px with window_px.
AUTO_FIELDS = tuple(GPU_DEFAULTS)
LOSSES = ("bce", "dice", "bce_dice")
OPTIMIZERS = ("adam", "adamw")
SCHEDULES = ("constant", "cosine")
INTENSITIES = ("dataset", "volume", "brain", "landmarks")
AMPS = ("auto", "off", "bf16", "fp16")
AUGMENTS = ("off", "light", "strong")
NORMS = ("batch", "instance")
DICE_OVER = ("batch", "slice")


def window_px(image_size: int, share: float) -> int:
    """The side of a training window that is ``share`` of ``image_size``, rounded down to a multiple of 16 (four
    2x2 poolings); 0 (whole slices) when the share is 0 or the window would be under 16 px."""
    return int(image_size * share) // 16 * 16


@dataclass
class Config:
    """Every knob of a run. Fields left as ``None`` are chosen by :meth:`resolved` for the hardware.

    ``mean``/``std`` are the per-channel normalisation statistics; ``None`` means "measure them on the
    training patients", and the resolved values are stored with the run so inference reproduces them.
    """

    data_dir: str | None = None  # a kaggle_3m folder; None = find one (see helpers.source)
    download_dir: str = "data"  # where a Kaggle download or the synthetic tiles are written
    run_dir: str = "runs/unet"  # config.json, history.csv, split.csv, last.pt, best.pt
    image_size: int | None = None
    crop: int | None = None  # train on random windows of this many px of each resized slice (more steps per second);
    # validation and inference see whole slices; 0 = off; None = 3/4 of image_size on a CPU with real data, else 0
    crop_on_tumour: float | None = None  # share of tumour slices whose window is placed to hold some tumour; others:
    # anywhere; None = all of them on a CPU with real data (when crop is on), else 0
    in_channels: int = 3  # MR sequences per slice
    context: int = 0  # neighbouring slices on each side given to the model as extra channels (2.5-D); 0 = 2-D
    features: tuple[int, ...] | None = None
    norm: str = "batch"  # the U-Net's normalisation layers: "batch" (the seed's) or "instance" (per slice)
    dropout: float = 0.0  # dropout on the bottleneck's features in training (the U-Net paper's 0.5); 0 = off
    deep_supervision: bool = False  # also score the decoder's 1/2 and 1/4 scale outputs in training (nnU-Net's)
    ensemble: int | None = None  # U-Nets trained side by side from their own initial weights, probabilities averaged;
    # None = a pair on CPU with real data, else one
    batch_size: int | None = None  # slices per optimizer step (over all processes under DDP)
    accumulate: int = 1  # split each batch into this many micro-batches, adding up their gradients (less memory)
    epochs: int | None = None
    lr: float | None = None
    optimizer: str = "adamw"  # decoupled weight decay; or the seed's "adam"
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # linear warm-up, then cosine decay over the run (or time budget); or "constant"
    warmup: float = 0.05  # share of the run spent warming up, with schedule="cosine"
    loss: str = "bce_dice"  # BCE + soft Dice; also the seed's "bce" (BCEWithLogitsLoss) and "dice"
    dice_weight: float = 0.5  # weight of the Dice term in "bce_dice"
    dice_over: str = "batch"  # the Dice term counted over the whole batch, or per slice with tumour ("slice")
    recall_weight: float = 0.7  # Dice term as a Tversky index: > 0.5 makes missed tumour cost more than false alarms
    ema: float = 0.99  # per-step decay of a moving average of the weights and BatchNorm statistics; 0 = off
    tumour_mix: float = 0.0  # share of training slices given another training slice's tumour (CarveMix); 0 = off
    tumour_share: float | None = None  # share of tumour slices drawn per epoch; None = as in the data (about 1/3)
    threshold: float = 0.5  # probability above which a pixel is tumour
    tune_threshold: bool = False  # after training, pick the threshold that maximises validation Dice
    tta: bool = True  # average the probabilities of the slice and its mirror image (twice the inference)
    min_component: int = 0  # drop predicted 2-D blobs smaller than this many pixels (at 256x256)
    grow_threshold: float = 0.2  # grow found tumour into the 3-D regions above this lower probability; 0 = off
    min_volume_share: float = 0.2  # keep 3-D regions with at least this share of the largest one's voxels
    fill_holes: bool = True  # fill holes inside each slice's predicted tumour (the true masks have none)
    val_fraction: float = 0.2  # share of *patients* held out for validation; 0 = train on all, best.pt = last epoch
    time_budget: float | None = None  # seconds of training; stops cleanly and keeps the best checkpoint
    patience: int | None = None  # stop after this many epochs without a better validation Dice
    select_after: float = 0.8  # cosine schedule: epochs before this share of the run are not candidates for best.pt
    augment: str = "strong"  # "light": flips, small affine moves; "strong": wider affine, gamma, noise, blur; "off"
    intensity_jitter: float = 0.1  # brightness/contrast change of up to this share, in training
    channel_gain: float = 0.2  # each channel scaled by a factor in [1 - g, 1 + g], in training: scanners differ
    channel_gamma: float = 0.0  # each channel's gamma drawn from [1 / (1 + g), 1 + g], in training: contrast differs
    sequence_dropout: float = 0.0  # share of training slices with one MR sequence blanked to its mean; 0 = off
    bias_field: float = 0.0  # a smooth random gain field per MR sequence, within exp(+-b), in training (coil); 0 = off
    elastic: float = 0.0  # share of training slices given a smooth random (elastic) deformation; 0 = off
    intensity: str = "landmarks"  # per patient and channel, brain median and 99th percentile each to a fixed level;
    # "volume": by the 99th percentile alone; "brain": by the brain median alone; "dataset": one normalisation for all
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    seed: int = 42
    workers: int | None = None  # DataLoader worker processes
    cache: bool = True  # decode every slice once into RAM as uint8 (about 1 GB for the whole dataset)
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    amp: str = "auto"  # mixed precision: "auto" (bf16/fp16 where the hardware has it), "off", "bf16", "fp16"
    channels_last: bool = True  # NHWC memory layout, faster convolutions on GPU and CPU
    compile: bool = False  # torch.compile the model: faster steps on recent GPUs after a minute of compiling
    synthetic_patients: int = 10  # used only when no real data is found
    synthetic_slices: int = 24

    def __post_init__(self) -> None:
        if isinstance(self.augment, bool):  # configs written before the policies existed stored on/off
            self.augment = "light" if self.augment else "off"
        if self.features is not None:
            self.features = tuple(int(f) for f in self.features)
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, tuple(float(v) for v in value))
        for name, allowed in (("loss", LOSSES), ("optimizer", OPTIMIZERS), ("schedule", SCHEDULES),
                              ("intensity", INTENSITIES), ("amp", AMPS),
                             ("augment", AUGMENTS), ("norm", NORMS), ("dice_over", DICE_OVER)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.tumour_share is not None and not 0.0 < self.tumour_share < 1.0:
            raise ValueError(f"tumour_share must be between 0 and 1, got {self.tumour_share}")
        if self.image_size is not None and self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 (four 2x2 poolings), got {self.image_size}")
        if self.crop and (self.crop < 16 or self.crop % 16):
            raise ValueError(f"crop must be 0 (off) or a multiple of 16 (four 2x2 poolings), got {self.crop}")
        if self.crop and self.image_size is not None and self.crop > self.image_size:
            raise ValueError(f"crop ({self.crop}) must not exceed image_size ({self.image_size})")
        if not 0.0 < self.recall_weight < 1.0:
            raise ValueError(f"recall_weight must be between 0 and 1 (0.5 = Dice), got {self.recall_weight}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1) (0 = off; e.g. 0.99), got {self.ema}")
        if not 0.0 <= self.dice_weight <= 1.0:
            raise ValueError(f"dice_weight must be between 0 and 1, got {self.dice_weight}")
        if self.crop_on_tumour is not None and not 0.0 <= self.crop_on_tumour <= 1.0:
            raise ValueError(f"crop_on_tumour must be between 0 and 1 (a share of slices), got {self.crop_on_tumour}")
        if self.crop_on_tumour and self.crop == 0:
            raise ValueError(f"crop_on_tumour ({self.crop_on_tumour}) places training windows, but crop is 0 (whole "
                             "slices); set crop, e.g. 96 at image_size 128")
        for name in ("intensity_jitter", "channel_gain", "sequence_dropout", "elastic", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.bias_field <= 1.0:
            raise ValueError(f"bias_field must be in [0, 1] (the largest log-gain; 0 = off), got {self.bias_field}")
        if self.channel_gamma < 0:
            raise ValueError(f"channel_gamma must be 0 (off) or positive, got {self.channel_gamma}")
        if not 0.0 <= self.select_after <= 1.0:
            raise ValueError(f"select_after must be between 0 and 1, got {self.select_after}")
        if not 0.0 <= self.grow_threshold < 1.0:
            raise ValueError(f"grow_threshold must be in [0, 1) (0 = off; under threshold), got {self.grow_threshold}")
        if not 0.0 <= self.min_volume_share <= 1.0:
            raise ValueError(f"min_volume_share must be between 0 and 1, got {self.min_volume_share}")
        if self.accumulate < 1 or (self.batch_size is not None and self.batch_size % self.accumulate):
            raise ValueError(f"accumulate must be a positive divisor of batch_size ({self.batch_size}), "
                             f"got {self.accumulate}")
        if not 0.0 <= self.tumour_mix <= 1.0:
            raise ValueError(f"tumour_mix must be in [0, 1] (a share of training slices), got {self.tumour_mix}")
        if self.tumour_mix and self.context:
            raise ValueError("tumour_mix works on single slices; set context=0 or tumour_mix=0")
        if self.context < 0:
            raise ValueError(f"context must be 0 (one slice) or a positive number of slices, got {self.context}")
        if self.ensemble is not None and self.ensemble < 1:
            raise ValueError(f"ensemble must be a positive number of U-Nets (1 = a single one), got {self.ensemble}")
        if self.members > 1 and self.deep_supervision:
            raise ValueError("deep_supervision works on a single U-Net; set ensemble=1 or deep_supervision=False")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.val_fraction == 0 and (self.patience is not None or self.tune_threshold):
            raise ValueError("patience and tune_threshold need validation patients; val_fraction is 0")

    @property
    def members(self) -> int:
        """U-Nets the model is built of: ``ensemble``, or one while it is unresolved (None)."""
        return self.ensemble or 1

    @property
    def slices(self) -> int:
        """Slices the model sees at once: the slice and its ``context`` neighbours on either side."""
        return 2 * self.context + 1

    @property
    def input_channels(self) -> int:
        """Channels of the model's input: the MR sequences of each slice it sees."""
        return self.in_channels * self.slices

    def torch_device(self) -> torch.device:
        """The device this run uses: the first GPU when one is visible and ``device`` is "auto"."""
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved(self, synthetic: bool = False) -> "Config":
        """A copy with every ``None`` knob of :data:`AUTO_FIELDS` filled for this hardware and data.

        GPU: the seed's U-Net at 256x256. CPU: a pair of narrower U-Nets at a smaller size (one, smaller still,
        on synthetic tiles), so that a laptop finishes in minutes. Values the user set are kept; deep supervision
        asks for a single U-Net, and without training windows none is placed on the tumour.
        """
        if self.torch_device().type == "cuda":
            defaults = GPU_DEFAULTS
        else:
            defaults = SYNTHETIC_CPU_DEFAULTS if synthetic else CPU_DEFAULTS
        chosen = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        if "crop" in chosen:  # a share of the side, of whatever size the user picked
            chosen["crop"] = window_px(chosen.get("image_size", self.image_size), chosen["crop"])
        if "crop_on_tumour" in chosen and not chosen.get("crop", self.crop):
            chosen["crop_on_tumour"] = 0.0  # whole slices: no window to place
        if self.deep_supervision and "ensemble" in chosen:
            chosen["ensemble"] = 1
        if self.time_budget is not None and self.epochs is None:
            chosen["epochs"] = 10_000  # the budget ends the run; the schedule follows the clock
        return dataclasses.replace(self, **chosen)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        # Runs saved before these knobs existed trained on whole slices, a single U-Net with the plain Dice, without a
        # moving average and with one normalisation for the whole dataset, and were scored without filling holes.
        values = {"ensemble": 1, "crop": 0, "crop_on_tumour": 0.0, "recall_weight": 0.5, "ema": 0.0,
                  "intensity": "dataset", "fill_holes": False, **values}
        return cls(**{k: v for k, v in values.items() if k in known})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Config":
        return cls.from_dict(json.loads(Path(path).read_text()))
