import struct

from helpers.diagram import save_unet_diagram
from helpers.model import UNet

from conftest import REPO


def _png_size(path):
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


def test_regenerates_unet_png_from_the_model(tmp_path):
    path = save_unet_diagram(tmp_path / "unet.png", UNet())
    assert _png_size(path) == _png_size(REPO / "unet.png")  # the committed picture is this code's output
    small = save_unet_diagram(tmp_path / "small.png", UNet(features=(4, 8, 16)))
    assert small.stat().st_size > 10_000


def test_an_ensemble_is_drawn_as_one_member_with_the_count_in_the_title():
    import matplotlib.pyplot as plt

    from helpers.diagram import draw_unet
    from helpers.model import Ensemble, count_parameters

    pair = Ensemble([UNet(features=(4, 8, 16)), UNet(features=(4, 8, 16))])
    fig = draw_unet(pair, 64)
    title = fig.axes[0].get_title()
    plt.close(fig)
    assert title.startswith("2 x U-Net, widths 4-8-16-32") and f"{count_parameters(pair):,} parameters" in title
