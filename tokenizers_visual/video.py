"""Causal 3D-conv video tokenizer with finite scalar quantisation (FSQ).

The autoencoder follows MAGVIT-v2 (Yu et al., 2024, "Language Model Beats Diffusion — Tokenizer is Key
to Visual Generation") and CV-VAE (Zhao et al., 2024): every 3D conv is *causal in time* — its temporal
padding (`kernel_t - 1` frames, replicated first frame or zeros) goes only before the first frame — so an
output frame never sees later input frames. Time is downsampled by stride-2 causal convs, so a clip of
`T = 1 + k * t_down` frames becomes `1 + k` latent frames and the first frame is coded alone: an image is
a one-frame video, and latent frame j depends only on input frames `<= j * t_down`. The decoder mirrors the
encoder: nearest-neighbour upsampling in space, depth-to-time upsampling in time (a causal conv makes
`2 C` channels that become two frames; the frame before the first one is dropped), so decoded frame t
depends only on latent frames `<= ceil(t / t_down)`.

GroupNorm normalises each frame on its own (over channels and space, never over time): a norm over the
whole clip would leak statistics of future frames into past ones and break causality. Every causal conv
starts as a 2D conv of the current frame (taps on past frames zero, as when an image network is inflated
to 3D): with all taps random, each layer blurs the digit over past positions and training stalls at
blank-frame reconstructions (moving digits, 200 steps: 14 dB PSNR instead of 18 dB).

The latents (one channel per FSQ level) are quantised by FSQ (Mentzer et al., 2024, "Finite Scalar
Quantization: VQ-VAE Made Simple", via `vector_quantize_pytorch.FSQ`): each channel is bounded and
rounded to `levels[i]` values, the implicit codebook has `prod(levels)` codes, there is no codebook
to learn and no auxiliary loss; gradients pass the rounding straight through. Videos are in [-1, 1].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from vector_quantize_pytorch import FSQ

from mmar.errors import ConfigError
from mmar.tokenizer import Tokenizer, register_tokenizer
from tokenizers_visual.nets import group_norm

PAD_MODES = ("replicate", "zeros")


def _triple(value: int | Sequence[int]) -> tuple[int, int, int]:
    return (value,) * 3 if isinstance(value, int) else tuple(value)  # type: ignore[return-value]


class CausalConv3d(nn.Module):
    """3D conv over [B, C, T, H, W] that is causal in time: output frame t sees input frames <= t only.

    The input is padded with `kernel_t - 1` frames before the first frame (copies of it, or zeros) and
    none after; space is zero-padded symmetrically (`kernel // 2`). With temporal stride s the output
    has `(T - 1) // s + 1` frames and output frame j sees input frames `j * s - kernel_t + 1 .. j * s`.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: (kernel_t, kernel_h, kernel_w) or one int for all three.
        stride: (stride_t, stride_h, stride_w) or one int for all three.
        pad_mode: "replicate" (repeat the first frame, as CV-VAE) or "zeros".
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        stride: int | Sequence[int] = 1,
        pad_mode: str = "replicate",
    ):
        super().__init__()
        if pad_mode not in PAD_MODES:
            raise ConfigError(f"temporal padding must be one of {PAD_MODES}, got '{pad_mode}'")
        kt, kh, kw = _triple(kernel_size)
        self.time_pad = kt - 1
        self.pad_mode = pad_mode
        self.conv = nn.Conv3d(
            in_channels, out_channels, (kt, kh, kw), stride=_triple(stride), padding=(0, kh // 2, kw // 2)
        )
        with torch.no_grad():  # start as a 2D conv of the current frame (an image net inflated to 3D)
            self.conv.weight[:, :, :-1].zero_()  # taps on past frames: learned from zero
            self.conv.weight[:, :, -1].mul_(math.sqrt(kt))  # the fan-in of a 2D conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.time_pad:
            if self.pad_mode == "replicate":
                front = x[:, :, :1].expand(-1, -1, self.time_pad, -1, -1)  # [B, C, kt-1, H, W]
            else:
                front = x.new_zeros(*x.shape[:2], self.time_pad, *x.shape[3:])  # [B, C, kt-1, H, W]
            x = torch.cat([front, x], dim=2)  # [B, C, T + kt - 1, H, W]
        return self.conv(x)  # [B, C_out, (T - 1) // s_t + 1, H', W']


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm applied to each frame of [B, C, T, H, W] separately (keeps the network causal in time)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        return rearrange(super().forward(frames), "(b t) c h w -> b c t h w", b=b)


def frame_norm(channels: int) -> FrameGroupNorm:
    """Per-frame GroupNorm with the same group count as the image nets' `group_norm`."""
    return FrameGroupNorm(group_norm(channels).num_groups, channels, eps=1e-6)


class ResBlock3d(nn.Module):
    """Pre-activation residual block: (per-frame GroupNorm, SiLU, causal 3x3x3 conv) x 2."""

    def __init__(self, in_ch: int, out_ch: int, pad_mode: str = "replicate"):
        super().__init__()
        self.body = nn.Sequential(
            frame_norm(in_ch),
            nn.SiLU(),
            CausalConv3d(in_ch, out_ch, 3, pad_mode=pad_mode),
            frame_norm(out_ch),
            nn.SiLU(),
            CausalConv3d(out_ch, out_ch, 3, pad_mode=pad_mode),
        )
        self.skip = nn.Conv3d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)  # [B, out_ch, T, H, W]


class Upsample3d(nn.Module):
    """x2 upsampling in space (nearest) and, on temporal stages, in time (depth-to-time), then a causal conv.

    In time, as MAGVIT-v2's depth-to-space: a causal conv makes 2C channels per frame, split into two
    frames, so latent frame j gives frames 2j - 1 and 2j, each with its own features (a plain repeat would
    give both the same); the frame before frame 0 is dropped, so T frames become 2T - 1 and no output
    frame sees a later input frame.
    """

    def __init__(self, ch: int, temporal: bool, pad_mode: str = "replicate"):
        super().__init__()
        self.to_time = CausalConv3d(ch, 2 * ch, 3, pad_mode=pad_mode) if temporal else None
        self.conv = CausalConv3d(ch, ch, 3, pad_mode=pad_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.to_time is not None:
            x = rearrange(self.to_time(x), "b (r c) t h w -> b c (t r) h w", r=2)  # [B, C, 2T, H, W]
            x = x[:, :, 1:]  # [B, C, 2T - 1, H, W]: drop the frame before frame 0
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")  # [B, C, T', 2H, 2W]
        return self.conv(x)


def _temporal_stages(num_stages: int, temporal_downsample: int) -> list[bool]:
    """Which of the encoder's `num_stages` downsampling stages also halve time: the last log2(t_down) ones.

    As in MAGVIT-v2, time is halved where the features are already wide: halving it at the first,
    narrowest stage squeezes 2 x 2 x 2 voxels into a few channels and training stalls on blank frames.
    """
    num_temporal = int(math.log2(temporal_downsample))
    return [i >= num_stages - num_temporal for i in range(num_stages)]


class CausalEncoder3d(nn.Module):
    """Videos [B, C, T, H, W] -> latents [B, z, 1 + (T - 1) / t_down, H / s, W / s], causal in time.

    Args:
        in_channels: video channels.
        ch: base channel count; resolution i has `ch * ch_mult[i]` channels.
        ch_mult: channel multiplier per resolution; `len(ch_mult) - 1` stride-2 stages.
        num_res_blocks: ResBlocks per resolution.
        z_channels: channels of the output latents.
        temporal_downsample: 2 ** k, k <= len(ch_mult) - 1; the last k stages also halve time.
        pad_mode: temporal padding of every causal conv, "replicate" or "zeros".
    """

    def __init__(
        self,
        in_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        z_channels: int,
        temporal_downsample: int,
        pad_mode: str = "replicate",
    ):
        super().__init__()
        widths = [ch * m for m in ch_mult]
        temporal = _temporal_stages(len(widths) - 1, temporal_downsample)
        layers: list[nn.Module] = [CausalConv3d(in_channels, ch, 3, pad_mode=pad_mode)]
        prev = ch
        for i, width in enumerate(widths):
            layers += [ResBlock3d(prev if j == 0 else width, width, pad_mode) for j in range(num_res_blocks)]
            prev = width
            if i < len(widths) - 1:  # halves H and W (and T - 1 on temporal stages)
                layers.append(CausalConv3d(width, width, 3, (2 if temporal[i] else 1, 2, 2), pad_mode))
        layers += [ResBlock3d(prev, prev, pad_mode), ResBlock3d(prev, prev, pad_mode)]  # middle
        layers += [frame_norm(prev), nn.SiLU(), CausalConv3d(prev, z_channels, 3, pad_mode=pad_mode)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # [B, C, T, H, W] -> [B, z, t, h, w]


class CausalDecoder3d(nn.Module):
    """Latents [B, z, t, h, w] -> videos [B, C, 1 + (t - 1) * t_down, h * s, w * s]; the encoder mirrored.

    Args are those of `CausalEncoder3d` (`out_channels` for `in_channels`).
    """

    def __init__(
        self,
        out_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        z_channels: int,
        temporal_downsample: int,
        pad_mode: str = "replicate",
    ):
        super().__init__()
        widths = [ch * m for m in reversed(ch_mult)]
        temporal = _temporal_stages(len(widths) - 1, temporal_downsample)[::-1]  # mirrors the encoder
        prev = widths[0]
        layers: list[nn.Module] = [CausalConv3d(z_channels, prev, 3, pad_mode=pad_mode)]
        layers += [ResBlock3d(prev, prev, pad_mode), ResBlock3d(prev, prev, pad_mode)]  # middle
        for i, width in enumerate(widths):
            layers += [ResBlock3d(prev if j == 0 else width, width, pad_mode) for j in range(num_res_blocks)]
            prev = width
            if i < len(widths) - 1:
                layers.append(Upsample3d(width, temporal[i], pad_mode))
        layers += [frame_norm(prev), nn.SiLU(), CausalConv3d(prev, out_channels, 3, pad_mode=pad_mode)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # [B, z, t, h, w] -> [B, C, T, H, W]


def _check_power_of_two(name: str, value: int, example: str) -> int:
    if value < 1 or value & (value - 1):
        raise ConfigError(f"{name}={value} must be a power of two (1, 2, 4, ...); e.g. {name}={example}")
    return int(value)


def _check_args(
    spatial_downsample: int, temporal_downsample: int, ch_mult: Sequence[int] | None, levels: Sequence[int]
) -> tuple[int, int, list[int], list[int]]:
    """Validated (s, t_down, ch_mult, levels) of a VideoFSQTokenizer; ConfigError naming the fix otherwise."""
    s = _check_power_of_two("spatial_downsample", spatial_downsample, "8")
    td = _check_power_of_two("temporal_downsample", temporal_downsample, "4")
    if td > s:
        raise ConfigError(
            f"temporal_downsample={td} > spatial_downsample={s}: time is halved on spatial stages only; "
            f"use temporal_downsample <= {s} or a larger spatial_downsample"
        )
    default_mult = [min(2**i, 4) for i in range(int(math.log2(s)) + 1)]
    ch_mult = default_mult if ch_mult is None else [int(m) for m in ch_mult]
    if len(ch_mult) != len(default_mult):
        raise ConfigError(
            f"ch_mult={ch_mult} needs log2(spatial_downsample) + 1 = {len(default_mult)} entries (one per "
            f"resolution) for spatial_downsample={s}; e.g. ch_mult={default_mult}"
        )
    levels = [int(v) for v in levels]
    if not levels or min(levels) < 3:
        raise ConfigError(f"FSQ levels={levels} must be a non-empty list of ints >= 3; e.g. [8, 5, 5, 5]")
    return s, td, ch_mult, levels


@register_tokenizer
class VideoFSQTokenizer(Tokenizer):
    """Discrete video tokenizer: videos [B, C, T, H, W] <-> ids [B, 1 + (T - 1) / t_down, H / s, W / s].

    Args:
        in_channels: video channels (1 for grayscale, 3 for RGB).
        ch: base channel count of the encoder/decoder.
        ch_mult: channel multiplier per resolution, `log2(spatial_downsample) + 1` entries
            (default: 1, 2, 4, 4, ...).
        num_res_blocks: ResBlocks per resolution.
        levels: FSQ levels, one latent channel each (each >= 3); vocab_size = prod(levels). FSQ paper
            presets: [8, 5, 5, 5] (1,000 codes), [8, 8, 8, 5, 5, 5] (64,000 codes).
        spatial_downsample: s, a power of two; H and W must be multiples of s.
        temporal_downsample: t_down, a power of two <= s; clips must have T = 1 + k * t_down frames.
        temporal_padding: what the causal convs put before the first frame, "replicate" or "zeros".
    """

    name = "video_fsq"
    kind = "discrete"
    modality = "video"

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 64,
        ch_mult: Sequence[int] | None = None,
        num_res_blocks: int = 2,
        levels: Sequence[int] = (8, 5, 5, 5),
        spatial_downsample: int = 8,
        temporal_downsample: int = 4,
        temporal_padding: str = "replicate",
    ):
        super().__init__()
        s, td, ch_mult, levels = _check_args(spatial_downsample, temporal_downsample, ch_mult, levels)
        if temporal_padding not in PAD_MODES:
            raise ConfigError(f"temporal_padding must be one of {PAD_MODES}, got '{temporal_padding}'")
        self.config = {
            "in_channels": in_channels,
            "ch": ch,
            "ch_mult": ch_mult,
            "num_res_blocks": num_res_blocks,
            "levels": levels,
            "spatial_downsample": s,
            "temporal_downsample": td,
            "temporal_padding": temporal_padding,
        }
        self.in_channels = in_channels
        self.downsample = s
        self.temporal_downsample = td
        self.vocab_size = math.prod(levels)
        net_args = (ch, ch_mult, num_res_blocks, len(levels), td, temporal_padding)
        self.encoder = CausalEncoder3d(in_channels, *net_args)
        self.decoder = CausalDecoder3d(in_channels, *net_args)
        self.quantizer = FSQ(levels=levels)  # dim = len(levels): no projections, nothing to learn

    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Token grid (1 + (T - 1) / t_down, H / s, W / s) of a video (C, T, H, W); ConfigError if unfit."""
        if len(input_shape) != 4:
            raise ConfigError(
                f"the {self.name} tokenizer takes videos of shape (C, T, H, W), got {tuple(input_shape)}; "
                "use a video DataModule (batch['video'] [B, C, T, H, W]) or an image tokenizer"
            )
        c, t, h, w = input_shape
        spatial = super().grid((c, h, w))  # checks channels and H, W divisibility
        td = self.temporal_downsample
        if t < 1 or (t - 1) % td:
            raise ConfigError(
                f"num_frames T={t} does not fit temporal_downsample={td}: T - 1 must be a multiple of {td} "
                f"(the first frame is coded alone); use T = 1 + k * {td}, e.g. {1 + 2 * td}"
            )
        return (1 + (t - 1) // td, *spatial)

    def frames_of(self, latent_frames: int) -> int:
        """Video frames that the first `latent_frames` latent frames code, and decode to: the first frame
        alone, then `temporal_downsample` frames each (the decoder is causal in time)."""
        return 1 + (latent_frames - 1) * self.temporal_downsample if latent_frames > 0 else 0

    def check_input(self, x: torch.Tensor) -> None:
        """Validate a video batch [B, C, T, H, W] against this tokenizer (ConfigError otherwise)."""
        if x.ndim != 5:
            raise ConfigError(f"expected videos of shape [B, C, T, H, W], got {tuple(x.shape)}")
        self.grid(tuple(x.shape[1:]))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Autoencode a batch.

        Args:
            x: videos [B, C, T, H, W] in [-1, 1], T = 1 + k * temporal_downsample.

        Returns:
            recon [B, C, T, H, W], ids [B, t, h, w] (long) and the auxiliary loss, always 0 (FSQ has
            no codebook or commitment loss).
        """
        self.check_input(x)
        zq, ids = self._quantize(self.encoder(x))  # [B, L, t, h, w], [B, t, h, w]
        return self.decoder(zq), ids, x.new_zeros(())

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Videos [B, C, T, H, W] in [-1, 1] -> ids [B, 1 + (T - 1) / t_down, H / s, W / s] (long)."""
        self.check_input(x)
        return self._quantize(self.encoder(x))[1]

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids [B, t, h, w] -> videos [B, C, 1 + (t - 1) * t_down, h * s, w * s] (roughly in [-1, 1])."""
        self._check_ids(ids)
        with torch.autocast(device_type=ids.device.type, enabled=False):
            zq = self.quantizer.indices_to_codes(ids)  # [B, L, t, h, w]
        return self.decoder(zq)

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """FSQ in fp32, even under autocast: latents [B, L, t, h, w] -> (codes [B, L, t, h, w], ids)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            zq, ids = self.quantizer(z.float())  # channel-first in and out
        return zq, ids.long()

    def _check_ids(self, ids: torch.Tensor) -> None:
        """Raise ConfigError unless `ids` is an integer tensor [B, t, h, w] with values in [0, vocab_size)."""
        if ids.ndim != 4 or ids.is_floating_point() or ids.is_complex():
            raise ConfigError(
                f"decode expects integer ids of shape [B, t, h, w], got {tuple(ids.shape)} {ids.dtype}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ConfigError(
                f"ids must lie in [0, {self.vocab_size}) for this tokenizer (prod(levels)="
                f"{self.vocab_size}), got values in [{int(ids.min())}, {int(ids.max())}]; check that the "
                "generator's vocab_size matches the tokenizer's"
            )
