"""Audio files and pictures of them for the sampling scripts: WAV writing (soundfile), reading a clip at a
given rate, length and channel count (soundfile + soxr), and log-mel spectrogram PNGs.

Audio in memory is float [C, samples] in [-1, 1].
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
import torch
from PIL import Image

from mmar.errors import ConfigError
from mmar.io import atomic_write
from mmar.spectral import MelSpectrogram

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")
# anchors of a perceptually ordered dark-to-bright colour map (black, purple, red, orange, pale yellow)
_COLOURS = np.array([[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]], float)


def write_wav(path: str | os.PathLike, audio, sample_rate: int) -> None:
    """Write float audio [C, samples] (or [samples]) in [-1, 1] as 16-bit PCM WAV (atomically)."""
    x = torch.as_tensor(audio).detach().float().cpu()
    x = x[None] if x.ndim == 1 else x
    if x.ndim != 2:
        raise ConfigError(f"write_wav takes audio [C, samples], got {tuple(x.shape)}")
    data = x.clamp(-1, 1).T.numpy()  # soundfile wants [samples, C]
    atomic_write(Path(path), lambda tmp: sf.write(tmp, data, sample_rate, subtype="PCM_16", format="WAV"))


def read_audio(path: str | os.PathLike, sample_rate: int, channels: int, num_samples: int) -> torch.Tensor:
    """A clip float32 [channels, num_samples] from the start of an audio file: channels mixed down (or mono
    duplicated), resampled with soxr to `sample_rate`, cut or zero-padded at the end."""
    try:
        x, rate = sf.read(str(path), dtype="float32", always_2d=True)  # [frames, ch]
    except (sf.SoundFileError, RuntimeError, OSError) as err:
        raise ConfigError(f"cannot read audio file '{path}' ({err}); give a wav/flac/ogg file") from err
    if channels == 1:
        x = x.mean(axis=1, keepdims=True)
    else:
        x = np.repeat(x, channels, axis=1) if x.shape[1] == 1 else x[:, :channels]
    if rate != sample_rate:
        x = soxr.resample(np.ascontiguousarray(x), rate, sample_rate, quality="HQ")
    x = x[:num_samples].T
    return torch.from_numpy(np.ascontiguousarray(np.pad(x, ((0, 0), (0, num_samples - x.shape[1])))))


def spectrogram_image(audio, sample_rate: int, n_mels: int = 80, top_db: float = 80.0) -> Image.Image:
    """A log-mel spectrogram of one clip [C, samples] (channels averaged) as an RGB image: time left to
    right, low frequencies at the bottom, the top `top_db` decibels mapped through a dark-to-bright map."""
    x = torch.as_tensor(audio).detach().float().cpu()
    n_fft = 1 << max(round(float(np.log2(sample_rate * 0.032))), 6)  # ~32 ms windows
    mel = MelSpectrogram(sample_rate, n_fft, n_fft // 4, n_mels=n_mels)(x[None]).mean(0)  # (mels, frames)
    db = 20 * torch.log10(mel.clamp_min(1e-5))
    level = ((db - db.max() + top_db) / top_db).clamp(0, 1).flip(0).numpy()  # (mels, frames), low at bottom
    pos = level * (len(_COLOURS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_COLOURS) - 2)
    rgb = _COLOURS[lo] + (pos - lo)[..., None] * (_COLOURS[lo + 1] - _COLOURS[lo])
    image = Image.fromarray(rgb.round().astype(np.uint8), "RGB")
    return image.resize((image.width * 2, image.height * 2), Image.NEAREST)


def save_spectrogram(path: str | os.PathLike, audio, sample_rate: int) -> None:
    """Write `spectrogram_image` of a clip [C, samples] as a PNG (atomically)."""
    image = spectrogram_image(audio, sample_rate)
    atomic_write(Path(path), lambda tmp: image.save(tmp, format="PNG"))
