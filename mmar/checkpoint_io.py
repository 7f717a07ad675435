"""Reading and writing model files safely: never unpickling, atomic on write, one-line errors on read.

Every `.ckpt` is read with `torch.load(weights_only=True)` (tensors, primitives and containers only: a
checkpoint that carries a pickled object is refused rather than executed), every weight file with
safetensors, every config as JSON; a truncated or corrupt file becomes a `ConfigError` naming the file and
the cause instead of a deep traceback. `SafeCheckpointIO` is the Lightning `CheckpointIO` the `mmar` CLI
uses: checkpoints are written to a temporary name and renamed (a crash mid-save leaves the previous
`last.ckpt` intact), and `--ckpt_path` is loaded through `read_checkpoint`.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mmar.errors import ConfigError
from mmar.io import atomic_write, first_line


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A Lightning `.ckpt`, loaded weights-only; ConfigError if it is missing, corrupt or pickles objects."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint not found: '{path}'; pass the path of an existing .ckpt")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:  # weights_only refused a global: a pickled object, not weights
        raise ConfigError(
            f"checkpoint '{path}' holds pickled Python objects ({_refused_global(err)}), which mmar never "
            "loads (weights_only); save only tensors and primitives in checkpoints"
        ) from None
    except Exception as err:  # truncated zip, bad magic, I/O error ...
        # torch's own message for a cut-off file can be a bare "Invalid argument": say what it means
        cause = first_line(err) if zipfile.is_zipfile(path) else "not a complete torch zip archive"
        raise ConfigError(
            f"checkpoint '{path}' is truncated or corrupt ({cause}); use another checkpoint (e.g. an earlier "
            "one) or retrain"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"'{path}' is not a Lightning checkpoint (no state_dict); pass one from `mmar fit`")
    return checkpoint


def _refused_global(err: pickle.UnpicklingError) -> str:
    """The object torch's weights-only unpickler refused, e.g. "GLOBAL argparse.Namespace"."""
    found = re.search(r"Unsupported global: (GLOBAL \S+)", str(err))
    return found.group(1) if found else first_line(err)


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, with atomic saves and weights-only loads with one-line errors."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if "://" in str(path):  # remote filesystems (fsspec): Lightning's own save
            return super().save_checkpoint(checkpoint, path, storage_options)
        save = super().save_checkpoint
        atomic_write(path, lambda tmp: save(checkpoint, tmp, storage_options))

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        """Always weights-only, whatever the caller asks (`weights_only` is accepted for the interface)."""
        if "://" in str(path):
            return super().load_checkpoint(path, weights_only=True)
        return read_checkpoint(path, map_location="cpu" if map_location is None else map_location)


def use_safe_checkpoint_io(trainer) -> None:
    """Give `trainer` the SafeCheckpointIO unless its config chose a checkpoint IO of its own."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = SafeCheckpointIO()
