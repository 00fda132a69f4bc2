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
