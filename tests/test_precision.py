"""Mixed precision and memory layout: chosen per device, and numerically close to fp32."""
import pytest
import torch

from helpers.checkpoint import build_model
from helpers.config import Config
from helpers.precision import amp_dtype, autocast, cpu_has_bf16, grad_scaler, place_model, to_layout


def test_amp_choice_follows_the_setting_and_the_hardware():
    assert amp_dtype(Config(device="cpu", amp="off")) is None
    assert amp_dtype(Config(device="cpu", amp="bf16")) is torch.bfloat16
    assert amp_dtype(Config(device="cpu", amp="auto")) is (torch.bfloat16 if cpu_has_bf16() else None)
    assert not grad_scaler(Config(device="cpu", amp="bf16")).is_enabled()  # only fp16 on a GPU needs scaling


def test_bf16_channels_last_forward_matches_fp32():
    torch.manual_seed(0)
    cfg = Config(device="cpu", image_size=32, features=(8, 16, 32, 64), amp="bf16")
    model = build_model(cfg).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = torch.sigmoid(model(images))
        place_model(model, cfg)
        with autocast(cfg):
            mixed = torch.sigmoid(model(to_layout(images, cfg)).float())
    assert to_layout(images, cfg).is_contiguous(memory_format=torch.channels_last)
    assert mixed.shape == reference.shape
    assert (mixed - reference).abs().max() < 0.05


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_a_training_step_runs_in_each_precision(amp):
    from helpers.losses import build_loss
    from helpers.train import make_optimizer, parallelize, train_step

    torch.manual_seed(0)
    cfg = Config(device="cpu", image_size=32, features=(4, 8, 16, 32), amp=amp, lr=1e-2, loss="bce_dice")
    model = parallelize(build_model(cfg), cfg)
    optimizer, loss_fn, scaler = make_optimizer(cfg, model), build_loss(cfg), grad_scaler(cfg)
    images = to_layout(torch.randn(4, 3, 32, 32), cfg)
    masks = (torch.rand(4, 1, 32, 32) > 0.8).float()
    losses = []
    for _ in range(5):
        losses.append(train_step(model, images, masks, loss_fn, optimizer, scaler, cfg))
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32
    assert losses[-1] < losses[0]
