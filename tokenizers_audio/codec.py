"""Neural audio codec with residual vector quantisation (RVQ), in the line of SoundStream (Zeghidour et al.,
2021), EnCodec (Défossez et al., 2022) and DAC (Kumar et al., 2023).

Audio [B, C, samples] in [-1, 1] (mono C = 1 or stereo C = 2) is encoded by a SEANet conv encoder: a
kernel-7 conv to `channels`, then per stride s a block of residual units (dilations 1, 3, 9; ELU; a
kernel-3 dilated conv that halves the width and a 1x1 conv back, with an identity skip) followed by ELU
and a stride-s conv of kernel 2s that doubles the width, and finally ELU and a kernel-7 conv to
`latent_dim`. With strides (2, 4, 5, 8) the hop is 320 samples: 50 latent frames per second at 16 kHz.
The decoder mirrors it with transposed convs (strides reversed, width halved at each). Every conv has
weight norm; padding is arranged so that `samples = frames * hop` exactly (zero padding, split around the
signal, or all before it with `causal=True`, EnCodec's streaming variant).

Each latent frame z is quantised by `vector_quantize_pytorch.ResidualVQ`'s Q codebooks of K codes
(Euclidean nearest code, EMA updates, k-means initialisation on the first training batch, dead-code
re-seeding): level 1 quantises z, level l the residual z - (c_1 + ... + c_{l-1}), and the frame's code
is c_1 + ... + c_Q; the frame gets Q ids, ids [B, frames, Q]. As in EnCodec the residual passed on is
detached, so the straight-through gradient reaches the encoder once (not once per level) and only the
first level's commitment loss moves the encoder.

Bitrate: quantisers trained with *quantizer dropout* (SoundStream): with probability `quantizer_dropout`
a training batch is coded with only its first n levels, n uniform in 1..Q, so every prefix of the levels
is a codec of its own. `encode(x, num_quantizers=q)` then picks the bitrate at inference,
`sample_rate / hop * q * log2(K)` bits/s (`bitrate`), and `decode` takes ids with any q <= Q levels.

`reconstruction_losses(recon, x)` gives the codec's own weighted reconstruction losses (time-domain L1,
DAC's multi-scale mel loss, the multi-resolution STFT loss): the hook through which a training module
stays modality-agnostic, summing whatever losses the tokenizer names instead of hard-coding pixel losses.
It and the config checks are shared with the continuous `AudioKLCodec` through
`tokenizers_audio.waveform.WaveformTokenizer`, and the (frames,) grid, the input and ids checks and
`bitrate` with every audio tokenizer through `tokenizers_audio.base.AudioTokenizer`; the SEANet nets here
serve both waveform codecs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm
from vector_quantize_pytorch import ResidualVQ

from mmar.errors import ConfigError
from mmar.tokenizer import register_tokenizer
from tokenizers_audio.waveform import WaveformTokenizer, check


class Conv1d(nn.Module):
    """Weight-normed 1D conv whose output has `ceil(length / stride)` frames (exactly length / stride when
    divisible): zero padding of `dilation * (kernel - 1) + 1 - stride` samples in total, all before the
    signal when `causal`, else split (the extra sample before), as EnCodec's SConv1d."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        dilation: int = 1,
        causal: bool = False,
    ):
        super().__init__()
        self.conv = weight_norm(nn.Conv1d(in_ch, out_ch, kernel, stride, dilation=dilation))
        self.stride = stride
        self.pad = dilation * (kernel - 1) + 1 - stride
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extra = (-x.shape[-1]) % self.stride  # complete the last frame (0 when divisible)
        right = 0 if self.causal else self.pad // 2
        return self.conv(F.pad(x, (self.pad - right, right + extra)))


class ConvTranspose1d(nn.Module):
    """Weight-normed transposed conv (kernel 2s, stride s): `frames * s` samples out; the `kernel - s`
    extra samples are trimmed from the end when `causal`, else from both sides, as EnCodec's
    SConvTranspose1d."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, causal: bool = False):
        super().__init__()
        self.conv = weight_norm(nn.ConvTranspose1d(in_ch, out_ch, 2 * stride, stride))
        self.trim = stride  # kernel - stride
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # [B, out, frames * s + s]
        right = self.trim if self.causal else self.trim - self.trim // 2
        return y[..., self.trim - right : y.shape[-1] - right]


class ResidualUnit(nn.Module):
    """SEANet residual unit: x + conv1x1(ELU(conv_k(ELU(x), dilation))), the hidden width `dim // 2`."""

    def __init__(self, dim: int, dilation: int, kernel: int = 3, causal: bool = False):
        super().__init__()
        hidden = max(dim // 2, 1)
        self.block = nn.Sequential(
            nn.ELU(),
            Conv1d(dim, hidden, kernel, dilation=dilation, causal=causal),
            nn.ELU(),
            Conv1d(hidden, dim, 1, causal=causal),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class SEANetEncoder(nn.Module):
    """Audio [B, C, samples] -> latents [B, latent_dim, samples / prod(strides)]."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        latent_dim: int,
        strides: Sequence[int],
        dilations: Sequence[int],
        causal: bool,
    ):
        super().__init__()
        layers: list[nn.Module] = [Conv1d(in_channels, channels, 7, causal=causal)]
        width = channels
        for s in strides:
            layers += [ResidualUnit(width, d, causal=causal) for d in dilations]
            layers += [nn.ELU(), Conv1d(width, 2 * width, 2 * s, stride=s, causal=causal)]
            width *= 2
        layers += [nn.ELU(), Conv1d(width, latent_dim, 7, causal=causal)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SEANetDecoder(nn.Module):
    """Latents [B, latent_dim, frames] -> audio [B, C, frames * prod(strides)]; the encoder mirrored."""

    def __init__(
        self,
        out_channels: int,
        channels: int,
        latent_dim: int,
        strides: Sequence[int],
        dilations: Sequence[int],
        causal: bool,
    ):
        super().__init__()
        width = channels * 2 ** len(strides)
        layers: list[nn.Module] = [Conv1d(latent_dim, width, 7, causal=causal)]
        for s in reversed(strides):
            layers += [nn.ELU(), ConvTranspose1d(width, width // 2, s, causal=causal)]
            width //= 2
            layers += [ResidualUnit(width, d, causal=causal) for d in dilations]
        layers += [nn.ELU(), Conv1d(width, out_channels, 7, causal=causal)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@register_tokenizer
class RVQCodec(WaveformTokenizer):
    """Discrete audio tokenizer: audio [B, C, samples] <-> ids [B, samples / hop, Q] (Q codebook levels).

    Default config (CPU-sized, ~6.5M parameters): mono 16 kHz, channels 32 -> 512 over strides (2, 4, 5, 8),
    hop 320 (50 frames/s), latent 64, Q = 8 levels of K = 1024 codes: 50 * 8 * 10 = 4 kbit/s with all
    levels, 0.5 kbit/s with one.

    Args:
        in_channels, sample_rate, channels, strides, dilations, causal: the SEANet nets, as in
            `WaveformTokenizer`.
        latent_dim: dimension of the latent frames (and of the codes).
        num_quantizers: residual levels Q.
        codebook_size: codes per level K (the generator's vocabulary).
        quantizer_dropout: probability that a training batch uses only its first n levels, n uniform in
            1..Q (0 disables; never applied in eval mode).
        commitment_weight: weight of the commitment loss ||z - sg(c)||^2 of each level (EnCodec: 1).
        decay: EMA decay of the codebooks (EnCodec: 0.99).
        kmeans_init: initialise each codebook by k-means on the first training batch's residuals.
        threshold_ema_dead_code: codes whose EMA usage per batch falls below this are re-seeded from the
            batch (EnCodec: 2; keep it well below frames per batch / K, 0 disables).
        time_weight, mel_weight, stft_weight: the weights of `reconstruction_losses`, as in
            `WaveformTokenizer`.
    """

    name = "rvq_codec"
    kind = "discrete"

    def __init__(
        self,
        in_channels: int = 1,
        sample_rate: int = 16000,
        channels: int = 32,
        latent_dim: int = 64,
        strides: Sequence[int] = (2, 4, 5, 8),
        dilations: Sequence[int] = (1, 3, 9),
        causal: bool = False,
        num_quantizers: int = 8,
        codebook_size: int = 1024,
        quantizer_dropout: float = 0.5,
        commitment_weight: float = 1.0,
        decay: float = 0.99,
        kmeans_init: bool = True,
        threshold_ema_dead_code: float = 2.0,
        time_weight: float = 0.1,
        time_loss: str = "l1",
        mel_weight: float = 1.0,
        stft_weight: float = 1.0,
    ):
        super().__init__()
        strides, dilations = [int(s) for s in strides], [int(d) for d in dilations]
        check(num_quantizers >= 1, f"num_quantizers must be >= 1, got {num_quantizers}; e.g. 8")
        check(codebook_size >= 2, f"codebook_size must be >= 2, got {codebook_size}; e.g. 1024")
        check(
            0.0 <= quantizer_dropout <= 1.0, f"quantizer_dropout must be in [0, 1], got {quantizer_dropout}"
        )
        self.config = {
            "in_channels": in_channels,
            "sample_rate": sample_rate,
            "channels": channels,
            "latent_dim": latent_dim,
            "strides": strides,
            "dilations": dilations,
            "causal": causal,
            "num_quantizers": num_quantizers,
            "codebook_size": codebook_size,
            "quantizer_dropout": quantizer_dropout,
            "commitment_weight": commitment_weight,
            "decay": decay,
            "kmeans_init": kmeans_init,
            "threshold_ema_dead_code": threshold_ema_dead_code,
            "time_weight": time_weight,
            "time_loss": time_loss,
            "mel_weight": mel_weight,
            "stft_weight": stft_weight,
        }
        self._init_waveform()
        self.vocab_size = codebook_size
        self.num_quantizers = num_quantizers
        self.max_quantizers = num_quantizers
        self.token_shape = (num_quantizers,)
        self.quantizer_dropout = quantizer_dropout
        net_args = (channels, latent_dim, strides, dilations, causal)
        self.encoder = SEANetEncoder(in_channels, *net_args)
        self.decoder = SEANetDecoder(in_channels, *net_args)
        self.quantizer = ResidualVQ(
            dim=latent_dim,
            num_quantizers=num_quantizers,
            codebook_size=codebook_size,
            decay=decay,
            kmeans_init=kmeans_init,
            threshold_ema_dead_code=threshold_ema_dead_code,
            commitment_weight=commitment_weight,
            rotation_trick=False,  # plain straight-through estimator, as EnCodec / DAC
        )

    # ----------------------------------------------------------------------------------- contract
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Autoencode a batch.

        In training mode, with probability `quantizer_dropout` the batch is coded with only its first n
        levels, n uniform in 1..Q (quantizer dropout); in eval mode always with all Q.

        Args:
            x: audio [B, C, samples] in [-1, 1], samples a multiple of the hop.

        Returns:
            recon [B, C, samples], ids [B, frames, n] (long; n = Q unless dropped out) and the commitment
            loss (scalar, summed over the levels used).
        """
        self.check_input(x)
        zq, ids, aux_loss = self.quantize(self.latents(x), self._training_levels())
        return self.decoder(zq.transpose(1, 2)), ids, aux_loss

    @torch.no_grad()
    def encode(self, x: torch.Tensor, num_quantizers: int | None = None) -> torch.Tensor:
        """Audio [B, C, samples] -> ids [B, samples / hop, q] (long) with the first q = `num_quantizers`
        levels (default all Q): fewer levels, lower bitrate."""
        self.check_input(x)
        return self.quantize(self.latents(x), self._levels(num_quantizers))[1]

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids [B, frames, q] with any 1 <= q <= Q levels -> audio [B, C, frames * hop]."""
        return self.decoder(self.latents_from_ids(ids).transpose(1, 2))

    # ------------------------------------------------------------------------------ quantisation
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Audio [B, C, samples] -> encoder latents [B, frames, latent_dim] (before quantisation)."""
        return self.encoder(x).transpose(1, 2)

    def quantize(
        self, z: torch.Tensor, num_quantizers: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Residual quantisation of latents z [B, frames, D] with the first `num_quantizers` levels.

        Returns (codes summed over the levels [B, frames, D], ids [B, frames, q], commitment loss). In
        training mode the codebooks of the levels used are updated (EMA, k-means init, dead codes). Runs
        in fp32 even under autocast.
        """
        q = self._levels(num_quantizers)
        with torch.autocast(device_type=z.device.type, enabled=False):
            residual = z.float()
            out = torch.zeros_like(residual)
            ids, loss = [], residual.new_zeros(())
            for layer in self.quantizer.layers[:q]:
                codes, level_ids, level_loss = layer(residual)  # straight-through codes [B, N, D]
                residual = (residual - codes).detach()  # EnCodec: pass on the residual, gradient-free
                out = out + codes
                ids.append(level_ids)
                loss = loss + level_loss.sum()
        return out, torch.stack(ids, dim=-1).long(), loss

    def latents_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids [B, frames, q] (q <= Q) -> the sum of their codes [B, frames, D] (fp32)."""
        self._check_ids(ids)
        missing = self.num_quantizers - ids.shape[-1]
        padded = F.pad(ids.long(), (0, missing), value=-1)  # -1: a level left out (its code is 0)
        with torch.autocast(device_type=ids.device.type, enabled=False):
            return self.quantizer.get_output_from_indices(padded).float()

    def _levels(self, num_quantizers: int | None) -> int:
        q = self.num_quantizers if num_quantizers is None else int(num_quantizers)
        if not 1 <= q <= self.num_quantizers:
            raise ConfigError(
                f"num_quantizers={num_quantizers} must be in 1..{self.num_quantizers} (the codec's levels)"
            )
        return q

    def _training_levels(self) -> int:
        """Levels for this forward: Q, or (training, with prob. `quantizer_dropout`) n ~ U{1..Q}."""
        q = self.num_quantizers
        if not self.training or q == 1 or self.quantizer_dropout <= 0:
            return q
        if torch.rand(()).item() >= self.quantizer_dropout:
            return q
        return int(torch.randint(1, q + 1, ()).item())
