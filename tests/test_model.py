import pytest
import torch
from torch import nn

from helpers.checkpoint import load_checkpoint, save_checkpoint, unwrap
from helpers.config import Config
from helpers.model import UNet, count_parameters


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
    assert torch.allclose(loaded(x), model.module.eval()(x))
    assert not (tmp_path / "best.pt.tmp").exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
