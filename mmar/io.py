"""File writing shared by tokenizers, caches and metrics: atomic, so readers never see half a file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mmar.errors import ConfigError


def atomic_write(target: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` on a temporary file next to `target`, then rename it onto `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_npz(target: str | os.PathLike, **arrays) -> None:
    """`np.savez` to `target`, atomically (through a file object: np.savez would append .npz to a path)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(target, write)


def load_uint8_npz(source: str | os.PathLike, keys: tuple[str, ...], layout: str) -> np.ndarray:
    """The first of `keys` found in an `.npz`: a uint8 array of the given layout (e.g. "N, H, W, C")."""
    with np.load(source) as data:
        key = next((k for k in keys if k in data), None)
        if key is None:
            raise ConfigError(f"{source} has none of {list(keys)}: expected uint8 [{layout}]")
        array = data[key]
    if array.dtype != np.uint8 or array.ndim != len(layout.split(",")):
        raise ConfigError(f"{source}['{key}'] must be uint8 [{layout}], got {array.dtype} {array.shape}")
    return array
