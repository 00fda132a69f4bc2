"""Draw ``unet.png`` from a U-Net instance: every block, width and arrow is read off the model itself."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, Rectangle

from .model import Ensemble, UNet, count_parameters


def _blocks(model: UNet) -> tuple[list[tuple[int, int]], tuple[int, int], list[tuple[int, int]], int]:
    """(in, out) channels of the encoder blocks, the bottleneck and the decoder blocks, and the output channels."""
    io = lambda block: (block[0].in_channels, block[3].out_channels)  # noqa: E731  (conv1 in, conv2 out)
    return ([io(b) for b in model.downs], io(model.bottleneck), [io(b) for b in model.ups[1::2]],
            model.final_conv.out_channels)


def draw_unet(model: UNet | Ensemble, image_size: int = 256) -> Figure:
    """A U-shaped diagram: encoder down the left, bottleneck at the bottom, decoder up the right (for an
    ensemble, one of its identical-looking members, the title says how many)."""
    members = len(model.members) if isinstance(model, Ensemble) else 1
    unet = model.members[0] if isinstance(model, Ensemble) else model
    downs, bottleneck, ups, out_channels = _blocks(unet)
    levels = len(downs)
    fig, ax = plt.subplots(figsize=(3.2 * levels + 4, 1.6 * levels + 2))
    dx, dy, w = 1.6, 1.6, 1.0

    def box(x: float, y: float, label: str, size: int, color: str) -> None:
        ax.add_patch(Rectangle((x - w / 2, y - 0.4), w, 0.8, facecolor=color, edgecolor="black", lw=1))
        ax.text(x, y + 0.05, label, ha="center", va="center", fontsize=9, weight="bold")
        ax.text(x, y - 0.6, f"{size}x{size}", ha="center", va="center", fontsize=7, color="dimgray")

    def arrow(a: tuple[float, float], b: tuple[float, float], color: str, style: str = "-") -> None:
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, color=color, lw=1.5, ls=style))

    sizes = [image_size // 2 ** i for i in range(levels + 1)]
    x_in, x_out = -dx, (2 * levels) * dx + dx
    box(x_in, 0, f"input\n{downs[0][0]} ch", image_size, "white")
    previous = (x_in + w / 2, 0)
    for i, (_, c_out) in enumerate(downs):
        x, y = i * dx, -i * dy
        arrow(previous, (x - w / 2, y) if i == 0 else (x, y + 0.4), "tab:red" if i else "black")
        box(x, y, f"{c_out}", sizes[i], "#9ecae1")
        previous = (x, y - 0.4)
    xb, yb = levels * dx, -levels * dy
    arrow(previous, (xb - w / 2, yb), "tab:red")
    box(xb, yb, f"{bottleneck[1]}", sizes[levels], "#fdae6b")
    previous = (xb + w / 2, yb)
    for j, (_, c_out) in enumerate(ups):
        level = levels - 1 - j
        x, y = (levels + 1 + j) * dx, -level * dy
        arrow(previous, (x - 0.2, y - 0.4), "tab:green")
        arrow((level * dx + w / 2, y), (x - w / 2, y), "gray", "--")
        box(x, y, f"{c_out}", sizes[level], "#a1d99b")
        previous = (x + w / 2, y)
    box(x_out, 0, f"logits\n{out_channels} ch", image_size, "white")
    arrow(previous, (x_out - w / 2, 0), "tab:purple")

    legend = [("boxes: DoubleConv = (3x3 conv, BN, ReLU) x2, output channels", "#3182bd"), ("2x2 max-pool", "tab:red"),
              ("2x2 transposed conv (up)", "tab:green"), ("copy skip + concatenate", "gray"),
              ("1x1 conv", "tab:purple")]
    for k, (text, color) in enumerate(legend):
        ax.text(x_out + 0.2 - 2.6 * dx, -levels * dy + 0.2 + 0.45 * (len(legend) - k), "■ " + text, color=color,
                fontsize=9, va="center")
    ax.set_title(f"{f'{members} x ' if members > 1 else ''}U-Net, widths "
                 f"{'-'.join(str(c) for _, c in downs)}-{bottleneck[1]}, {count_parameters(model):,} parameters",
                 fontsize=12)
    ax.set_xlim(x_in - 1, x_out + 1)
    ax.set_ylim(-levels * dy - 1.0, 0.8)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.tight_layout()
    return fig


def save_unet_diagram(path: str | Path = "unet.png", model: UNet | None = None, image_size: int = 256) -> Path:
    """Write the diagram of ``model`` (default: the seed U-Net) to ``path``."""
    fig = draw_unet(model if model is not None else UNet(), image_size)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
