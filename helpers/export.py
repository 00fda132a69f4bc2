"""TorchScript and ONNX exports of a trained model, for use without this package.

The exported graph holds the resize to the model's input size, the per-channel normalisation, the model, the
resize back and the sigmoid. Its input is a batch of slices (N, 3, 256, 256), float32 in 0..255 (RGB:
pre-contrast, FLAIR, post-contrast), already scaled per volume when the checkpoint's ``intensity`` asks for it;
its output is the tumour probability (N, 1, 256, 256). A model trained with neighbouring slices
(``context`` c > 0) takes (N, 3 * (2c + 1), 256, 256): slices -c .. +c of the volume, three channels each, the
first or last slice repeated past the volume's ends. The threshold and the clean-up stay outside, written
next to the export in ``preprocessing.json``.
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import unwrap
from .config import Config
from .data import BRAIN_LEVEL, LANDMARK_LEVEL

SLICE_SIZE = 256  # the dataset's slices


class Deployable(nn.Module):
    """Preprocessing + U-Net + sigmoid in one fp32 module: what the exports hold."""

    def __init__(self, model: nn.Module, cfg: Config, input_size: int = SLICE_SIZE) -> None:
        super().__init__()
        if input_size % cfg.image_size:
            raise ValueError(f"the export's input size {input_size} must be a multiple of the model's "
                             f"image size {cfg.image_size}")
        self.model = copy.deepcopy(unwrap(model)).float().cpu().eval()  # the caller's model stays as it is
        self.input_size, self.factor = input_size, input_size // cfg.image_size
        self.channels = cfg.input_channels
        mean, std = cfg.mean * cfg.slices, cfg.std * cfg.slices  # each sequence's statistics, once per slice
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.factor > 1:  # cv2.INTER_AREA at an integer factor is this average
            x = F.avg_pool2d(x, self.factor)
        logits = self.model((x - self.mean) / self.std)
        if self.factor > 1:
            logits = F.interpolate(logits, size=(self.input_size, self.input_size), mode="bilinear",
                                   align_corners=False)
        return torch.sigmoid(logits)


def example_input(batch: int = 2, size: int = SLICE_SIZE, seed: int = 0, channels: int = 3) -> torch.Tensor:
    """A random batch in the exports' input range, for tracing and checking."""
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed)) * 255


def export_torchscript(module: Deployable, path: str | Path) -> Path:
    """Trace ``module`` to TorchScript (any batch size, 256x256 slices). TorchScript is deprecated in recent
    PyTorch but still loads with ``torch.jit.load``; ONNX is the portable choice."""
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notice and shape checks frozen at 256x256, both expected
        traced = torch.jit.trace(module.cpu().eval(), example_input(channels=module.channels))
        traced.save(str(path))
    return path


def export_onnx(module: Deployable, path: str | Path) -> Path:
    """Export ``module`` to one ONNX file (input "image", output "probability", batch size free)."""
    path = Path(path)
    batch = torch.export.Dim("batch", min=1, max=4096)
    names = {"input_names": ["image"], "output_names": ["probability"]}
    example = example_input(channels=module.channels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module.cpu().eval(), (example,), dynamo=True, verbose=False,
                                        dynamic_shapes={"x": {0: batch}}, **names)
        except TypeError:  # PyTorch before 2.5: the TorchScript-based exporter writes the file itself
            torch.onnx.export(module.cpu().eval(), (example,), str(path), opset_version=17,
                              dynamic_axes={"image": {0: "batch"}, "probability": {0: "batch"}}, **names)
            return path
    program.save(str(path), external_data=False)
    return path


def run_torchscript(path: str | Path, x: torch.Tensor) -> np.ndarray:
    """Probabilities from a TorchScript export, loaded as a user without this package would."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path)).eval()(x).detach().numpy()


def run_onnx(path: str | Path, x: torch.Tensor) -> np.ndarray:
    """Probabilities from an ONNX export, run by ONNX Runtime on CPU."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": x.numpy()})[0]


def export(model: nn.Module, cfg: Config, out_dir: str | Path, formats: tuple[str, ...] = ("torchscript", "onnx"),
           check_batch: int = 3) -> dict[str, dict]:
    """Write the exports and ``preprocessing.json`` to ``out_dir``; check each against PyTorch on a batch of
    ``check_batch`` random slices. Returns per format its path and the max abs difference in probability."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module = Deployable(model, cfg)
    x = example_input(check_batch, seed=1, channels=module.channels)
    with torch.no_grad():
        reference = module(x).numpy()
    runners = {"torchscript": (export_torchscript, run_torchscript, "model.torchscript.pt"),
               "onnx": (export_onnx, run_onnx, "model.onnx")}
    if unknown := set(formats) - set(runners):
        raise ValueError(f"unknown export format(s) {sorted(unknown)}; expected {sorted(runners)}")
    results = {}
    for name in formats:
        write, run, filename = runners[name]
        path = write(module, out_dir / filename)
        results[name] = {"path": str(path), "max_abs_diff": float(np.abs(run(path, x) - reference).max())}
    slices = (f", for slices -{cfg.context}..+{cfg.context} in turn (the first or last slice repeated past the "
              "volume's ends)" if cfg.context else "")
    preprocessing = {
        "input": f"float32 (N, {module.channels}, {SLICE_SIZE}, {SLICE_SIZE}), RGB = pre-contrast, FLAIR, "
                 f"post-contrast, 0..255{slices}",
        "context": cfg.context, "intensity": cfg.intensity, "brain_level": BRAIN_LEVEL,
        "landmark_level": LANDMARK_LEVEL, "threshold": cfg.threshold,
        "tta": cfg.tta, "min_component": cfg.min_component, "min_volume_share": cfg.min_volume_share,
        "grow_threshold": cfg.grow_threshold, "fill_holes": cfg.fill_holes,
        "model_image_size": cfg.image_size, "features": list(cfg.features), "mean": list(cfg.mean),
        "std": list(cfg.std), "checks": results}
    (out_dir / "preprocessing.json").write_text(json.dumps(preprocessing, indent=2) + "\n")
    return results
