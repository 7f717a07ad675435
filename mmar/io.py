"""File writing shared by tokenizers, caches and metrics: atomic, so readers never see half a file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from mmar.errors import ConfigError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(target: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` on a temporary file next to `target`, then rename it onto `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would make results private to their writer
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_npz(tmp: str, **arrays) -> None:
    """A writer for `atomic_write` / `write_outputs`: `np.savez` through a file object (np.savez would
    append .npz to a path)."""
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)


def save_npz(target: str | os.PathLike, **arrays) -> None:
    """`np.savez` to `target`, atomically."""
    atomic_write(target, lambda tmp: write_npz(tmp, **arrays))


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


def write_outputs(folder: str | os.PathLike, writers: dict[str, Callable[[str], None]]) -> None:
    """Write several result files of one run into `folder`, all or nothing: every `writers[name](tmp)`
    first writes a temporary file, and only when all of them succeeded are they renamed onto their names,
    so a failure leaves the previous results (e.g. samples.npz, grid.png, metrics.json) untouched."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    try:
        for name, write in writers.items():
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=Path(name).suffix)
            os.close(fd)
            written[name] = tmp
            write(tmp)
            os.chmod(tmp, 0o666 & ~_umask())
        for name, tmp in written.items():
            os.replace(tmp, folder / name)
    finally:
        for tmp in written.values():
            if os.path.exists(tmp):
                os.remove(tmp)


def write_json(tmp: str, value) -> None:
    """A writer for `atomic_write` / `write_outputs`: `value` as indented JSON."""
    Path(tmp).write_text(json.dumps(value, indent=2))


def atomic_dir(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call `write(tmp_dir)` on a fresh folder next to `target`, then rename it onto `target`: readers see
    the old folder or the complete new one, never a half-written one (an existing `target` is replaced)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    old = target.with_name(f".{target.name}.old")
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would make the folder private to its writer
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)  # two renames: a folder cannot be replaced in one
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def first_line(err: BaseException) -> str:
    """`Type: first line of the message` of an exception, for one-line errors about files."""
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def read_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors` file; ConfigError naming the file when it is missing or corrupt."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights not found: '{path}'; export the model again (mmar export)")
    try:
        return load_file(str(path), device=str(device))
    except Exception as err:
        raise ConfigError(
            f"weights file '{path}' is truncated or corrupt ({first_line(err)}); export the model again"
        ) from None


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """A JSON object from a file; ConfigError naming the file when it is missing or not valid JSON."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config not found: '{path}'; export the model again (mmar export)")
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        cause = first_line(err)
        raise ConfigError(f"config '{path}' is truncated or corrupt ({cause}); write it again") from None
    if not isinstance(value, dict):
        raise ConfigError(f"config '{path}' holds a {type(value).__name__}, expected a JSON object")
    return value


def require_fields(config: dict[str, Any], fields: tuple[str, ...], path: str | os.PathLike) -> None:
    """ConfigError naming the first of `fields` missing from a config read from `path`."""
    missing = [field for field in fields if field not in config]
    if missing:
        raise ConfigError(f"config '{path}' has no field {missing[0]!r}; export or save the model again")
