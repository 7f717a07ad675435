"""Loading trained LightningModules from checkpoints, with errors that say what to do."""

from __future__ import annotations

from pathlib import Path

import torch

from mmar.errors import ConfigError
from mmar.lit.generator_module import GeneratorModule
from mmar.lit.nonfinite import check_finite_weights
from mmar.lit.stream_module import StreamModule


def _checked(checkpoint: str | Path, how_to_train: str) -> Path:
    path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(
            f"checkpoint not found: '{checkpoint}'; train one first (e.g. `{how_to_train}`) or pass the path "
            "of an existing .ckpt"
        )
    return path


def is_stream_checkpoint(checkpoint: str | Path) -> bool:
    """Whether a checkpoint holds a StreamModule (a text LM or a unified text + image model)."""
    path = _checked(checkpoint, "mmar fit --config ...")
    saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mmap: weights stay unread
    return "text_tokenizer" in saved.get("hyper_parameters", {})


def load_generator(checkpoint: str | Path, device: str | torch.device = "cpu") -> GeneratorModule:
    """A GeneratorModule from a Lightning checkpoint, loaded weights-only (EMA weights if trained so)."""
    path = _checked(checkpoint, "mmar fit --config configs/quickstart/digits_ar.yaml")
    module = GeneratorModule.load_from_checkpoint(path, map_location=device, weights_only=True)
    check_finite_weights(module.state_dict(), str(path))  # a diverged run's weights sample only garbage
    return module.to(device).eval()


def load_stream(
    checkpoint: str | Path, device: str | torch.device = "cpu", text_tokenizer: str | None = None
) -> StreamModule:
    """A StreamModule from a Lightning checkpoint, weights-only; `text_tokenizer` replaces the path it was
    trained with (it must be the same tokenizer: the checkpoint's vocabulary and digest are checked)."""
    path = _checked(checkpoint, "mmar fit --config configs/text/embedded_lm.yaml")
    overrides = {"text_tokenizer": text_tokenizer} if text_tokenizer else {}
    module = StreamModule.load_from_checkpoint(path, map_location=device, weights_only=True, **overrides)
    check_finite_weights(module.state_dict(), str(path))
    return module.to(device).eval()
