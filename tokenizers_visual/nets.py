"""Convolutional encoder and decoder of the VQGAN autoencoder (Esser et al., 2021, "Taming Transformers").

The encoder is a stack of resolutions: at each one `num_res_blocks` ResBlocks (GroupNorm + SiLU + 3x3
conv), then a stride-2 conv down to the next resolution; the decoder mirrors it with nearest-neighbour
upsampling + a 3x3 conv. `ch_mult` has one entry per resolution, so the downsampling factor is
`2 ** (len(ch_mult) - 1)`. LlamaGen's VQ-16 is `ch=128, ch_mult=(1, 1, 2, 2, 4), z_channels=256`.
The attention blocks of VQGAN's middle stage are left out: at the grid sizes used here they add little.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def group_norm(channels: int, max_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= `max_groups` that divides `channels`."""
    groups = max(g for g in range(1, max_groups + 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, conv3x3) x 2, 1x1 skip when channels change."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.body = nn.Sequential(
            group_norm(in_ch),
            nn.SiLU(),
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
            group_norm(out_ch),
            nn.SiLU(),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)  # [B, out_ch, H, W]


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 conv (avoids transposed-conv checkerboards)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, scale_factor=2.0, mode="nearest")  # [B, C, 2H, 2W]
        return self.conv(x)


def _stage(in_ch: int, out_ch: int, num_res_blocks: int) -> list[nn.Module]:
    """`num_res_blocks` ResBlocks taking `in_ch` to `out_ch` channels."""
    return [ResBlock(in_ch if i == 0 else out_ch, out_ch) for i in range(num_res_blocks)]


class Encoder(nn.Module):
    """Images [B, in_channels, H, W] -> features [B, z_channels, H / f, W / f], f = 2 ** (len(ch_mult) - 1).

    Args:
        in_channels: image channels (1 for grayscale, 3 for RGB).
        ch: base channel count; resolution i has `ch * ch_mult[i]` channels.
        ch_mult: channel multiplier per resolution.
        num_res_blocks: ResBlocks per resolution.
        z_channels: channels of the output feature map.
    """

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
    ):
        super().__init__()
        widths = [ch * m for m in ch_mult]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ch, 3, padding=1)]
        prev = ch
        for i, width in enumerate(widths):
            layers += _stage(prev, width, num_res_blocks)
            prev = width
            if i < len(widths) - 1:
                layers.append(nn.Conv2d(width, width, 3, stride=2, padding=1))  # halves H and W
        layers += [ResBlock(prev, prev), ResBlock(prev, prev)]  # middle
        layers += [group_norm(prev), nn.SiLU(), nn.Conv2d(prev, z_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # [B, C, H, W] -> [B, z_channels, h, w]


class Decoder(nn.Module):
    """Features [B, z_channels, h, w] -> images [B, out_channels, h * f, w * f]; the Encoder mirrored.

    Args:
        out_channels: image channels.
        ch: base channel count (as in the Encoder).
        ch_mult: channel multiplier per resolution (as in the Encoder; walked from the last).
        num_res_blocks: ResBlocks per resolution.
        z_channels: channels of the input feature map.
    """

    def __init__(
        self,
        out_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
    ):
        super().__init__()
        widths = [ch * m for m in reversed(ch_mult)]
        prev = widths[0]
        layers: list[nn.Module] = [nn.Conv2d(z_channels, prev, 3, padding=1)]
        layers += [ResBlock(prev, prev), ResBlock(prev, prev)]  # middle
        for i, width in enumerate(widths):
            layers += _stage(prev, width, num_res_blocks)
            prev = width
            if i < len(widths) - 1:
                layers.append(Upsample(width))  # doubles H and W
        layers += [group_norm(prev), nn.SiLU(), nn.Conv2d(prev, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # [B, z_channels, h, w] -> [B, C, H, W]
