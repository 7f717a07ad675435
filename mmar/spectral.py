"""The spectral front end shared by audio losses and audio metrics, built by hand so that no torchaudio or
librosa is needed:

- `hz_to_mel` / `mel_to_hz` / `mel_frequencies`: Slaney's mel scale (librosa's default) or HTK's formula;
- `mel_filterbank`: triangular mel filters, as `librosa.filters.mel` (Slaney area normalisation or peak 1);
- `log_frequency_filterbank`: constant-Q-like triangular filters on a log-frequency (semitone) axis;
- `stft`: a complex STFT with a Hann window and centred frames, always in fp32;
- `MelSpectrogram`: audio [B, C, samples] -> mel magnitudes [B * C, n_mels, frames].

Audio is [B, C, samples] in [-1, 1]; every spectrogram is `torch.stft` with a Hann window, centred frames
(reflect padding, or zero padding when the signal is shorter than half a window) and computed in fp32.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmar.errors import ConfigError

MEL_SCALES = ("slaney", "htk")


def hz_to_mel(freqs: torch.Tensor, scale: str = "slaney") -> torch.Tensor:
    """Frequencies in Hz -> mels: HTK's 2595 log10(1 + f / 700), or Slaney's (librosa's default) scale,
    linear below 1 kHz (3 bins per 200 Hz) and logarithmic above (27 bins per factor 6.4)."""
    freqs = torch.as_tensor(freqs, dtype=torch.float64)
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + freqs / 700.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    logstep = math.log(6.4) / 27.0
    linear = freqs / f_sp
    log = min_log_hz / f_sp + torch.log(freqs.clamp_min(min_log_hz) / min_log_hz) / logstep
    return torch.where(freqs >= min_log_hz, log, linear)


def mel_to_hz(mels: torch.Tensor, scale: str = "slaney") -> torch.Tensor:
    """The inverse of `hz_to_mel`."""
    mels = torch.as_tensor(mels, dtype=torch.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    log = min_log_hz * torch.exp(logstep * (mels - min_log_mel))
    return torch.where(mels >= min_log_mel, log, f_sp * mels)


def mel_frequencies(n_mels: int, fmin: float, fmax: float, scale: str = "slaney") -> torch.Tensor:
    """`n_mels` frequencies in Hz [n_mels] (float64), evenly spaced on the mel scale from fmin to fmax."""
    low, high = hz_to_mel(torch.tensor(fmin), scale), hz_to_mel(torch.tensor(fmax), scale)
    return mel_to_hz(torch.linspace(float(low), float(high), n_mels, dtype=torch.float64), scale)


def mel_filterbank(
    sample_rate: int,
    n_fft: int,
    n_mels: int,
    fmin: float = 0.0,
    fmax: float | None = None,
    scale: str = "slaney",
    norm: str | None = "slaney",
) -> torch.Tensor:
    """Triangular mel filters [n_mels, n_fft // 2 + 1] (float32), as `librosa.filters.mel`.

    Filter i rises linearly from the (i)-th to the (i + 1)-th of `n_mels + 2` mel-spaced frequencies
    (`mel_frequencies`), its centre, where it is 1, and falls to 0 at the (i + 2)-th; with `norm="slaney"`
    it is scaled by 2 / (its bandwidth in Hz), so that every filter has unit area (sum * bin width ~ 1).

    Args:
        sample_rate: sample rate in Hz.
        n_fft: FFT size; the filters act on its `n_fft // 2 + 1` frequency bins.
        n_mels: number of filters.
        fmin: lowest edge in Hz.
        fmax: highest edge in Hz (default: sample_rate / 2).
        scale: "slaney" (librosa's default) or "htk".
        norm: "slaney" (unit area) or None (peak 1).
    """
    if scale not in MEL_SCALES:
        raise ConfigError(f"mel scale must be one of {MEL_SCALES}, got '{scale}'")
    if norm not in ("slaney", None):
        raise ConfigError(f"mel norm must be 'slaney' or None, got '{norm}'")
    fmax = sample_rate / 2 if fmax is None else fmax
    if not 0 <= fmin < fmax <= sample_rate / 2:
        raise ConfigError(f"need 0 <= fmin < fmax <= sample_rate / 2, got fmin={fmin}, fmax={fmax}")
    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # [F]
    edges = mel_frequencies(n_mels + 2, fmin, fmax, scale)  # [n_mels + 2]
    widths = edges.diff()  # [n_mels + 1]
    ramps = edges[:, None] - fft_freqs[None, :]  # [n_mels + 2, F]
    rising = -ramps[:-2] / widths[:-1, None]  # [n_mels, F]: 0 at the lower edge, 1 at the centre
    falling = ramps[2:] / widths[1:, None]  # [n_mels, F]: 1 at the centre, 0 at the upper edge
    weights = torch.minimum(rising, falling).clamp_min(0.0)
    if norm == "slaney":
        weights = weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.float()


def log_frequency_filterbank(
    sample_rate: int,
    n_fft: int,
    fmin: float,
    fmax: float,
    bins_per_octave: int = 36,
) -> torch.Tensor:
    """Constant-Q-like filters [n_bins, n_fft // 2 + 1] (float32) on a log-frequency axis.

    Filter k is centred at `fmin * 2 ** (k / bins_per_octave)` (every centre <= fmax) and is a triangle in
    log-frequency reaching 0 one bin step (1 / bins_per_octave octave) away, so its bandwidth is a fixed
    fraction of its centre frequency, as in a constant-Q transform. Where that is narrower than the FFT's
    bin spacing (low centres and short FFTs), the filter is widened to a triangle of one FFT bin on either
    side in Hz, i.e. it interpolates linearly between the two nearest FFT bins, so that no filter is empty.
    Each row sums to 1: a filter's output is a weighted mean of the magnitudes it covers.

    Args:
        sample_rate: sample rate in Hz.
        n_fft: FFT size; the filters act on its `n_fft // 2 + 1` frequency bins.
        fmin: centre of the lowest filter in Hz.
        fmax: upper bound of the centres in Hz (<= sample_rate / 2).
        bins_per_octave: filters per octave (36: three per semitone).
    """
    if not 0 < fmin <= fmax <= sample_rate / 2:
        raise ConfigError(f"need 0 < fmin <= fmax <= sample_rate / 2, got fmin={fmin}, fmax={fmax}")
    if bins_per_octave < 1:
        raise ConfigError(f"bins_per_octave={bins_per_octave} must be >= 1, e.g. 36")
    n_bins = math.floor(bins_per_octave * math.log2(fmax / fmin) + 1e-9) + 1
    centres = fmin * 2.0 ** (torch.arange(n_bins, dtype=torch.float64) / bins_per_octave)  # [n_bins]
    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # [F]
    octaves = torch.log2(fft_freqs.clamp_min(1e-6)[None, :] / centres[:, None])  # [n_bins, F]
    log_triangle = 1.0 - octaves.abs() * bins_per_octave
    hz_triangle = 1.0 - (fft_freqs[None, :] - centres[:, None]).abs() / (sample_rate / n_fft)
    weights = torch.maximum(log_triangle, hz_triangle).clamp_min(0.0)  # the wider of the two triangles
    return (weights / weights.sum(dim=1, keepdim=True)).float()


def as_mono_batch(x: torch.Tensor) -> torch.Tensor:
    """Audio [B, C, samples] (or [B, samples]) -> [B * C, samples] in fp32, one signal per channel."""
    if x.ndim == 3:
        x = x.reshape(-1, x.shape[-1])
    if x.ndim != 2:
        raise ConfigError(f"expected audio of shape [B, C, samples], got {tuple(x.shape)}")
    return x.float()


def stft(x: torch.Tensor, n_fft: int, hop_length: int, win_length: int, normalized: bool = False):
    """Complex STFT [N, n_fft // 2 + 1, frames] of signals [N, samples]: Hann window of `win_length`,
    centred frames (reflect padding; zero padding when the signal is not longer than n_fft / 2)."""
    window = torch.hann_window(win_length, device=x.device, dtype=x.dtype)
    pad_mode = "reflect" if x.shape[-1] > n_fft // 2 else "constant"
    with torch.autocast(device_type=x.device.type, enabled=False):
        return torch.stft(
            x.float(),
            n_fft,
            hop_length,
            win_length,
            window.float(),
            center=True,
            pad_mode=pad_mode,
            normalized=normalized,
            return_complex=True,
        )


class MelSpectrogram(nn.Module):
    """Audio [B, C, samples] -> mel magnitude spectrogram [B * C, n_mels, frames] (fp32).

    Args:
        sample_rate: sample rate in Hz.
        n_fft: window (and FFT) size in samples.
        hop_length: hop between frames (default n_fft // 4).
        n_mels: number of mel filters.
        fmin: lowest mel edge in Hz.
        fmax: highest mel edge in Hz (default: sample_rate / 2).
        scale: mel scale, "slaney" or "htk".
        norm: filter normalisation, "slaney" or None.
    """

    def __init__(
        self,
        sample_rate: int,
        n_fft: int,
        hop_length: int | None = None,
        n_mels: int = 80,
        fmin: float = 0.0,
        fmax: float | None = None,
        scale: str = "slaney",
        norm: str | None = "slaney",
    ):
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length or n_fft // 4
        fb = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax, scale, norm)
        self.register_buffer("filterbank", fb, persistent=False)  # [n_mels, F]; rebuilt, never saved

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mag = stft(as_mono_batch(x), self.n_fft, self.hop_length, self.n_fft).abs()  # [N, F, frames]
        return torch.matmul(self.filterbank, mag)  # [N, n_mels, frames]
