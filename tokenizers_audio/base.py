"""The part shared by every audio tokenizer (`WaveformTokenizer`'s `RVQCodec` and `AudioKLCodec`, and
`TransformersCodec`): the (frames,) token grid, the input checks and, for the discrete ones, the ids
check and the bitrate.

Audio is [B, C, samples] in [-1, 1]; a tokenizer with hop h maps a clip to `samples / h` frames, so clips
must be a positive multiple of the hop. A discrete audio tokenizer codes each frame with q residual levels
of `vocab_size` codes, ids [B, frames, q], at `sample_rate / h * q * log2(vocab_size)` bits/s.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

from mmar.errors import ConfigError
from mmar.tokenizer import Tokenizer


class AudioTokenizer(Tokenizer):
    """Base of the audio tokenizers: audio [B, C, samples] <-> tokens on a grid of samples / hop frames.

    Subclasses set `in_channels`, `sample_rate` (Hz) and `hop` (samples per frame; `downsample` is the
    hop) in their constructor. Discrete ones also set `vocab_size` (codes per level), `num_quantizers`
    (the levels `encode` codes by default) and `max_quantizers` (the most levels `decode` takes), and
    define `_levels`.

    Error messages name the tokenizer as `describe` ("the codec expects 1", "the codec's hop 320"), end
    the channel error with `channels_fix` (formatted with the audio's channel count `c`) and explain the
    hop with `_hop_origin()`.
    """

    modality = "audio"
    sample_rate: int
    hop: int
    num_quantizers: int
    max_quantizers: int
    channels_fix: ClassVar[str] = "pick a codec with that many channels"
    """How to fix audio with the wrong channel count, after "downmix/duplicate the channels or"."""

    @property
    def downsample(self) -> int:
        """Samples per token frame: the hop."""
        return self.hop

    @property
    def frame_rate(self) -> float:
        """Token frames per second: sample_rate / hop (50 for 16 kHz and hop 320)."""
        return self.sample_rate / self.hop

    @property
    def describe(self) -> str:
        """The tokenizer as error messages name it."""
        return "codec"

    def _hop_origin(self) -> str:
        """Where the hop comes from, said after it in the hop error (e.g. " (= prod(strides) [2, 4])")."""
        return ""

    # ----------------------------------------------------------------------------------- contract
    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Token grid (frames,) = (samples / hop,) of audio (C, samples); ConfigError when it does not fit."""
        if len(input_shape) != 2:
            raise ConfigError(
                f"the {self.name} tokenizer takes audio of shape (C, samples), got {tuple(input_shape)}; "
                "use an audio DataModule (batch['audio'] [B, C, samples])"
            )
        c, samples = input_shape
        if c != self.in_channels:
            raise ConfigError(
                f"audio has {c} channels but the {self.describe} expects {self.in_channels}; "
                f"downmix/duplicate the channels or {self.channels_fix.format(c=c)}"
            )
        if samples < self.hop or samples % self.hop:
            raise ConfigError(
                f"audio length {samples} samples is not a positive multiple of the {self.describe}'s hop "
                f"{self.hop}{self._hop_origin()}; crop or pad clips to a multiple of {self.hop}, e.g. "
                f"{max(samples // self.hop, 1) * self.hop}"
            )
        return (samples // self.hop,)

    def check_input(self, x: torch.Tensor) -> None:
        """Validate an audio batch [B, C, samples] against this tokenizer (ConfigError otherwise)."""
        if x.ndim != 3:
            raise ConfigError(f"expected audio of shape [B, C, samples], got {tuple(x.shape)}")
        self.grid(tuple(x.shape[1:]))

    # ------------------------------------------------------------------------- discrete tokenizers
    def bitrate(self, sample_rate: int | None = None, num_quantizers: int | None = None) -> float:
        """Bits per second of the ids at `num_quantizers` levels (default the tokenizer's):
        sample_rate / hop frames/s * levels * log2(codebook_size) bits (sample_rate defaults to the
        tokenizer's)."""
        q = self._levels(num_quantizers)
        sample_rate = self.sample_rate if sample_rate is None else sample_rate
        return sample_rate / self.hop * q * math.log2(self.vocab_size)

    def _levels(self, num_quantizers: int | None) -> int:
        """The residual levels `num_quantizers` asks for (None: the tokenizer's default), checked
        (ConfigError otherwise); discrete tokenizers define it."""
        raise ConfigError(f"the {self.name} tokenizer is {self.kind}: it has no quantizer levels")

    def _check_ids(self, ids: torch.Tensor) -> None:
        """ConfigError unless `ids` are integer ids [B, frames, q], 1 <= q <= `max_quantizers`, with values
        in [0, vocab_size)."""
        q = self.max_quantizers
        if ids.ndim != 3 or ids.is_floating_point() or ids.is_complex() or not 1 <= ids.shape[-1] <= q:
            raise ConfigError(
                f"decode expects integer ids of shape [B, frames, q] with 1 <= q <= {q}, got "
                f"{tuple(ids.shape)} {ids.dtype}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ConfigError(
                f"ids must lie in [0, {self.vocab_size}) (codebook_size={self.vocab_size}), got values in "
                f"[{int(ids.min())}, {int(ids.max())}]; check that the generator's vocab_size matches"
            )
