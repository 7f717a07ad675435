"""The part shared by the tokenizers that autoencode waveforms with a SEANet-style hop (`RVQCodec`,
`AudioKLCodec`): their config checks and constructor arguments, the hop of their strides and the codec
losses; the (frames,) token grid and the input checks come from `tokenizers_audio.base.AudioTokenizer`.

Audio is [B, C, samples] in [-1, 1]; a tokenizer with hop h (the product of its encoder strides) maps it
to `samples / h` frames, so clips must be a positive multiple of the hop. `reconstruction_losses(recon,
x)` names the weighted losses of a waveform codec (time-domain L1, DAC's multi-scale mel loss, the
multi-resolution STFT loss): the hook through which a training module stays modality-agnostic, summing
whatever losses the tokenizer names instead of hard-coding pixel losses. `make_discriminator(**kwargs)`
is the adversarial counterpart: EnCodec's MS-STFT discriminator, whose (logits, feature maps) per scale
`TokenizerModule` turns into the hinge and feature-matching losses when its `gan_weight` > 0.
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F

from mmar.errors import ConfigError
from tokenizers_audio.base import AudioTokenizer
from tokenizers_audio.losses import MultiResolutionSTFTLoss, MultiScaleMelLoss, MultiScaleSTFTDiscriminator

TIME_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}


def check(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok`."""
    if not ok:
        raise ConfigError(message)


class WaveformTokenizer(AudioTokenizer):
    """Base of the waveform codecs: audio [B, C, samples] <-> tokens on a grid of samples / hop frames.

    Subclasses set `self.config` (their constructor kwargs) and call `_init_waveform` in their constructor,
    then build their nets. The constructor arguments they share:

    Args:
        in_channels: audio channels (1 mono, 2 stereo).
        sample_rate: sample rate in Hz (used by the mel loss, `frame_rate` and the RVQ codec's `bitrate`;
            the nets are rate-agnostic).
        channels: width of the first conv; doubled at each stride.
        strides: encoder strides; the hop is their product (decoder: reversed).
        dilations: dilations of the residual units in each block (SEANet / DAC: 1, 3, 9).
        causal: pad every conv on the past side only (streamable, EnCodec's causal variant).
        time_weight: weight of the waveform loss in `reconstruction_losses` (EnCodec: 0.1 on L1).
        time_loss: the waveform loss, "l1" (EnCodec) or "mse" (phase-exact targets converge much faster in
            short CPU runs than the phase-blind spectral losses; see configs/audio/notes_codec.yaml).
        mel_weight: weight of the multi-scale log-mel L1 (DAC's, summed over 7 windows, 32..2048).
        stft_weight: weight of the multi-resolution STFT loss (Parallel WaveGAN's).
    """

    channels_fix = "train a codec with in_channels={c}"

    def _init_waveform(self) -> None:
        """Check the SEANet fields of `self.config` (in_channels, sample_rate, channels, latent_dim,
        strides, dilations and the time/mel/STFT loss weights), set `in_channels`, `sample_rate` and `hop`
        (= `downsample`) and build the loss modules (which hold no parameters and only non-persistent
        buffers: nothing of them is saved)."""
        cfg = self.config
        in_channels, sample_rate, strides = cfg["in_channels"], cfg["sample_rate"], cfg["strides"]
        channels, latent_dim, dilations = cfg["channels"], cfg["latent_dim"], cfg["dilations"]
        check(in_channels >= 1, f"in_channels must be >= 1 (1 mono, 2 stereo), got {in_channels}")
        check(sample_rate >= 1, f"sample_rate must be a positive number of Hz, got {sample_rate}; e.g. 16000")
        check(channels >= 1, f"channels must be >= 1 (the first conv's width), got {channels}; e.g. 32")
        check(latent_dim >= 1, f"latent_dim must be >= 1, got {latent_dim}")
        check(
            bool(strides) and min(strides) >= 1,
            f"strides must be a non-empty list of ints >= 1, got {strides}; e.g. [2, 4, 5, 8] (hop 320)",
        )
        check(
            bool(dilations) and min(dilations) >= 1,
            f"dilations must be a non-empty list of ints >= 1, got {dilations}; e.g. [1, 3, 9]",
        )
        for field in ("time_weight", "mel_weight", "stft_weight"):
            check(cfg[field] >= 0, f"{field} must be >= 0 (0 leaves the term out), got {cfg[field]}")
        check(
            cfg["time_loss"] in TIME_LOSSES,
            f"time_loss must be one of {sorted(TIME_LOSSES)}, got {cfg['time_loss']!r}",
        )
        self.in_channels = in_channels
        self.sample_rate = sample_rate
        self.hop = math.prod(strides)
        self.time_loss = cfg["time_loss"]
        self.loss_weights = {
            "time": cfg["time_weight"],
            "mel": cfg["mel_weight"],
            "stft": cfg["stft_weight"],
        }
        self.mel_loss = MultiScaleMelLoss(sample_rate) if cfg["mel_weight"] else None
        self.stft_loss = MultiResolutionSTFTLoss() if cfg["stft_weight"] else None

    def _hop_origin(self) -> str:
        return f" (= prod(strides) {self.config['strides']})"

    def reconstruction_losses(self, recon: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The codec's own weighted reconstruction losses of `recon` against `x` (both [B, C, samples]).

        Returns {"time_l1" (or "time_mse"): time_weight * the waveform L1 (MSE), "mel": mel_weight *
        multi-scale log-mel L1, "stft": stft_weight * multi-resolution STFT loss}, terms with weight 0 left
        out. This is the hook that
        keeps a training module modality-agnostic: it sums the terms a tokenizer names here (and logs
        them by name) instead of applying a pixel loss that means nothing for waveforms.
        """
        losses: dict[str, torch.Tensor] = {}
        if self.loss_weights["time"]:
            waveform = TIME_LOSSES[self.time_loss](recon.float(), x.float())
            losses[f"time_{self.time_loss}"] = self.loss_weights["time"] * waveform
        if self.mel_loss is not None:
            losses["mel"] = self.loss_weights["mel"] * self.mel_loss(recon, x)
        if self.stft_loss is not None:
            losses["stft"] = self.loss_weights["stft"] * self.stft_loss(recon, x)
        return losses

    def make_discriminator(self, **kwargs) -> MultiScaleSTFTDiscriminator:
        """EnCodec's MS-STFT discriminator over this codec's audio channels, returning (logits per scale,
        feature maps per scale) as `Tokenizer.make_discriminator` asks.

        `kwargs` (TokenizerModule's `disc_kwargs`) go to `MultiScaleSTFTDiscriminator`: `filters`
        (EnCodec: 32), `n_ffts` (window = FFT size per scale; EnCodec at 24 kHz: 1024, 2048, 512, 256,
        128), `hop_lengths` (default n_fft / 4), `max_filters`, `filters_scale`, `dilations`.
        """
        params = inspect.signature(MultiScaleSTFTDiscriminator).parameters
        valid = sorted(p for p in params if p != "in_channels")
        unknown = sorted(set(kwargs) - set(valid))
        check(
            not unknown,
            f"unknown disc_kwargs {unknown} for the {self.name} codec's MS-STFT discriminator; "
            f"valid: {valid}",
        )
        return MultiScaleSTFTDiscriminator(in_channels=self.in_channels, **kwargs)
