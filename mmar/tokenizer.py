"""The Tokenizer contract shared by every tokenizer, visual and audio, and its registry.

A tokenizer maps an input to a grid of tokens and back:

- `encode(x)`: images [B, C, H, W], videos [B, C, T, H, W] or audio [B, C, samples] in [-1, 1] ->
  discrete ids [B, *grid] (long; [B, *grid, depth] for residual codes) or latents [B, *grid, D]
- `decode(tokens)`: the inverse, back to the input's layout
- `grid(input_shape)`: the token grid of one input, e.g. (8, 8), (3, 8, 8) or (frames,)
- `kind`: "discrete" (with `vocab_size`) or "continuous" (with `latent_dim`); `modality`: what `encode`
  reads ("image", "video", "audio")

Training hooks that `mmar.lit.TokenizerModule` calls, all optional: `set_progress`, `fit_statistics` (before
export), `reconstruction_losses(recon, x)` (a tokenizer's own named losses) and `make_discriminator`
(its own adversary, with the `(logits, features)` contract; None: the image PatchGAN).

Weights are exported as safetensors next to a JSON config holding the constructor arguments, so a
tokenizer is rebuilt from a folder with `load_tokenizer(path)` without pickles.

The implementations live in tokenizer packages (`tokenizers_visual`, ...) that depend on `mmar`, never
the other way round: a package registers its classes when imported, and `mmar` imports the installed
packages (the "mmar.tokenizers" entry-point group, plus the ones shipped with mmar) the first time it
meets a tokenizer name it does not know.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import os
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import save_file
from torch import nn

from mmar.errors import ConfigError
from mmar.io import atomic_write, read_json, read_safetensors

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
TRAINED_SIZE_KEY = "trained_image_size"
"""Config entry (not a constructor argument) with the image / frame size a tokenizer was trained at."""
EXPORTED_TOKENIZER_DIR = "tokenizer"
"""Where an exported generator folder (`mmar export`) keeps its tokenizer."""

TOKENIZERS: dict[str, type[Tokenizer]] = {}
"""Registry: the `name` of each tokenizer class -> the class (filled by `register_tokenizer`)."""
SHIPPED_PACKAGES = ("tokenizers_visual", "tokenizers_audio")
"""Tokenizer packages shipped with mmar, imported even where the entry points are not installed."""
ENTRY_POINT_GROUP = "mmar.tokenizers"


def register_tokenizer(cls: type[Tokenizer]) -> type[Tokenizer]:
    """Class decorator adding a tokenizer to `TOKENIZERS` under its `name`."""
    TOKENIZERS[cls.name] = cls
    return cls


class Tokenizer(nn.Module):
    """Base class. Subclasses set `name`, `kind`, and store their constructor kwargs in `self.config`."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "discrete" | "continuous"
    modality: ClassVar[str] = "image"
    """What `encode` reads: "image" ([B, C, H, W]), "video" ([B, C, T, H, W], grid (t, h, w)) or "audio"."""
    config: dict[str, Any]

    in_channels: int
    downsample: int
    vocab_size: int | None = None
    latent_dim: int | None = None
    token_shape: tuple[int, ...] = ()
    """Ids per grid cell beyond the grid: () for one id, (C,) for per-channel ids (TokenBridge)."""
    trained_image_size: int | None = None
    """Image (frame) height it was trained at, recorded by TokenizerModule; None when unknown (older
    exports): a generator at another size is refused (`check_image_size`)."""
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

    def make_discriminator(self, **kwargs: Any) -> nn.Module | None:
        """The adversary that `TokenizerModule` trains this tokenizer against when its `gan_weight` > 0,
        built from the module's `disc_kwargs`; None (the default) means "use the module's image PatchGAN",
        which tokenizers of images and videos (seen as frames) share.

        The contract of a returned discriminator `d`, called on a batch in the layout `encode` reads (the
        real inputs, or the reconstructions):

            logits, features = d(x)

        - `logits`: a list of real/fake logit maps, one per sub-discriminator (e.g. per STFT scale), each
          of any shape; higher means "real";
        - `features`: per sub-discriminator, a list of its intermediate feature maps (any shapes, paired
          one to one between real and reconstructed inputs), or empty lists when it has none.

        `TokenizerModule` computes every adversarial term from these, in one place, with EnCodec's losses
        (`mmar.lit.losses`): the generator's `multiscale_hinge_g_loss(logits)` (mean over
        sub-discriminators of E[relu(1 - D_k(x̂))]), the relative `feature_matching_loss` between the real
        and reconstructed features when there are any, and the discriminator's
        `multiscale_hinge_d_loss` (mean over sub-discriminators of E[relu(1 - D_k(x))] + E[relu(1 + D_k(x̂))]).
        Unknown `kwargs` should raise ConfigError naming the valid ones.
        """
        if kwargs:
            raise ConfigError(
                f"disc_kwargs {sorted(kwargs)} configure a tokenizer's own discriminator, and the "
                f"{self.name} tokenizer has none (the image PatchGAN takes disc_channels / disc_layers)"
            )
        return None

    def check_image_size(self, image_size: int, where: str) -> None:
        """ConfigError when images of `image_size` are not the size this tokenizer was trained at."""
        if self.trained_image_size is not None and image_size != self.trained_image_size:
            raise ConfigError(
                f"image_size={image_size} but the {self.name} tokenizer at '{where}' was trained on "
                f"{self.trained_image_size}px images; set image_size: {self.trained_image_size} or train a "
                f"tokenizer at {image_size}"
            )

    def check_input(self, x: torch.Tensor) -> None:
        """Validate an image batch [B, C, H, W] against this tokenizer (clear error otherwise)."""
        if x.ndim != 4:
            raise ConfigError(f"expected images of shape [B, C, H, W], got {tuple(x.shape)}")
        self.grid(tuple(x.shape[1:]))

    def saved_config(self) -> dict[str, Any]:
        """What `config.json` holds: the name, the constructor kwargs and the training image size."""
        config = {"name": self.name, **self.config}
        if self.trained_image_size is not None:
            config[TRAINED_SIZE_KEY] = self.trained_image_size
        return config

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write `config.json` and `model.safetensors` into the folder `path` (atomically per file)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = self.saved_config()
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(path / WEIGHTS_NAME, lambda tmp: save_file(state, tmp))
        atomic_write(path / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2)))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Tokenizer:
        """Rebuild a tokenizer saved with `save_pretrained` (any registered class)."""
        return load_tokenizer(path)


def tokenizer_folder(path: str | os.PathLike) -> Path:
    """The folder holding a tokenizer's files: `path` itself, or the tokenizer inside an exported
    generator folder (`mmar export`), so a generator's `tokenizer` may name either."""
    path = Path(path)
    inner = path / EXPORTED_TOKENIZER_DIR
    if (inner / CONFIG_NAME).is_file() and "mmar_module" in read_json(path / CONFIG_NAME):
        return inner
    return path


def read_tokenizer_config(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON config of a saved tokenizer, with a clear error when the folder is not one."""
    config_file = tokenizer_folder(path) / CONFIG_NAME
    if not config_file.is_file():
        raise ConfigError(
            f"no tokenizer at '{path}' (missing {CONFIG_NAME}); train one first, e.g. "
            "`mmar fit --config configs/quickstart/digits_vq.yaml`, or fix the path"
        )
    return read_json(config_file)


def import_tokenizer_packages() -> None:
    """Import every tokenizer package, which registers their classes: the installed entry points of
    `ENTRY_POINT_GROUP`, and those of `SHIPPED_PACKAGES` that an older install (whose metadata predates
    a package) can import."""
    for name in sorted({entry.value for entry in entry_points(group=ENTRY_POINT_GROUP)}):
        importlib.import_module(name)
    for name in SHIPPED_PACKAGES:
        if importlib.util.find_spec(name) is not None:
            importlib.import_module(name)


def tokenizer_class(name: str, where: str) -> type[Tokenizer]:
    """The registered class called `name` (importing the tokenizer packages first when needed)."""
    if name not in TOKENIZERS:
        import_tokenizer_packages()
    if name not in TOKENIZERS:
        raise ConfigError(f"unknown tokenizer name '{name}' in {where}; known: {sorted(TOKENIZERS)}")
    return TOKENIZERS[name]


def build_tokenizer(config: dict[str, Any]) -> Tokenizer:
    """Instantiate the tokenizer `config["name"]` (default "vq") with the remaining entries as kwargs."""
    config = dict(config)
    name = config.pop("name", "vq")
    cls = tokenizer_class(name, "model.tokenizer")
    params = inspect.signature(cls).parameters
    unknown = sorted(set(config) - set(params))
    if unknown:
        raise ConfigError(
            f"unknown argument(s) {unknown} in model.tokenizer for the '{name}' tokenizer; "
            f"valid: {sorted(p for p in params if p not in ('self', 'args', 'kwargs'))}"
        )
    return cls(**config)


def load_tokenizer(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Tokenizer:
    """Load any registered tokenizer from a folder written by `save_pretrained` (or an exported generator
    folder, whose tokenizer it loads); ConfigError naming the file when one is missing or corrupt."""
    folder = tokenizer_folder(path)
    config = read_tokenizer_config(folder)
    if "name" not in config:
        raise ConfigError(f"{folder / CONFIG_NAME} has no 'name'; it was not written by save_pretrained")
    name = config.pop("name")
    trained_image_size = config.pop(TRAINED_SIZE_KEY, None)
    tokenizer = tokenizer_class(name, str(folder))(**config)
    tokenizer.load_state_dict(read_safetensors(folder / WEIGHTS_NAME, map_location))
    tokenizer.trained_image_size = trained_image_size
    return tokenizer.eval()
