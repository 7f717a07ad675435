"""Training losses of neural audio codecs (EnCodec: Défossez et al., 2022; DAC: Kumar et al., 2023).

- `mel_filterbank` / `MelSpectrogram` / `stft`: the hand-built spectral front end (Slaney's mel scale and
  area normalisation, librosa's defaults, or the HTK formula; no torchaudio or librosa), which lives in
  `mmar.spectral` (shared with the audio metrics of `mmar.eval.audio`) and is re-exported here;
- `MultiScaleMelLoss`: L1 between log-mel spectrograms at several window sizes (DAC: 32 ... 2048 samples);
- `MultiResolutionSTFTLoss`: spectral convergence + log-magnitude L1 at several STFT resolutions (Parallel
  WaveGAN, Yamamoto et al., 2020; auraloss);
- `MultiScaleSTFTDiscriminator`: EnCodec's MS-STFT discriminator, a small 2D conv net per STFT scale over
  the real and imaginary parts, returning logits and feature maps (the `(logits, features)` contract of
  `Tokenizer.make_discriminator`); `feature_matching_loss` and the hinge losses `discriminator_hinge_loss`
  / `generator_hinge_loss` over its scales are those of `mmar.lit.losses` (`multiscale_hinge_d_loss` /
  `multiscale_hinge_g_loss`), re-exported.

Audio is [B, C, samples] in [-1, 1]; every spectrogram is `torch.stft` with a Hann window, centred frames
(reflect padding, or zero padding when the signal is shorter than half a window) and computed in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from mmar.errors import ConfigError
from mmar.lit.losses import feature_matching_loss
from mmar.lit.losses import multiscale_hinge_d_loss as discriminator_hinge_loss
from mmar.lit.losses import multiscale_hinge_g_loss as generator_hinge_loss
from mmar.spectral import (
    MEL_SCALES,
    MelSpectrogram,
    hz_to_mel,
    mel_filterbank,
    mel_frequencies,
    mel_to_hz,
    stft,
)
from mmar.spectral import as_mono_batch as _as_mono_batch

# The spectral front end lives in mmar.spectral and the adversarial losses in mmar.lit.losses (where
# TokenizerModule calls them for any tokenizer's discriminator); both are re-exported here.
__all__ = [
    "MEL_SCALES",
    "MelSpectrogram",
    "MultiResolutionSTFTLoss",
    "MultiScaleMelLoss",
    "MultiScaleSTFTDiscriminator",
    "STFTDiscriminator",
    "discriminator_hinge_loss",
    "feature_matching_loss",
    "generator_hinge_loss",
    "hz_to_mel",
    "mel_filterbank",
    "mel_frequencies",
    "mel_to_hz",
    "stft",
]


class MultiScaleMelLoss(nn.Module):
    """DAC's multi-scale mel loss: sum over window sizes w of
    `log_weight * L1(log10(max(mel(x), eps) ** power), log10(max(mel(y), eps) ** power))`
    `+ mag_weight * L1(mel(x), mel(y))`, mel spectrograms with hop w / 4.

    Args:
        sample_rate: sample rate in Hz (needed by the mel scale).
        window_lengths: window (and FFT) sizes in samples (DAC: 32 ... 2048).
        n_mels: mel filters per window (default: 5 w / 32, DAC's 5 ... 320).
        fmin: lowest mel edge in Hz.
        fmax: highest mel edge in Hz (default: sample_rate / 2).
        clamp_eps: floor of the mel magnitudes before the log.
        power: exponent of the magnitudes inside the log (2: log power).
        log_weight: weight of the log-mel L1.
        mag_weight: weight of the linear mel L1 (DAC: 0).
    """

    def __init__(
        self,
        sample_rate: int,
        window_lengths: Sequence[int] = (32, 64, 128, 256, 512, 1024, 2048),
        n_mels: Sequence[int] | None = None,
        fmin: float = 0.0,
        fmax: float | None = None,
        clamp_eps: float = 1e-5,
        power: float = 2.0,
        log_weight: float = 1.0,
        mag_weight: float = 0.0,
    ):
        super().__init__()
        n_mels = [max(1, 5 * w // 32) for w in window_lengths] if n_mels is None else list(n_mels)
        if len(n_mels) != len(window_lengths):
            raise ConfigError(f"n_mels {n_mels} needs one entry per window length {list(window_lengths)}")
        self.mels = nn.ModuleList(
            MelSpectrogram(sample_rate, w, w // 4, m, fmin, fmax) for w, m in zip(window_lengths, n_mels)
        )
        self.clamp_eps, self.power = clamp_eps, power
        self.log_weight, self.mag_weight = log_weight, mag_weight

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss between audio x (e.g. the reconstruction) and y (the target), both [B, C, samples]."""
        loss = x.new_zeros((), dtype=torch.float32)
        for mel in self.mels:
            mx, my = mel(x), mel(y)  # [N, n_mels, frames]
            if self.log_weight:
                log_x = mx.clamp_min(self.clamp_eps).pow(self.power).log10()
                log_y = my.clamp_min(self.clamp_eps).pow(self.power).log10()
                loss = loss + self.log_weight * F.l1_loss(log_x, log_y)
            if self.mag_weight:
                loss = loss + self.mag_weight * F.l1_loss(mx, my)
        return loss


class MultiResolutionSTFTLoss(nn.Module):
    """Parallel WaveGAN's multi-resolution STFT loss, averaged over resolutions: spectral convergence
    ||S(y)| - |S(x)||_F / ||S(y)||_F plus the L1 between log magnitudes log|S(x)| and log|S(y)|.

    Args:
        fft_sizes: FFT size per resolution.
        hop_sizes: hop per resolution.
        win_lengths: Hann window length per resolution (<= its FFT size).
        eps: floor of the squared magnitudes (before the square root and the log).
    """

    def __init__(
        self,
        fft_sizes: Sequence[int] = (1024, 2048, 512),
        hop_sizes: Sequence[int] = (120, 240, 50),
        win_lengths: Sequence[int] = (600, 1200, 240),
        eps: float = 1e-7,
    ):
        super().__init__()
        if not len(fft_sizes) == len(hop_sizes) == len(win_lengths):
            raise ConfigError("fft_sizes, hop_sizes and win_lengths need one entry per resolution each")
        if any(w > n for w, n in zip(win_lengths, fft_sizes)):
            raise ConfigError(f"every win_length must be <= its fft_size, got {win_lengths} > {fft_sizes}")
        self.resolutions = list(zip(fft_sizes, hop_sizes, win_lengths))
        self.eps = eps

    def magnitude(self, x: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
        spec = stft(_as_mono_batch(x), n_fft, hop, win)  # [N, F, frames]
        return (spec.real.square() + spec.imag.square()).clamp_min(self.eps).sqrt()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Loss between audio x (e.g. the reconstruction) and y (the target), both [B, C, samples]."""
        loss = x.new_zeros((), dtype=torch.float32)
        for n_fft, hop, win in self.resolutions:
            mx, my = self.magnitude(x, n_fft, hop, win), self.magnitude(y, n_fft, hop, win)
            convergence = torch.linalg.vector_norm(my - mx) / torch.linalg.vector_norm(my)
            log_magnitude = F.l1_loss(mx.log(), my.log())
            loss = loss + convergence + log_magnitude
        return loss / len(self.resolutions)


def _padding_2d(kernel: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    return ((kernel[0] - 1) * dilation[0] // 2, (kernel[1] - 1) * dilation[1] // 2)


class STFTDiscriminator(nn.Module):
    """EnCodec's discriminator of one STFT scale: audio [B, C, samples] -> normalised complex STFT as
    2C channels (real, imaginary) over (time, frequency) -> 2D convs -> logits [B, 1, frames, F'].

    The convs are (3, 9) kernels, the next `len(dilations)` with stride 2 in frequency and dilation in
    time, then a (3, 3) conv, each with weight norm and LeakyReLU(0.2); a last (3, 3) conv gives the
    logits. Each layer's activation is returned as a feature map for the feature-matching loss.

    Args:
        in_channels: audio channels.
        filters: channels of the first conv.
        max_filters: cap on the channels (they grow by `filters_scale` per layer).
        filters_scale: channel growth per layer (EnCodec: 1).
        n_fft: FFT size.
        hop_length: hop between frames.
        win_length: Hann window length.
        dilations: time dilations of the strided layers.
    """

    def __init__(
        self,
        in_channels: int = 1,
        filters: int = 32,
        max_filters: int = 1024,
        filters_scale: int = 1,
        n_fft: int = 1024,
        hop_length: int = 256,
        win_length: int = 1024,
        dilations: Sequence[int] = (1, 2, 4),
    ):
        super().__init__()
        self.n_fft, self.hop_length, self.win_length = n_fft, hop_length, win_length
        kernel = (3, 9)
        convs = [nn.Conv2d(2 * in_channels, filters, kernel, padding=_padding_2d(kernel))]
        channels = filters
        for i, d in enumerate(dilations):
            out = min(filters_scale ** (i + 1) * filters, max_filters)
            pad = _padding_2d(kernel, (d, 1))
            convs.append(nn.Conv2d(channels, out, kernel, stride=(1, 2), dilation=(d, 1), padding=pad))
            channels = out
        out = min(filters_scale ** (len(dilations) + 1) * filters, max_filters)
        convs.append(nn.Conv2d(channels, out, (3, 3), padding=(1, 1)))
        self.convs = nn.ModuleList(weight_norm(conv) for conv in convs)
        self.conv_post = weight_norm(nn.Conv2d(out, 1, (3, 3), padding=(1, 1)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b = x.shape[0]
        spec = stft(_as_mono_batch(x), self.n_fft, self.hop_length, self.win_length, normalized=True)
        spec = spec.reshape(b, -1, *spec.shape[-2:])  # [B, C, F, frames]
        z = torch.cat([spec.real, spec.imag], dim=1).transpose(-1, -2)  # [B, 2C, frames, F]
        feats = []
        for conv in self.convs:
            z = F.leaky_relu(conv(z), 0.2)
            feats.append(z)
        return self.conv_post(z), feats  # [B, 1, frames, F'], feature maps


class MultiScaleSTFTDiscriminator(nn.Module):
    """EnCodec's MS-STFT discriminator: one `STFTDiscriminator` per STFT scale (window = FFT size, hop =
    window / 4; EnCodec: 2048, 1024, 512, 256, 128).

    Args:
        in_channels: audio channels.
        filters: channels of each scale's convs.
        n_ffts: FFT (and window) size per scale.
        hop_lengths: hop per scale (default: n_fft // 4).
        max_filters: channel cap.
        filters_scale: channel growth per layer.
        dilations: time dilations of the strided layers.
    """

    def __init__(
        self,
        in_channels: int = 1,
        filters: int = 32,
        n_ffts: Sequence[int] = (1024, 2048, 512, 256, 128),
        hop_lengths: Sequence[int] | None = None,
        max_filters: int = 1024,
        filters_scale: int = 1,
        dilations: Sequence[int] = (1, 2, 4),
    ):
        super().__init__()
        hop_lengths = [n // 4 for n in n_ffts] if hop_lengths is None else list(hop_lengths)
        if len(hop_lengths) != len(n_ffts):
            raise ConfigError(f"hop_lengths {hop_lengths} needs one entry per n_fft {list(n_ffts)}")
        self.discriminators = nn.ModuleList(
            STFTDiscriminator(in_channels, filters, max_filters, filters_scale, n, h, n, dilations)
            for n, h in zip(n_ffts, hop_lengths)
        )

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
        """Audio [B, C, samples] -> (logits [B, 1, frames_k, F_k] per scale k, feature maps per scale)."""
        logits, feats = [], []
        for disc in self.discriminators:
            logit, fmap = disc(x)
            logits.append(logit)
            feats.append(fmap)
        return logits, feats
