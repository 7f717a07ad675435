"""Pieces shared by the continuous tokenizers of every modality (image KL-VAEs, the audio KL codec...).

- `LatentNormalization`: generators see *normalised* latents, `latent = (z - shift) * scale`, channels last
  [B, *grid, D]. Latent diffusion (Rombach et al., 2022) picks the scale as 1 / std of the latents of a
  data batch (SD's 0.18215); a wrong scale silently ruins a flow or diffusion head, so here shift and
  scale are fitted on the training data (`fit_statistics`, called by TokenizerModule before export),
  stored both as buffers and in the JSON config, and an unfitted tokenizer says so (`latent_scale: null`
  in its config, and a warning on its first encode/decode).
- `gaussian_kl` and `LOGVAR_RANGE`: the KL bottleneck of a diagonal-Gaussian posterior, LDM's convention
  (summed over the latent elements of a sample).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

import torch

from mmar.errors import ConfigError

LOGVAR_RANGE = (-30.0, 20.0)  # LDM's clamp: keeps exp(logvar) finite early in training


class LatentNormalization:
    """Mixin for continuous tokenizers: data-fitted latent shift/scale, `latent = (z - shift) * scale`.

    The host class (a Tokenizer) calls `_init_latent_normalization` in its constructor and implements
    `_posterior_mean(x) -> z [B, D, *grid]` (the raw latents that `fit_statistics` measures, channels
    first: [B, D, h, w] for images, [B, D, frames] for audio); `grid_axes` names the grid's axes for the
    error messages (and fixes the rank that `decode` accepts). Buffers `latent_shift` and `latent_scale` are
    always [D] (a scalar scale is repeated), so checkpoints keep one shape; `latent_stats_fitted` (a bool
    buffer) records whether they came from data. The config mirrors them (one float when all channels
    share it, else a list of D floats; null until fitted), so the JSON shows the state and save/load
    round-trips bit-exactly (float32 -> Python float -> float32 is exact).
    """

    grid_axes: ClassVar[tuple[str, ...]] = ("h", "w")
    """Names of the latent grid's axes: ("h", "w") for images, ("frames",) for audio."""
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
            batches: inputs as `encode` takes them (images [B, C, H, W] or audio [B, C, samples] in
                [-1, 1], e.g. the training loader), iterated once.
        """
        per_channel = self.config["per_channel_scale"]
        was_training = self.training
        self.eval()
        count, total, total_sq = 0, 0.0, 0.0
        try:
            for x in batches:
                self.check_input(x)
                z = self._posterior_mean(x).double()  # [B, D, *grid]
                dims = (0, *range(2, z.ndim)) if per_channel else tuple(range(z.ndim))
                count += z.numel() // (self.latent_dim if per_channel else 1)
                total = total + z.sum(dims)  # [D] or []
                total_sq = total_sq + z.square().sum(dims)  # [D] or []
        finally:
            self.train(was_training)
        if count == 0:
            raise ConfigError("fit_statistics got no batches; pass the training data (a non-empty loader)")
        mean = total / count
        std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
        self.set_statistics(mean, 1.0 / std)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents [B, D, *grid] -> normalised latents [B, *grid, D] (channels last)."""
        return (z.movedim(1, -1) - self.latent_shift) * self.latent_scale  # [B, *grid, D]

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, *grid, D] -> raw latents [B, D, *grid] for the decoder."""
        return (latents / self.latent_scale + self.latent_shift).movedim(-1, 1)  # [B, D, *grid]

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
        """Raise ConfigError unless `latents` is a float tensor [B, *grid, latent_dim]."""
        if latents.ndim != len(self.grid_axes) + 2 or not latents.is_floating_point():
            layout = ", ".join(("B", *self.grid_axes, "D"))
            raise ConfigError(
                f"decode expects float latents of shape [{layout}] (channels last), got "
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
    """KL(N(mean, exp(logvar)) || N(0, I)) of [B, D, *grid] posteriors, summed per sample -> [B] (LDM)."""
    return 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)  # [B]
