"""Checkpoints: the unwrapped model's weights plus the resolved config that rebuilds model and preprocessing."""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config
from .model import Ensemble, UNet


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: corrupt, foreign, unsafe, or for another architecture."""


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside torch.compile / DataParallel / DistributedDataParallel, so weights load either way."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def build_model(cfg: Config) -> UNet | Ensemble:
    """The U-Net that ``cfg`` describes (widths must be resolved), or with ``cfg.ensemble`` > 1 an
    :class:`~helpers.model.Ensemble` of that many, each with its own random initial weights (one U-Net while
    ``ensemble`` is unresolved: :attr:`Config.members`)."""
    if cfg.features is None:
        raise ValueError("cfg.features is not set: call cfg.resolved() first")

    def unet() -> UNet:
        return UNet(in_channels=cfg.input_channels, out_channels=1, features=cfg.features, norm=cfg.norm,
                    dropout=cfg.dropout, deep_supervision=cfg.deep_supervision)

    return Ensemble([unet() for _ in range(cfg.members)]) if cfg.members > 1 else unet()


def save_checkpoint(path: str | Path, model: nn.Module, cfg: Config, **info: Any) -> None:
    """Write weights, config and ``info`` (epoch, metrics) to a temporary file, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": unwrap(model).state_dict(), "config": cfg.to_dict(), **info}, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw contents of a checkpoint of this project, loaded safely; clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint (expected RUN/best.pt or RUN/last.pt)")
    try:
        # weights_only: tensors and plain containers only. A pickle that would run code is refused here.
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line.strip() for line in str(error).splitlines()]
        detail = next((line for line in lines if "GLOBAL" in line or "Unsupported" in line), lines[0])
        raise CheckpointError(f"{path}: refused: it holds objects other than weights and settings, which "
                              f"loading would have to execute ({detail}); only load checkpoints written by "
                              "this project") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        reason = str(error).split(". ")[0]
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt ({reason})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path}: not a checkpoint of this project (expected keys 'model' and 'config')")
    return state


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[UNet | Ensemble, Config, dict[str, Any]]:
    """Rebuild the model from a checkpoint; returns (model in eval mode, its config, the other saved fields)."""
    state = read_checkpoint(path, device)
    try:
        cfg = Config.from_dict(state.pop("config"))
        model = build_model(cfg)
        model.load_state_dict(state.pop("model"))
    except (TypeError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"{path}: its weights do not fit the U-Net its config describes "
                              f"({str(error).splitlines()[0]})") from None
    return model.to(device).eval(), cfg, state
