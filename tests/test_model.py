import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers.checkpoint import build_model, load_checkpoint, save_checkpoint, unwrap
from helpers.config import Config
from helpers.data import load_dataset
from helpers.losses import build_loss
from helpers.model import UNet, count_parameters
from helpers.train import train_run


def test_seed_unet_has_the_seed_parameter_count():
    assert count_parameters(UNet(in_channels=3, out_channels=1)) == 31_037_633


def test_seed_structure_conv_without_bias_then_batchnorm():
    model = UNet()
    first = model.downs[0]
    assert [type(m) for m in first] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU] * 2
    assert first[0].bias is None and first[0].kernel_size == (3, 3) and first[0].stride == (1, 1)
    assert model.bottleneck[3].out_channels == 1024
    assert model.ups[0].kernel_size == (2, 2) and model.ups[0].stride == (2, 2)
    assert model.final_conv.out_channels == 1 and model.final_conv.kernel_size == (1, 1)


@pytest.mark.parametrize("size", [(64, 64), (37, 50), (100, 81)])
def test_output_is_one_logit_map_of_the_input_size(size):
    model = UNet(features=(4, 8, 16, 32)).eval()
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 1, *size)


def test_checkpoint_loads_with_or_without_dataparallel(tmp_path):
    cfg = Config(features=(4, 8, 16, 32), image_size=32)
    model = nn.DataParallel(UNet(features=cfg.features))
    assert unwrap(model) is model.module
    save_checkpoint(tmp_path / "best.pt", model, cfg, epoch=3)
    loaded, loaded_cfg, info = load_checkpoint(tmp_path / "best.pt")
    assert loaded_cfg.features == (4, 8, 16, 32) and info["epoch"] == 3
    x = torch.randn(1, 3, 32, 32)
    # DataParallel moves its module to the first GPU where there is one; compare on the CPU.
    assert torch.allclose(loaded.cpu()(x), model.module.cpu().eval()(x))
    assert not (tmp_path / "best.pt.tmp").exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


def test_instance_norm_judges_each_slice_on_its_own():
    """With per-slice normalisation a slice's prediction does not depend on the other slices of its batch, and
    a uniformly brighter copy of a slice gets the same logits (the first conv has no bias)."""
    torch.manual_seed(0)
    model = UNet(features=(4, 8, 16, 32), norm="instance").train()
    assert [type(m) for m in model.downs[0]] == [nn.Conv2d, nn.InstanceNorm2d, nn.ReLU] * 2
    assert count_parameters(model) == count_parameters(UNet(features=(4, 8, 16, 32)))
    x = torch.rand(3, 3, 32, 32)
    alone = model(x[:1])
    assert torch.allclose(model(x)[:1], alone, atol=1e-5)
    assert torch.allclose(model(x[:1] * 1.7), alone, atol=1e-4)
    batch = UNet(features=(4, 8, 16, 32)).train()
    assert not torch.allclose(batch(x)[:1], batch(x[:1]), atol=1e-3)


def test_checkpoint_rebuilds_the_norm_it_was_trained_with(tmp_path):
    cfg = Config(features=(4, 8, 16, 32), image_size=32, norm="instance")
    save_checkpoint(tmp_path / "best.pt", UNet(features=cfg.features, norm="instance"), cfg)
    loaded, loaded_cfg, _ = load_checkpoint(tmp_path / "best.pt")
    assert loaded_cfg.norm == "instance" and isinstance(loaded.downs[0][1], nn.InstanceNorm2d)
    legacy = {k: v for k, v in Config(features=(4, 8, 16, 32)).to_dict().items() if k != "norm"}
    assert Config.from_dict(legacy).norm == "batch"  # runs saved before the knob used BatchNorm
    with pytest.raises(ValueError, match="norm must be one of"):
        Config(norm="group")


def test_dropout_acts_in_training_only_and_changes_no_weights(tmp_path):
    plain, dropped = UNet(features=(4, 8, 16, 32)), UNet(features=(4, 8, 16, 32), dropout=0.5)
    assert plain.state_dict().keys() == dropped.state_dict().keys()  # checkpoints load either way
    x = torch.randn(2, 3, 32, 32)
    dropped.train()
    assert not torch.allclose(dropped(x), dropped(x))
    dropped.eval()
    assert torch.equal(dropped(x), dropped(x))
    cfg = Config(features=(4, 8, 16, 32), image_size=32, dropout=0.5)
    save_checkpoint(tmp_path / "best.pt", dropped, cfg)
    loaded, loaded_cfg, _ = load_checkpoint(tmp_path / "best.pt")
    assert loaded_cfg.dropout == 0.5 and isinstance(loaded.dropout, nn.Dropout)
    with pytest.raises(ValueError, match="dropout must be in"):
        Config(dropout=1.0)


def test_deep_supervision_scores_coarse_outputs_in_training_only(tmp_path, synthetic_dir):
    torch.manual_seed(0)
    model = UNet(features=(4, 8, 16, 32), deep_supervision=True)
    x = torch.randn(2, 3, 32, 32)
    full, half, quarter = model.train()(x)
    assert full.shape == (2, 1, 32, 32) and half.shape == (2, 1, 16, 16) and quarter.shape == (2, 1, 8, 8)
    model.eval()
    assert isinstance(model(x), torch.Tensor) and model(x).shape == (2, 1, 32, 32)
    # The loss: weights 4/7, 2/7, 1/7 on the three scales, each against the mask pooled to its size.
    mask = (torch.rand(2, 1, 32, 32) > 0.7).float()
    bce = nn.BCEWithLogitsLoss()
    expected = (4 * bce(full, mask) + 2 * bce(half, F.avg_pool2d(mask, 2)) + bce(quarter, F.avg_pool2d(mask, 4))) / 7
    loss = build_loss(Config(loss="bce", deep_supervision=True))
    assert torch.allclose(loss((full, half, quarter), mask), expected)
    assert torch.allclose(loss(full, mask), bce(full, mask))  # evaluation's plain logits: the full-scale loss
    # A deeply supervised run trains, validates, and its checkpoint rebuilds the heads.
    cfg = Config(run_dir=str(tmp_path / "ds"), image_size=32, features=(4, 8, 16, 32), device="cpu", epochs=2,
                 deep_supervision=True)
    result = train_run(cfg, load_dataset(synthetic_dir), progress=False)
    assert len(result.history) == 2 and result.history["train_loss"].notna().all()
    loaded, loaded_cfg, _ = load_checkpoint(tmp_path / "ds" / "best.pt")
    assert loaded_cfg.deep_supervision and len(loaded.aux_convs) == 2
    with pytest.raises(ValueError, match="at least 3 U-Net levels"):
        UNet(features=(4, 8), deep_supervision=True)


def test_an_ensemble_averages_its_members_and_trains_each_on_its_own_loss(tmp_path, synthetic_dir):
    import copy
    import warnings

    from helpers.export import export
    from helpers.model import Ensemble

    torch.manual_seed(0)
    cfg = Config(image_size=32, features=(4, 8, 16, 32), batch_size=4, ensemble=2, device="cpu", amp="off",
                 mean=(0.3,) * 3, std=(0.2,) * 3).resolved()
    model = build_model(cfg)
    assert isinstance(model, Ensemble) and len(model.members) == 2
    x, mask = torch.randn(4, 3, 32, 32), (torch.rand(4, 1, 32, 32) > 0.8).float()
    first, second = model.eval().members[0](x), model.members[1](x)
    assert not torch.allclose(first, second)  # each member starts from its own random weights
    mean_prob = (torch.sigmoid(first) + torch.sigmoid(second)) / 2
    assert torch.allclose(torch.sigmoid(model(x)), mean_prob, atol=1e-6)
    # Training: the members' logits, each scored on its own; the loss is their mean.
    outputs = model.train()(x)
    bce = nn.BCEWithLogitsLoss()
    loss = build_loss(dataclasses.replace(cfg, loss="bce"))
    expected = (bce(outputs[0], mask) + bce(outputs[1], mask)) / 2
    assert len(outputs) == 2 and torch.allclose(loss(outputs, mask), expected)
    # Each member's gradient comes from its own output alone: member 0's is that of its own loss, halved.
    alone = copy.deepcopy(model.members[0])
    loss(outputs, mask).backward()
    (bce(alone(x), mask) / 2).backward()
    for a, b in zip(model.members[0].parameters(), alone.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-7)
    # A run trains and validates the pair; its checkpoint rebuilds both, and the exports average them too.
    run = Config(run_dir=str(tmp_path / "ens"), image_size=32, features=(4, 8, 16, 32), device="cpu", epochs=2,
                 ensemble=2)
    result = train_run(run, load_dataset(synthetic_dir), progress=False)
    assert len(result.history) == 2 and result.history["val_dice"].notna().all()
    loaded, loaded_cfg, _ = load_checkpoint(tmp_path / "ens" / "best.pt")
    assert loaded_cfg.ensemble == 2 and isinstance(loaded, Ensemble) and len(loaded.members) == 2
    with torch.no_grad():
        assert torch.allclose(loaded(x), result.model.cpu().eval()(x), atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checks = export(loaded, loaded_cfg, tmp_path / "export")
    assert checks["torchscript"]["max_abs_diff"] < 1e-6 and checks["onnx"]["max_abs_diff"] < 1e-4, checks
    with pytest.raises(ValueError, match="ensemble must be a positive"):
        Config(ensemble=0)
    with pytest.raises(ValueError, match="deep_supervision works on a single U-Net"):
        Config(ensemble=2, deep_supervision=True)
    with pytest.raises(ValueError, match="at least 2 members"):
        Ensemble([UNet(features=(4, 8))])
    legacy = {k: v for k, v in loaded_cfg.to_dict().items() if k != "ensemble"}  # written before ensembles
    assert Config.from_dict(legacy).ensemble == 1


def test_a_cpu_with_real_data_trains_a_pair_of_narrow_unets_unless_told_otherwise():
    real = Config(device="cpu").resolved()
    assert real.features == (8, 16, 32, 64) and real.ensemble == 2 and real.image_size == 128
    assert real.batch_size == 32 and Config(device="cpu").resolved(synthetic=True).batch_size == 16
    assert Config(device="cpu").resolved(synthetic=True).ensemble == 1  # synthetic tiles: one is plenty
    assert Config(device="cuda").resolved().ensemble == 1  # a GPU: the seed's single U-Net
    assert Config(device="cuda").resolved().features == (64, 128, 256, 512)
    assert Config(device="cpu", ensemble=1).resolved().ensemble == 1  # the user's choice is kept
    assert Config(device="cpu", features=(16, 32, 64, 128)).resolved().ensemble == 2
    assert Config(device="cpu", deep_supervision=True).resolved().ensemble == 1  # it needs a single U-Net
    assert isinstance(build_model(Config(features=(4, 8, 16, 32))), UNet)  # unresolved: one U-Net
