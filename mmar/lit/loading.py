"""Loading trained models from a Lightning checkpoint or an exported folder (`mmar export`), weights-only,
with errors that say what to do.

Both are rebuilt without the paths they were trained with: exported folders carry their tokenizers, and
checkpoints carry their tokenizers' configs (`mmar.export.module_from_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmar.checkpoint_io import read_checkpoint
from mmar.errors import ConfigError
from mmar.export import exported_kind, load_exported, module_from_checkpoint
from mmar.lit.generator_module import GeneratorModule
from mmar.lit.nonfinite import check_finite_weights
from mmar.lit.stream_module import StreamModule


def _checked(source: str | Path, how_to_train: str) -> Path:
    path = Path(source)
    if not path.exists():
        raise ConfigError(
            f"checkpoint not found: '{source}'; train one first (e.g. `{how_to_train}`) or pass the path "
            "of an existing .ckpt or exported folder (mmar export)"
        )
    return path


def _load(source: str | Path, device, how_to_train: str, expected: type, **overrides):
    path = _checked(source, how_to_train)
    load = load_exported if path.is_dir() else module_from_checkpoint
    module = load(path, device, **overrides)
    if not isinstance(module, expected):
        raise ConfigError(
            f"'{source}' holds a {type(module).__name__}, not a {expected.__name__}; pass the model's own "
            "checkpoint or exported folder"
        )
    check_finite_weights(module.state_dict(), str(path))  # a diverged run's weights sample only garbage
    return module


def is_stream_checkpoint(checkpoint: str | Path) -> bool:
    """Whether a checkpoint or exported folder holds a StreamModule (a text LM or a unified model)."""
    path = _checked(checkpoint, "mmar fit --config ...")
    if path.is_dir():
        return exported_kind(path) == "StreamModule"
    saved = read_checkpoint(path, mmap=True)  # mmap: weights stay unread
    return "text_tokenizer" in saved.get("hyper_parameters", {})


def load_generator(checkpoint: str | Path, device: str | torch.device = "cpu") -> GeneratorModule:
    """A GeneratorModule from a Lightning checkpoint or an exported folder, weights-only, in eval mode (EMA
    weights if trained so)."""
    return _load(checkpoint, device, "mmar fit --config configs/quickstart/digits_ar.yaml", GeneratorModule)


def load_stream(
    checkpoint: str | Path, device: str | torch.device = "cpu", text_tokenizer: str | None = None
) -> StreamModule:
    """A StreamModule from a Lightning checkpoint or an exported folder, weights-only; `text_tokenizer`
    replaces the one it carries (it must be the same tokenizer: vocabulary and digest are checked)."""
    overrides = {"text_tokenizer": text_tokenizer} if text_tokenizer else {}  # checked by the constructor
    how_to_train = "mmar fit --config configs/text/embedded_lm.yaml"
    return _load(checkpoint, device, how_to_train, StreamModule, **overrides)
