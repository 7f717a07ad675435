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
`LatentNormalization` holds that logic once for every continuous tokenizer (see diffusers_vae.py).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from einops import rearrange

from mmar.errors import ConfigError
from mmar.tokenizer import Tokenizer, register_tokenizer
from tokenizers_visual.nets import Decoder, Encoder

LOGVAR_RANGE = (-30.0, 20.0)  # LDM's clamp: keeps exp(logvar) finite early in training


class LatentNormalization:
    """Mixin for continuous tokenizers: data-fitted latent shift/scale, `latent = (z - shift) * scale`.

    The host class (a Tokenizer) calls `_init_latent_normalization` in its constructor and implements
    `_posterior_mean(x) -> z [B, D, h, w]` (the raw latents that `fit_statistics` measures). Buffers
    `latent_shift` and `latent_scale` are always [D] (a scalar scale is repeated), so checkpoints keep one
    shape; `latent_stats_fitted` (a bool buffer) records whether they came from data. The config mirrors
    them (one float when all channels share it, else a list of D floats; null until fitted), so the JSON shows
    the state and save/load round-trips bit-exactly (float32 -> Python float -> float32 is exact).
    """

    config: dict[str, Any]
    latent_dim: int
    latent_shift: torch.Tensor
    latent_scale: torch.Tensor
    latent_stats_fitted: torch.Tensor

    def _init_latent_normalization(
        self,
        latent_dim: int,
        per_channel_scale: bool,
        latent_scale: float | Sequence[float] | None,
        latent_shift: float | Sequence[float] | None,
    ) -> None:
        """Register the buffers: identity (scale 1, shift 0, unfitted) unless values are given."""
        self._warned_unfitted = False
        self.register_buffer("latent_shift", torch.zeros(latent_dim))  # [D]
        self.register_buffer("latent_scale", torch.ones(latent_dim))  # [D]
        self.register_buffer("latent_stats_fitted", torch.tensor(False))
        self.config.update(per_channel_scale=per_channel_scale, latent_scale=None, latent_shift=None)
        if (latent_scale is None) != (latent_shift is None):
            raise ConfigError(
                "give both latent_scale and latent_shift (a saved tokenizer has both) or neither (fit them "
                "with fit_statistics)"
            )
        if latent_scale is not None:
            shift = self._as_channels("latent_shift", latent_shift)
            self.set_statistics(shift, self._as_channels("latent_scale", latent_scale))

    @property
    def stats_fitted(self) -> bool:
        """Whether shift/scale were set from data (or given), rather than the identity default."""
        return bool(self.latent_stats_fitted)

    def set_statistics(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        """Set shift and scale ([D] or scalars) in the buffers and mirror them in `self.config`."""
        shift, scale = torch.as_tensor(shift).float(), torch.as_tensor(scale).float()
        if not (torch.isfinite(scale).all() and (scale > 0).all() and torch.isfinite(shift).all()):
            raise ConfigError(
                f"latent_scale must be finite and > 0 and latent_shift finite, got scale {scale.tolist()}, "
                f"shift {shift.tolist()}; a zero-variance latent (collapsed encoder) cannot be normalised"
            )
        self.latent_shift.copy_(shift.expand(self.latent_dim))
        self.latent_scale.copy_(scale.expand(self.latent_dim))
        self.latent_stats_fitted.fill_(True)
        self._mirror_statistics()

    @torch.no_grad()
    def fit_statistics(self, batches: Iterable[torch.Tensor]) -> None:
        """Fit shift = mean and scale = 1 / std of the raw posterior means over all `batches`.

        Moments are accumulated in float64 over every latent element (one scalar, or one per channel
        with `per_channel_scale`), with the population std, so the encoded training latents have mean 0
        and std 1 exactly up to float32 rounding.

        Args:
            batches: images [B, C, H, W] in [-1, 1] (e.g. the training loader), iterated once.
        """
        per_channel = self.config["per_channel_scale"]
        dims = (0, 2, 3) if per_channel else (0, 1, 2, 3)
        was_training = self.training
        self.eval()
        count, total, total_sq = 0, 0.0, 0.0
        try:
            for x in batches:
                self.check_input(x)
                z = self._posterior_mean(x).double()  # [B, D, h, w]
                count += z.numel() // (self.latent_dim if per_channel else 1)
                total = total + z.sum(dims)  # [D] or []
                total_sq = total_sq + z.square().sum(dims)  # [D] or []
        finally:
            self.train(was_training)
        if count == 0:
            raise ConfigError("fit_statistics got no batches; pass the training images (a non-empty loader)")
        mean = total / count
        std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
        self.set_statistics(mean, 1.0 / std)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents [B, D, h, w] -> normalised latents [B, h, w, D] (channels last)."""
        z = rearrange(z, "b d h w -> b h w d")
        return (z - self.latent_shift) * self.latent_scale  # [B, h, w, D]

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, h, w, D] -> raw latents [B, D, h, w] for the decoder."""
        z = latents / self.latent_scale + self.latent_shift  # [B, h, w, D]
        return rearrange(z, "b h w d -> b d h w")

    def save_pretrained(self, path: str | os.PathLike) -> None:
        # The buffers are the source of truth (a Lightning checkpoint may have loaded them): refresh the
        # config mirror so the JSON always matches the weights.
        self._mirror_statistics()
        super().save_pretrained(path)

    def _mirror_statistics(self) -> None:
        if not self.stats_fitted:
            self.config.update(latent_scale=None, latent_shift=None)
            return
        shift, scale = self.latent_shift.tolist(), self.latent_scale.tolist()
        if not self.config["per_channel_scale"] and len(set(shift)) == len(set(scale)) == 1:
            shift, scale = shift[0], scale[0]  # one number, as LDM's scale_factor
        self.config.update(latent_scale=scale, latent_shift=shift)

    def _as_channels(self, field: str, value: float | Sequence[float]) -> torch.Tensor:
        """A float or a list of `latent_dim` floats -> tensor [] or [D]; ConfigError otherwise."""
        if isinstance(value, int | float):
            return torch.tensor(float(value))
        if not isinstance(value, Sequence) or len(value) != self.latent_dim:
            raise ConfigError(
                f"{field} must be one float or a list of latent_dim={self.latent_dim} floats, got {value!r}"
            )
        return torch.tensor([float(v) for v in value])

    def _warn_if_unfitted(self) -> None:
        if not self.stats_fitted and not self._warned_unfitted:
            self._warned_unfitted = True
            warnings.warn(
                f"the {self.name} tokenizer's latent scale/shift were never fitted (scale 1, shift 0, "
                "latent_scale: null in its config), so its latents are not unit-variance; call "
                "fit_statistics(train batches) before save_pretrained (TokenizerModule does this on export)",
                stacklevel=3,
            )

    def _check_latents(self, latents: torch.Tensor) -> None:
        """Raise ConfigError unless `latents` is a float tensor [B, h, w, latent_dim]."""
        if latents.ndim != 4 or not latents.is_floating_point():
            raise ConfigError(
                f"decode expects float latents of shape [B, h, w, D] (channels last), got "
                f"{tuple(latents.shape)} {latents.dtype}"
            )
        if latents.shape[-1] != self.latent_dim:
            raise ConfigError(
                f"latents have {latents.shape[-1]} channels but the {self.name} tokenizer has "
                f"latent_dim={self.latent_dim}; check that the generator's latent size matches the tokenizer"
            )

    def _posterior_mean(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) of [B, D, h, w] posteriors, summed per sample -> [B] (LDM)."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)  # [B]


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
