"""KL-VAE continuous tokenizer: the KL-regularised autoencoder of latent diffusion (Rombach et al., 2022,
"High-Resolution Image Synthesis with Latent Diffusion Models"), on VQGAN's conv encoder/decoder.

The encoder emits `2 * latent_dim` channels, the mean and log-variance of a diagonal Gaussian posterior
q(z|x); training decodes a reparameterised sample and adds `kl_weight * KL(q(z|x) || N(0, I))`, with LDM's
convention: the KL is summed over the latent elements (D * h * w) and averaged over the batch. Note that
TokenizerModule's reconstruction loss is a per-pixel mean whereas LDM's is summed over pixels, so LDM's
`kl_weight = 1e-6` corresponds to `1e-6 * C * H * W` here (about 1e-3 for 32x32 grey digits).

Generators see *normalised* latents, `latent = (z - shift) * scale`, channels last [B, h, w, D]. LDM picks
the scale as 1 / std of the latents of a data batch (SD's 0.18215); a wrong scale silently ruins a flow
or diffusion head, so here shift and scale are fitted on the training data (`fit_statistics`, called by
TokenizerModule before export), stored both as buffers and in the JSON config, and an unfitted tokenizer
says so (`latent_scale: null` in its config, and a warning on its first encode/decode).
`mmar.continuous.LatentNormalization` holds that logic once for every continuous tokenizer (see
diffusers_vae.py and the audio KL codec); it is re-exported here for the imports that predate it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmar.continuous import LOGVAR_RANGE, LatentNormalization, gaussian_kl
from mmar.tokenizer import Tokenizer, register_tokenizer
from tokenizers_visual.nets import Decoder, Encoder


@register_tokenizer
class KLVAETokenizer(LatentNormalization, Tokenizer):
    """Continuous image tokenizer: images [B, C, H, W] <-> latents [B, H / f, W / f, latent_dim].

    Args:
        in_channels: image channels (1 for grayscale, 3 for RGB).
        ch: base channel count of the encoder/decoder.
        ch_mult: channel multiplier per resolution; downsampling factor f is 2 ** (len(ch_mult) - 1).
        num_res_blocks: ResBlocks per resolution.
        latent_dim: channels D of the latent (LDM's KL-f8 has 4; the encoder emits 2 * D).
        kl_weight: weight of the KL term, summed over latent elements and averaged over the batch.
        per_channel_scale: fit one shift/scale per latent channel instead of one scalar.
        latent_scale: the fitted scale (float, or list of D floats); None until `fit_statistics`.
        latent_shift: the fitted shift, as `latent_scale`.
    """

    name = "kl_vae"
    kind = "continuous"

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 4, 4),
        num_res_blocks: int = 2,
        latent_dim: int = 4,
        kl_weight: float = 1e-6,
        per_channel_scale: bool = False,
        latent_scale: float | list[float] | None = None,
        latent_shift: float | list[float] | None = None,
    ):
        super().__init__()
        ch_mult = [int(m) for m in ch_mult]
        self.config = {
            "in_channels": in_channels,
            "ch": ch,
            "ch_mult": ch_mult,
            "num_res_blocks": num_res_blocks,
            "latent_dim": latent_dim,
            "kl_weight": kl_weight,
        }
        self.in_channels = in_channels
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.latent_dim = latent_dim
        self.encoder = Encoder(in_channels, ch, ch_mult, num_res_blocks, z_channels=2 * latent_dim)
        self.decoder = Decoder(in_channels, ch, ch_mult, num_res_blocks, z_channels=latent_dim)
        self._init_latent_normalization(latent_dim, per_channel_scale, latent_scale, latent_shift)

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images [B, C, H, W] -> (mean, logvar) of q(z|x), each [B, D, h, w] (raw, unnormalised)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)  # [B, D, h, w] each
        return mean, logvar.clamp(*LOGVAR_RANGE)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Autoencode a batch.

        Args:
            x: images [B, C, H, W] in [-1, 1].

        Returns:
            recon [B, C, H, W], normalised latents [B, h, w, D] and `kl_weight * KL` (a scalar, in both
            modes). Training mode decodes a reparameterised sample of q(z|x), eval mode its mean.
        """
        self.check_input(x)
        mean, logvar = self.posterior(x)  # [B, D, h, w] each
        z = mean + (0.5 * logvar).exp() * torch.randn_like(mean) if self.training else mean
        aux_loss = self.config["kl_weight"] * gaussian_kl(mean, logvar).mean()
        return self.decoder(z), self.normalize(z), aux_loss

    def encode(
        self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> normalised latents [B, h, w, D] (float, channels last).

        Args:
            x: images.
            sample: draw z ~ q(z|x) instead of taking the posterior mean.
            generator: random generator for the sample.
        """
        self.check_input(x)
        self._warn_if_unfitted()
        with torch.no_grad():
            mean, logvar = self.posterior(x)  # [B, D, h, w] each
            if sample:
                noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
                mean = mean + (0.5 * logvar).exp() * noise
            return self.normalize(mean)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, h, w, D] -> images [B, C, h * f, w * f] (roughly in [-1, 1])."""
        self._check_latents(latents)
        self._warn_if_unfitted()
        return self.decoder(self.denormalize(latents))  # [B, C, H, W]

    def _posterior_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.posterior(x)[0]  # [B, D, h, w]
