"""Numeric precision and memory layout: mixed precision (bf16 / fp16) and channels-last, chosen per device.

On this project's CPU (AVX-512 with native bf16) bf16 autocast plus channels-last makes the CPU-default U-Net's
training step 2.5x faster than fp32 (``python benchmarks/precision_speed.py``). Weights, optimizer state and
losses stay fp32.
"""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch
from torch import nn

from .config import Config


def cpu_has_bf16() -> bool:
    """True when oneDNN runs bf16 natively here (AVX-512 BF16 or AMX); elsewhere bf16 would be emulated, slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def amp_dtype(cfg: Config) -> torch.dtype | None:
    """The autocast dtype for ``cfg.amp`` on ``cfg``'s device, or None for full fp32.

    "auto": bf16 on GPUs that support it, fp16 on older GPUs (T4), bf16 on CPUs with native bf16, else fp32.
    """
    device = cfg.torch_device()
    if cfg.amp == "off":
        return None
    if cfg.amp == "fp16":
        return torch.float16
    if cfg.amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else None


def autocast(cfg: Config) -> ContextManager:
    """The autocast context for forward passes (a no-op in fp32)."""
    dtype = amp_dtype(cfg)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(cfg.torch_device().type, dtype=dtype)


def grad_scaler(cfg: Config) -> torch.amp.GradScaler:
    """Loss scaling, needed only for fp16 (its narrow exponent underflows small gradients); disabled otherwise."""
    device = cfg.torch_device()
    return torch.amp.GradScaler(device.type, enabled=amp_dtype(cfg) == torch.float16 and device.type == "cuda")


def to_layout(tensor: torch.Tensor, cfg: Config) -> torch.Tensor:
    """A batch in channels-last layout when ``cfg.channels_last``, matching :func:`place_model`."""
    return tensor.contiguous(memory_format=torch.channels_last) if cfg.channels_last else tensor


def place_model(model: nn.Module, cfg: Config) -> nn.Module:
    """``model`` on ``cfg``'s device, in channels-last layout when ``cfg.channels_last`` (in place; returned)."""
    layout = torch.channels_last if cfg.channels_last else torch.preserve_format
    return model.to(cfg.torch_device(), memory_format=layout)
