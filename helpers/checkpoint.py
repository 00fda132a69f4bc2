"""Checkpoints: the unwrapped model's weights plus the resolved config that rebuilds model and preprocessing."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config
from .model import UNet


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside torch.compile / DataParallel / DistributedDataParallel, so weights load either way."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def build_model(cfg: Config) -> UNet:
    """The U-Net that ``cfg`` describes (widths must be resolved)."""
    if cfg.features is None:
        raise ValueError("cfg.features is not set: call cfg.resolved() first")
    return UNet(in_channels=cfg.in_channels, out_channels=1, features=cfg.features)


def save_checkpoint(path: str | Path, model: nn.Module, cfg: Config, **info: Any) -> None:
    """Write weights, config and ``info`` (epoch, metrics) to a temporary file, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": unwrap(model).state_dict(), "config": cfg.to_dict(), **info}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[UNet, Config, dict[str, Any]]:
    """Rebuild the model from a checkpoint; returns (model in eval mode, its config, the other saved fields)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint (expected RUN/best.pt or RUN/last.pt)")
    state = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise ValueError(f"{path}: not a checkpoint of this project (expected keys 'model' and 'config')")
    cfg = Config.from_dict(state.pop("config"))
    model = build_model(cfg)
    model.load_state_dict(state.pop("model"))
    return model.to(device).eval(), cfg, state
