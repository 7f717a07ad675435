"""The Tokenizer contract shared by every visual (and audio) tokenizer.

A tokenizer maps pixels to a grid of tokens and back:

- `encode(x)`: images [B, C, H, W] in [-1, 1] -> discrete ids [B, h, w] (long) or latents [B, h, w, D]
- `decode(tokens)`: the inverse, back to [B, C, H, W] in [-1, 1]
- `grid(input_shape)`: the token grid for an input of shape (C, H, W), e.g. (8, 8)
- `kind`: "discrete" (with `vocab_size`) or "continuous" (with `latent_dim`)

Weights are exported as safetensors next to a JSON config holding the constructor arguments, so a
tokenizer is rebuilt from a folder with `load_tokenizer(path)` without pickles.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mmar.errors import ConfigError
from mmar.io import atomic_write

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

TOKENIZERS: dict[str, type[Tokenizer]] = {}
"""Registry: the `name` of each tokenizer class -> the class (filled by `register_tokenizer`)."""


def register_tokenizer(cls: type[Tokenizer]) -> type[Tokenizer]:
    """Class decorator adding a tokenizer to `TOKENIZERS` under its `name`."""
    TOKENIZERS[cls.name] = cls
    return cls


class Tokenizer(nn.Module):
    """Base class. Subclasses set `name`, `kind`, and store their constructor kwargs in `self.config`."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "discrete" | "continuous"
    modality: ClassVar[str] = "image"
    """What `encode` reads: "image" ([B, C, H, W]) or "video" ([B, C, T, H, W], token grid [t, h, w])."""
    config: dict[str, Any]

    in_channels: int
    downsample: int
    vocab_size: int | None = None
    latent_dim: int | None = None
    token_shape: tuple[int, ...] = ()
    """Ids per grid cell beyond the grid: () for one id, (C,) for per-channel ids (TokenBridge)."""
    variable_length: ClassVar[bool] = False
    """True when `encode` returns padded tokens with a padding mask and geometry (subobject tokens)."""

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Token grid for an input of shape (C, H, W); raises ConfigError when it does not fit."""
        c, *spatial = input_shape
        if c != self.in_channels:
            raise ConfigError(
                f"input has {c} channels but the {self.name} tokenizer expects {self.in_channels}; "
                f"convert the data (e.g. grayscale vs RGB) or train a tokenizer with in_channels={c}"
            )
        for size in spatial:
            if size % self.downsample:
                raise ConfigError(
                    f"input size {tuple(spatial)} is not divisible by the tokenizer's downsampling factor "
                    f"{self.downsample}; resize the data to a multiple of {self.downsample}"
                )
        return tuple(size // self.downsample for size in spatial)

    def fit_statistics(self, batches: Iterable[torch.Tensor]) -> None:
        """Fit data-derived statistics from input batches before export; nothing to fit by default.

        Continuous tokenizers override this to compute their latent scale (and shift), so that the
        latents a generator sees are normalised by numbers measured on data, never hard-coded.
        """

    def set_progress(self, progress: float) -> None:
        """Hook called by `TokenizerModule` before each training step with the fraction of training done
        (0 to 1), for tokenizers with schedules (e.g. RobusTok's annealed perturbation); a no-op here."""

    def check_input(self, x: torch.Tensor) -> None:
        """Validate an image batch [B, C, H, W] against this tokenizer (clear error otherwise)."""
        if x.ndim != 4:
            raise ConfigError(f"expected images of shape [B, C, H, W], got {tuple(x.shape)}")
        self.grid(tuple(x.shape[1:]))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write `config.json` and `model.safetensors` into the folder `path` (atomically per file)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {"name": self.name, **self.config}
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(state, tmp))
        atomic_write(path / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Tokenizer:
        """Rebuild a tokenizer saved with `save_pretrained` (any registered class)."""
        return load_tokenizer(path)


def read_tokenizer_config(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON config of a saved tokenizer, with a clear error when the folder is not one."""
    config_file = Path(path) / CONFIG_NAME
    if not config_file.is_file():
        raise ConfigError(
            f"no tokenizer at '{path}' (missing {CONFIG_NAME}); train one first, e.g. "
            "`mmar fit --config configs/quickstart/digits_vq.yaml`, or fix the path"
        )
    return json.loads(config_file.read_text())


def load_tokenizer(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Tokenizer:
    """Load any registered tokenizer from a folder written by `save_pretrained`."""
    config = read_tokenizer_config(path)
    name = config.pop("name")
    if name not in TOKENIZERS:
        raise ConfigError(f"unknown tokenizer '{name}' in {path}; known: {sorted(TOKENIZERS)}")
    tokenizer = TOKENIZERS[name](**config)
    state = load_file(str(Path(path) / WEIGHTS_NAME), device=str(map_location))
    tokenizer.load_state_dict(state)
    return tokenizer.eval()
