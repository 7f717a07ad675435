"""Continuous audio latents: a KL-regularised waveform autoencoder, for generators that predict continuous
frames with a flow or diffusion head (MELLE: Meng et al., 2024; DiTAR: Jia et al., 2025; Flow-Omni:
Yuan et al., 2024). The KL bottleneck is latent diffusion's (Rombach et al., 2022), as in
`tokenizers_visual.kl_vae`, on the SEANet encoder/decoder of the RVQ codec (`tokenizers_audio.codec`),
the recipe of the VAE-based audio autoencoders (e.g. Stable Audio's, Evans et al., 2024).

Audio [B, C, samples] in [-1, 1] is encoded by the SEANet encoder into `2 * latent_dim` channels per
frame, the mean and log-variance of a diagonal Gaussian posterior q(z|x) over [B, D, frames] (frames =
samples / hop; hop = prod(strides), 320 for (2, 4, 5, 8): 50 frames/s at 16 kHz). Training decodes a
reparameterised sample and adds `kl_weight * KL(q(z|x) || N(0, I))`, LDM's convention: the KL is summed
over the latent elements of a clip (D * frames) and averaged over the batch; `encode` takes the mean.
The reconstruction losses are the RVQ codec's (time-domain L1, multi-scale mel, multi-resolution STFT;
`reconstruction_losses`), means over samples and frames: on the embedded notes they start near 20 while
the KL of a 25x16 latent reaches ~600 nats within 20 steps, so `kl_weight` 1e-4 makes it ~0.3% of
the loss.

Generators see *normalised* latents, `latent = (z - shift) * scale`, time-major [B, frames, D], with the
shift and scale fitted on the training audio (`fit_statistics`, called by TokenizerModule before export)
and saved with the weights and in the JSON config (`mmar.continuous.LatentNormalization`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmar.continuous import LOGVAR_RANGE, LatentNormalization, gaussian_kl
from mmar.tokenizer import register_tokenizer
from tokenizers_audio.codec import SEANetDecoder, SEANetEncoder
from tokenizers_audio.waveform import WaveformTokenizer, check


@register_tokenizer
class AudioKLCodec(LatentNormalization, WaveformTokenizer):
    """Continuous audio tokenizer: audio [B, C, samples] <-> latents [B, samples / hop, latent_dim].

    Default config (CPU-sized): mono 16 kHz, channels 32 -> 512 over strides (2, 4, 5, 8), hop 320 (50
    frames/s), 32-d latent frames.

    Args:
        in_channels, sample_rate, channels, strides, dilations, causal: the SEANet nets, as in
            `WaveformTokenizer`.
        latent_dim: dimension D of the latent frames (the encoder emits 2 * D: mean and log-variance).
        kl_weight: weight of the KL term, summed over the latent elements of a clip and averaged over
            the batch (default tiny, as the image KL-VAE's LDM value 1e-6; recipes raise it, e.g. 1e-4).
        time_weight, mel_weight, stft_weight: the weights of `reconstruction_losses`, as in
            `WaveformTokenizer`.
        per_channel_scale: fit one shift/scale per latent channel instead of one scalar.
        latent_scale: the fitted scale (float, or list of D floats); None until `fit_statistics`.
        latent_shift: the fitted shift, as `latent_scale`.
    """

    name = "audio_kl"
    kind = "continuous"
    grid_axes = ("frames",)

    def __init__(
        self,
        in_channels: int = 1,
        sample_rate: int = 16000,
        channels: int = 32,
        latent_dim: int = 32,
        strides: Sequence[int] = (2, 4, 5, 8),
        dilations: Sequence[int] = (1, 3, 9),
        causal: bool = False,
        kl_weight: float = 1e-6,
        time_weight: float = 0.1,
        time_loss: str = "l1",
        mel_weight: float = 1.0,
        stft_weight: float = 1.0,
        per_channel_scale: bool = False,
        latent_scale: float | list[float] | None = None,
        latent_shift: float | list[float] | None = None,
    ):
        super().__init__()
        strides, dilations = [int(s) for s in strides], [int(d) for d in dilations]
        check(kl_weight >= 0, f"kl_weight must be >= 0 (0 turns the KL term off), got {kl_weight}; e.g. 1e-6")
        self.config = {
            "in_channels": in_channels,
            "sample_rate": sample_rate,
            "channels": channels,
            "latent_dim": latent_dim,
            "strides": strides,
            "dilations": dilations,
            "causal": causal,
            "kl_weight": kl_weight,
            "time_weight": time_weight,
            "time_loss": time_loss,
            "mel_weight": mel_weight,
            "stft_weight": stft_weight,
        }
        self._init_waveform()
        self.latent_dim = latent_dim
        self.encoder = SEANetEncoder(in_channels, channels, 2 * latent_dim, strides, dilations, causal)
        self.decoder = SEANetDecoder(in_channels, channels, latent_dim, strides, dilations, causal)
        self._init_latent_normalization(latent_dim, per_channel_scale, latent_scale, latent_shift)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Audio [B, C, samples] -> (mean, logvar) of q(z|x), each [B, D, frames] (raw, unnormalised)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)  # [B, D, frames] each
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def kl_loss(self, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """`kl_weight * KL(q(z|x) || N(0, I))`: summed over a clip's latent elements, mean over the batch."""
        return self.config["kl_weight"] * gaussian_kl(mean.float(), logvar.float()).mean()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Autoencode a batch.

        Args:
            x: audio [B, C, samples] in [-1, 1], samples a multiple of the hop.

        Returns:
            recon [B, C, samples], normalised latents [B, frames, D] and `kl_weight * KL` (a scalar, in
            both modes). Training mode decodes a reparameterised sample of q(z|x), eval mode its mean.
        """
        self.check_input(x)
        mean, logvar = self.posterior(x)  # [B, D, frames] each
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean) if self.training else mean
        return self.decoder(z), self.normalize(z), self.kl_loss(mean, logvar)

    def encode(
        self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Audio [B, C, samples] in [-1, 1] -> normalised latents [B, samples / hop, D] (float, time-major).

        Args:
            x: audio, samples a multiple of the hop.
            sample: draw z ~ q(z|x) instead of taking the posterior mean.
            generator: random generator for the sample.
        """
        self.check_input(x)
        self._warn_if_unfitted()
        with torch.no_grad():
            mean, logvar = self.posterior(x)  # [B, D, frames] each
            if sample:
                noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                mean = mean + (0.5 * logvar).exp() * noise
            return self.normalize(mean)  # [B, frames, D]

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, frames, D] -> audio [B, C, frames * hop] (roughly in [-1, 1])."""
        self._check_latents(latents)
        self._warn_if_unfitted()
        return self.decoder(self.denormalize(latents))  # [B, C, samples]

    def _posterior_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]  # [B, D, frames]
