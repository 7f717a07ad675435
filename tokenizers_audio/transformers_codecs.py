"""The neural audio codecs of `transformers` as frozen discrete audio tokenizers: EnCodec (`EncodecModel`,
Défossez et al., 2022), DAC (`DacModel`, Kumar et al., 2023) and Mimi (`MimiModel`, Kyutai's Moshi codec,
2024), all residual-VQ codecs: audio [B, C, samples] in [-1, 1] <-> ids [B, frames, Q].

The codec comes from `model`, a local folder written by a transformers model's `save_pretrained` (loaded
offline) or a Hugging Face model id (the local cache, else the network), or from `config`, a transformers
config dict (random init: tests, or rebuilding a saved tokenizer). The family is read from the config's
`model_type`. The saved tokenizer keeps the full transformers config in its JSON (`config`) and the
weights in its own `model.safetensors` (the wrapped model's state dict, weight-norm parametrizations
included, under `model.`), so `load_tokenizer` rebuilds it offline, without the original folder.

Layouts: transformers returns codes level-major (EnCodec's quantizer [Q, B, frames], DAC and Mimi
[B, Q, frames]); the tokenizer's ids are time-major [B, frames, Q] (long), as `RVQCodec`'s.

Levels: `num_quantizers` picks how many residual levels the ids carry (default: all the model has), per
model and per `encode` call:

- EnCodec: a bandwidth, as transformers' `bandwidth` argument; only the level counts of the config's
  `target_bandwidths` (1.5, 3, 6, 12, 24 kbit/s: 2, 4, 8, 16, 32 levels for `facebook/encodec_24khz`).
- DAC: transformers' `n_quantizers`, 1..`n_codebooks`.
- Mimi: transformers' `num_quantizers`, `num_semantic_quantizers`..`num_quantizers` (the semantic
  level always comes first).

`decode` takes ids with any 1..Q levels (the first levels of a larger code). Audio lengths must be a
multiple of the hop (the codecs pad otherwise). The whole clip is encoded in one pass: EnCodec's
`chunk_length_s` chunking and `normalize` rescaling (the 48 kHz model) are not applied, since ids carry no
per-chunk scale; DAC's decoder is short by a few samples with odd strides (its transposed convs have no
output padding), so `decode` pads the end to `frames * hop` with zeros.

The tokenizer is inference-only: the model stays in eval mode with gradients off.
"""

from __future__ import annotations

import importlib
import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mmar.errors import ConfigError
from mmar.tokenizer import register_tokenizer
from tokenizers_audio.base import AudioTokenizer

INSTALL_HINT = 'pip install "mmar[codecs]"'
MODEL_CLASSES = {"encodec": "EncodecModel", "dac": "DacModel", "mimi": "MimiModel"}
"""The supported transformers `model_type`s and their model classes."""
DROPPED_KEYS = ("transformers_version", "dtype", "torch_dtype")
"""Config entries not kept: version stamps and the load dtype (the tokenizer holds the model in float32)."""


def transformers_module():
    """`transformers`, imported lazily (an optional extra; importing its models takes seconds)."""
    try:
        return importlib.import_module("transformers")
    except ImportError as err:
        raise ConfigError(
            f"the transformers_codec tokenizer needs transformers; install it with {INSTALL_HINT}"
        ) from err


def model_class(model_type: str, where: str) -> type[nn.Module]:
    """The transformers model class of a supported `model_type` (ConfigError listing them otherwise)."""
    if model_type not in MODEL_CLASSES:
        supported = ", ".join(f"{t} ({c})" for t, c in MODEL_CLASSES.items())
        raise ConfigError(
            f"{where} is a transformers '{model_type}' model; the transformers_codec tokenizer supports "
            f"{supported}"
        )
    return getattr(transformers_module(), MODEL_CLASSES[model_type])


def looks_like_path(model: str) -> bool:
    """True when `model` can only be a local path (a Hugging Face id is `name` or `owner/name`)."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model


def first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def load_pretrained(model: str) -> nn.Module:
    """A transformers codec from a local folder (offline) or a Hugging Face model id."""
    path = Path(model).expanduser()
    hint = (
        "give a local folder written by save_pretrained of a transformers EncodecModel, DacModel or "
        "MimiModel, or a Hugging Face model id such as facebook/encodec_24khz"
    )
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model='{model}' has no config.json, so it is not a transformers model; {hint}"
            )
        source, local = str(path), True
    elif path.exists() or looks_like_path(model):
        raise ConfigError(f"model='{model}': no such folder; {hint}")
    else:
        source, local = model, False
    transformers = transformers_module()
    fix = hint if local else f"{hint}; a model id not in the Hugging Face cache needs the network"
    try:
        hf_config = local_first(transformers.AutoConfig.from_pretrained, source, local)
    except (OSError, ValueError) as err:  # no such model id, no network, unreadable config
        raise ConfigError(f"could not load model='{model}' ({first_line(err)}); {fix}") from err
    cls = model_class(hf_config.model_type, f"model='{model}'")
    try:
        return local_first(cls.from_pretrained, source, local)
    except (OSError, ValueError) as err:  # missing or mismatched weights
        raise ConfigError(
            f"could not load the weights of model='{model}' ({first_line(err)}); {fix}"
        ) from err


def local_first(load: Any, source: str, local: bool) -> Any:
    """`load(source)` from local files (the folder, or a model id's Hugging Face cache, with no network
    access), else, for a model id not cached, from the network."""
    try:
        return load(source, local_files_only=True)
    except (OSError, ValueError):
        if local:
            raise
    return load(source)


def build_from_config(config: dict[str, Any]) -> nn.Module:
    """A randomly initialised transformers codec from its config dict (its `model_type` picks the class)."""
    if not isinstance(config, dict) or "model_type" not in config:
        raise ConfigError(
            "config must be a transformers config dict with a 'model_type' (one of "
            f"{sorted(MODEL_CLASSES)}), e.g. the config.json of a model folder; got {config!r:.200}"
        )
    model_type = config["model_type"]
    cls = model_class(model_type, "config")
    kwargs = {k: v for k, v in config.items() if k != "model_type"}
    try:
        return cls(transformers_module().AutoConfig.for_model(model_type, **kwargs))
    except Exception as err:  # transformers' strict config validation raises its own error types
        raise ConfigError(f"could not build a {cls.__name__} from config: {first_line(err)}") from err


def public_config(hf_config: Any) -> dict[str, Any]:
    """The model's transformers config as plain JSON types, without private keys and version stamps."""
    raw = hf_config.to_dict()
    config = {k: v for k, v in raw.items() if not k.startswith("_") and k not in DROPPED_KEYS}
    if raw.get("_frame_rate") is not None:  # Mimi checkpoints that state their frame rate
        config["frame_rate"] = raw["_frame_rate"]
    return json.loads(json.dumps(config))  # tuples -> lists, so the config equals its saved JSON


def reset_after_load(module: TransformersCodec, incompatible_keys: Any) -> None:
    """Load-state-dict post hook: the loaded codebooks replace any cached ones."""
    module._reset_codebook_caches()


@register_tokenizer
class TransformersCodec(AudioTokenizer):
    """Frozen discrete audio tokenizer over a transformers EnCodec, DAC or Mimi model: audio
    [B, C, samples] <-> ids [B, samples / hop, Q] in [0, codebook_size).

    Args:
        model: a local folder written by a transformers model's `save_pretrained`, or a Hugging Face
            model id (e.g. "facebook/encodec_24khz", "descript/dac_16khz", "kyutai/mimi"); not kept in
            the saved config, which stores `config` and the weights instead.
        config: a transformers config dict with its `model_type` (random init); exactly one of the two.
        num_quantizers: residual levels Q of the ids (default: all levels of the model); EnCodec: one of
            the level counts of its `target_bandwidths`, DAC: 1..n_codebooks, Mimi:
            num_semantic_quantizers..num_quantizers.
    """

    name = "transformers_codec"
    kind = "discrete"

    def __init__(
        self,
        model: str | None = None,
        config: dict[str, Any] | None = None,
        num_quantizers: int | None = None,
    ):
        super().__init__()
        if (model is None) == (config is None):
            raise ConfigError(
                "give exactly one of model (a local transformers codec folder or a Hugging Face model id) "
                "or config (a transformers config dict with its model_type, randomly initialised)"
            )
        hf_model = load_pretrained(str(model)) if model is not None else build_from_config(config)
        self.model = hf_model.float().eval().requires_grad_(False)
        self.model_type = hf_model.config.model_type
        self._init_geometry(hf_model)
        self.num_quantizers = self.valid_levels[-1]  # all levels unless num_quantizers says otherwise
        self.num_quantizers = self._levels(num_quantizers)
        self.token_shape = (self.num_quantizers,)
        self.config = {"config": public_config(hf_model.config), "num_quantizers": self.num_quantizers}
        self.register_load_state_dict_post_hook(reset_after_load)
        self.eval()

    def _init_geometry(self, hf_model: nn.Module) -> None:
        """Channels, sample rate, hop, codebook size and the valid level counts of the wrapped model."""
        c = hf_model.config
        self.sample_rate = int(c.sampling_rate)
        self.vocab_size = int(c.codebook_size)
        self._bandwidths: dict[int, float] = {}  # EnCodec: levels -> bandwidth (kbit/s)
        if self.model_type == "encodec":
            self.in_channels = int(c.audio_channels)
            self.hop = math.prod(c.upsampling_ratios)
            self.max_quantizers = len(hf_model.quantizer.layers)
            for bandwidth in c.target_bandwidths:
                levels = hf_model.quantizer.get_num_quantizers_for_bandwidth(bandwidth)
                self._bandwidths.setdefault(min(levels, self.max_quantizers), bandwidth)
            self.valid_levels = tuple(sorted(self._bandwidths))
            if c.normalize:
                warnings.warn(
                    "this EnCodec model normalises each clip by its RMS and rescales the output; ids carry "
                    "no scale, so the transformers_codec tokenizer encodes the audio as given (no "
                    "normalisation)",
                    stacklevel=3,
                )
        elif self.model_type == "dac":
            self.in_channels = 1  # DAC is mono
            self.hop = math.prod(c.downsampling_ratios)
            self.max_quantizers = int(c.n_codebooks)
            self.valid_levels = tuple(range(1, self.max_quantizers + 1))
        else:  # mimi: SEANet strides, then a stride-`latent_stride` conv when the frame rate is lower
            self.in_channels = int(c.audio_channels)
            latent_stride = c.latent_stride if c.frame_rate != c.encodec_frame_rate else 1
            self.hop = math.prod(c.upsampling_ratios) * int(latent_stride)
            self.max_quantizers = int(c.num_quantizers)
            self.valid_levels = tuple(range(int(c.num_semantic_quantizers), self.max_quantizers + 1))

    @property
    def describe(self) -> str:
        return f"{self.model_type} codec"

    # ----------------------------------------------------------------------------------- contract
    @torch.no_grad()
    def encode(self, x: torch.Tensor, num_quantizers: int | None = None) -> torch.Tensor:
        """Audio [B, C, samples] in [-1, 1] -> ids [B, samples / hop, q] (long) with q = `num_quantizers`
        levels (default the tokenizer's)."""
        self.check_input(x)
        q = self._levels(num_quantizers)
        m = self.model
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(next(m.parameters()).dtype)
            if self.model_type == "encodec":
                codes = m.quantizer.encode(m.encoder(x), self._bandwidths[q])  # [q, B, frames]
                ids = codes.permute(1, 2, 0)
            elif self.model_type == "dac":
                ids = m.encode(x, n_quantizers=q, return_dict=True).audio_codes.transpose(1, 2)
            else:
                ids = m.encode(x, num_quantizers=q, return_dict=True).audio_codes.transpose(1, 2)
        return ids.long().contiguous()

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids [B, frames, q] with any 1 <= q <= the model's levels -> audio [B, C, frames * hop]."""
        self._check_ids(ids)
        codes = ids.long().transpose(1, 2)  # [B, q, frames]
        m = self.model
        with torch.autocast(device_type=ids.device.type, enabled=False):
            if self.model_type == "encodec":
                audio = m.decoder(m.quantizer.decode(codes.transpose(0, 1)))  # codes [q, B, frames]
            elif self.model_type == "dac":
                audio = m.decode(audio_codes=codes, return_dict=True).audio_values[:, None]  # [B, 1, n]
            else:
                audio = m.decode(codes, return_dict=True).audio_values
        samples = ids.shape[1] * self.hop
        return F.pad(audio, (0, samples - audio.shape[-1])).float()  # exactly frames * hop (pad or trim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Autoencode a batch: (recon [B, C, samples], ids [B, frames, Q], a zero auxiliary loss)."""
        ids = self.encode(x)
        return self.decode(ids), ids, x.new_zeros(())

    def train(self, mode: bool = True) -> TransformersCodec:
        """Inference-only: the codec stays in eval mode whatever `mode` is."""
        return super().train(False)

    # ------------------------------------------------------------------------------------ helpers
    def _levels(self, num_quantizers: int | None) -> int:
        if num_quantizers is None:
            return self.num_quantizers
        q = int(num_quantizers)
        if q not in self.valid_levels:
            if self._bandwidths:
                choices = ", ".join(f"{n} ({self._bandwidths[n]} kbit/s)" for n in self.valid_levels)
                detail = f"one of the levels of the model's target_bandwidths: {choices}"
            else:
                detail = f"in {self.valid_levels[0]}..{self.valid_levels[-1]}"
            raise ConfigError(
                f"num_quantizers={num_quantizers} for this {self.model_type} codec must be {detail}"
            )
        return q

    def _reset_codebook_caches(self) -> None:
        """Drop Mimi's cached codebooks (`embed_sum / cluster_usage`, computed on first use), stale once the
        buffers are loaded or moved."""
        for module in self.model.modules():
            if hasattr(module, "_embed") and hasattr(module, "embed_sum"):
                module._embed = None

    def _apply(self, fn, *args, **kwargs):
        out = super()._apply(fn, *args, **kwargs)
        self._reset_codebook_caches()
        return out
