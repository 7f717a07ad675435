"""Any diffusers `AutoencoderKL` as a continuous tokenizer (the KL-VAE of Rombach et al., 2022, "High-
Resolution Image Synthesis with Latent Diffusion Models", as published for Stable Diffusion, SDXL, SD3...).

The VAE comes from a local folder (`vae_path`, e.g. the `vae/` subfolder of a pipeline) or a diffusers
config dict (`vae_config`, random init: tests, or training from scratch with TokenizerModule). The saved
tokenizer keeps the full diffusers config in its JSON and the weights in its own `model.safetensors`,
so it reloads with `load_tokenizer` without the original folder.

Latents are normalised as in `mmar.continuous.LatentNormalization`: `latent = (z - shift) * scale`, channels
last. With `use_vae_scaling: true` shift and scale are the VAE's published numbers (diffusers' convention:
`(z - shift_factor) * scaling_factor`, or `(z - latents_mean) * scaling_factor / latents_std` when the
config has per-channel `latents_mean`/`latents_std`) and `fit_statistics` leaves them alone; otherwise
they are fitted on data by `fit_statistics`, as for `KLVAETokenizer`.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from mmar.continuous import LatentNormalization
from mmar.errors import ConfigError
from mmar.tokenizer import Tokenizer, register_tokenizer

INSTALL_HINT = 'pip install "mmar[diffusers]"'


def autoencoder_kl_class() -> type:
    """diffusers' AutoencoderKL, imported lazily (diffusers is an optional extra, slow to import)."""
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:
        raise ConfigError(
            f"the diffusers_vae tokenizer needs diffusers; install it with {INSTALL_HINT}"
        ) from err
    return AutoencoderKL


def build_vae(vae_path: str | None, vae_config: dict[str, Any] | None) -> torch.nn.Module:
    """An AutoencoderKL from a local folder (pretrained weights) or a config dict (random init)."""
    if (vae_path is None) == (vae_config is None):
        raise ConfigError(
            "give exactly one of vae_path (a local diffusers AutoencoderKL folder) or vae_config (a "
            "diffusers AutoencoderKL config dict, randomly initialised)"
        )
    cls = autoencoder_kl_class()
    if vae_path is not None:
        if not (Path(vae_path) / "config.json").is_file():
            raise ConfigError(
                f"vae_path='{vae_path}' is not a diffusers AutoencoderKL folder (no config.json); give a "
                "local folder written by save_pretrained (for a pipeline, its vae/ subfolder)"
            )
        try:
            return cls.from_pretrained(vae_path, local_files_only=True)
        except (OSError, ValueError) as err:  # missing or mismatched weights
            raise ConfigError(f"could not load the AutoencoderKL at vae_path='{vae_path}': {err}") from err
    if not isinstance(vae_config, dict):
        raise ConfigError(f"vae_config must be a dict of AutoencoderKL arguments, got {type(vae_config)}")
    valid = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(k for k in vae_config if k not in valid and not k.startswith("_"))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in vae_config; AutoencoderKL accepts {sorted(valid)}")
    return cls.from_config(vae_config)


def public_config(vae: torch.nn.Module) -> dict[str, Any]:
    """The VAE's diffusers config as plain JSON types, without diffusers' private `_...` keys."""
    config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
    return json.loads(json.dumps(config))  # tuples -> lists, so the config equals its saved JSON


def vae_statistics(config: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """(shift, scale), [] or [D], of diffusers' published latent normalisation for this VAE config."""
    scaling = float(config.get("scaling_factor") or 1.0)
    if config.get("latents_mean") is not None and config.get("latents_std") is not None:
        mean, std = torch.tensor(config["latents_mean"]), torch.tensor(config["latents_std"])  # [D]
        return mean, scaling / std
    return torch.tensor(float(config.get("shift_factor") or 0.0)), torch.tensor(scaling)


@register_tokenizer
class DiffusersVAETokenizer(LatentNormalization, Tokenizer):
    """Continuous tokenizer over a diffusers AutoencoderKL: images [B, C, H, W] <-> latents [B, h, w, D].

    Args:
        vae_path: local folder of a diffusers AutoencoderKL (`from_pretrained`); not kept in the saved
            config, which stores `vae_config` and the weights instead.
        vae_config: a diffusers AutoencoderKL config dict (random init); exactly one of the two.
        use_vae_scaling: normalise with the VAE config's scaling_factor / shift_factor (or latents_mean /
            latents_std), the published convention for SD VAEs, instead of fitting on data.
        kl_weight: weight of the KL term when training (LDM convention: summed over latent elements,
            averaged over the batch).
        per_channel_scale: with fitted statistics, one shift/scale per latent channel.
        latent_scale: the normalisation scale (float or list of D floats); None until set.
        latent_shift: the normalisation shift, as `latent_scale`.
    """

    name = "diffusers_vae"
    kind = "continuous"

    def __init__(
        self,
        vae_path: str | None = None,
        vae_config: dict[str, Any] | None = None,
        use_vae_scaling: bool = False,
        kl_weight: float = 1e-6,
        per_channel_scale: bool = False,
        latent_scale: float | list[float] | None = None,
        latent_shift: float | list[float] | None = None,
    ):
        super().__init__()
        self.vae = build_vae(vae_path, vae_config)
        vae_config = public_config(self.vae)
        self.config = {"vae_config": vae_config, "use_vae_scaling": use_vae_scaling, "kl_weight": kl_weight}
        if vae_config["out_channels"] != vae_config["in_channels"]:
            raise ConfigError(
                f"the VAE maps {vae_config['in_channels']} channels to {vae_config['out_channels']}; an "
                "image tokenizer needs in_channels == out_channels in its config"
            )
        self.in_channels = vae_config["in_channels"]
        self.downsample = 2 ** (len(vae_config["block_out_channels"]) - 1)
        self.latent_dim = vae_config["latent_channels"]
        self._init_latent_normalization(self.latent_dim, per_channel_scale, latent_scale, latent_shift)
        if use_vae_scaling and not self.stats_fitted:
            self.set_statistics(*vae_statistics(vae_config))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Autoencode a batch.

        Args:
            x: images [B, C, H, W] in [-1, 1].

        Returns:
            recon [B, C, H, W], normalised latents [B, h, w, D] and `kl_weight * KL` (a scalar). Training
            mode decodes a sample of q(z|x), eval mode its mean.
        """
        self.check_input(x)
        posterior = self.vae.encode(x).latent_dist
        z = posterior.sample() if self.training else posterior.mode()  # [B, D, h, w]
        aux_loss = self.config["kl_weight"] * posterior.kl().mean()
        return self.vae.decode(z).sample, self.normalize(z), aux_loss

    def encode(
        self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> normalised latents [B, h, w, D] (posterior mean or a sample)."""
        self.check_input(x)
        self._warn_if_unfitted()
        with torch.no_grad():
            posterior = self.vae.encode(x).latent_dist
            z = posterior.sample(generator=generator) if sample else posterior.mean  # [B, D, h, w]
            return self.normalize(z)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, h, w, D] -> images [B, C, h * f, w * f] (roughly in [-1, 1])."""
        self._check_latents(latents)
        self._warn_if_unfitted()
        return self.vae.decode(self.denormalize(latents)).sample  # [B, C, H, W]

    def fit_statistics(self, batches: Iterable[torch.Tensor]) -> None:
        """Fit shift/scale on data (see `LatentNormalization`), unless `use_vae_scaling` keeps the VAE's."""
        if not self.config["use_vae_scaling"]:
            super().fit_statistics(batches)

    def _posterior_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mean  # [B, D, h, w]
