"""Captioned image folders for text-to-image training (the data layout of LlamaGen-T2I and most T2I repos).

Two layouts, pick one per dataset:

* a folder with a caption sidecar next to every image, searched recursively::

      root/0001.jpg  root/0001.txt                  # the whole text file is the caption
      root/sub/0002.png  root/sub/0002.json         # {"caption": "..."} or {"caption": ["...", ...]}

  `name.txt` wins over `name.json` when both exist. A list of captions gives its first one (the same
  caption every epoch; caption dropout for CFG is the text condition's job, not the data's).
* a JSON-lines manifest, one object per line: `{"image": "relative/or/absolute.jpg", "caption": "..."}`;
  relative image paths are relative to the manifest's folder; other keys are ignored.

Images are read and centre-cropped as in `mmar.data.image_folder` (ADM's `center_crop_arr`) and scaled to
[-1, 1]. Captions are stripped of surrounding white space.

Bad input is skipped and counted, not fatal, unless `strict=True` (then a ConfigError names the file):
* at listing time, images without a usable caption (no sidecar, empty caption, unreadable sidecar, a
  manifest line that is not a JSON object with "image" and "caption") are dropped with one warning that
  gives the count (`num_uncaptioned`);
* at read time, a corrupt or missing image makes `__getitem__` return None, is counted (`num_skipped`)
  and warned about once, and `collate_skip_none` drops it from the batch.

Batches: {"image": float32 [B, C, H, W] in [-1, 1], "caption": list[str]} (no "label").
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from mmar.data.base import SplitDataModule
from mmar.data.image_folder import ImageFiles, collate_skip_none, is_image_file
from mmar.errors import ConfigError

log = logging.getLogger(__name__)

LAYOUT_HINT = (
    "expected either root/<any/sub/folders>/<name>.<jpg|png|...> with a caption in <name>.txt or "
    '<name>.json ({"caption": "..."}) next to it, or manifest=<file>.jsonl with one '
    '{"image": "path", "caption": "..."} per line (relative paths are relative to the manifest\'s folder)'
)
# errors of a sidecar or manifest line that cannot be read as text / JSON
_BAD_TEXT = (OSError, UnicodeDecodeError, json.JSONDecodeError)
Listing = tuple[list[tuple[str, str]], list[str]]  # (image path, caption) pairs, and the dropped entries


def _first_caption(value) -> str | None:
    """A stripped caption from a str or the first item of a list of str; None when absent or empty."""
    if isinstance(value, list):
        value = value[0] if value else None
    if not isinstance(value, str):
        return None
    return value.strip() or None


def read_sidecar(image_path: str | os.PathLike) -> str | None:
    """The caption of an image from `<stem>.txt` (preferred) or `<stem>.json`'s "caption"; None if none.

    Raises:
        OSError, UnicodeDecodeError, json.JSONDecodeError: the sidecar exists but cannot be read.
    """
    stem = os.path.splitext(image_path)[0]
    if os.path.isfile(stem + ".txt"):
        with open(stem + ".txt", encoding="utf-8") as f:
            return f.read().strip() or None
    if os.path.isfile(stem + ".json"):
        with open(stem + ".json", encoding="utf-8") as f:
            meta = json.load(f)
        return _first_caption(meta.get("caption")) if isinstance(meta, dict) else None
    return None


def _reject(where: str, why: str, strict: bool, dropped: list[str]) -> None:
    """Record a caption-less image (or raise with `strict`)."""
    if strict:
        raise ConfigError(
            f"{where}: {why}; add a caption or remove the image, or set strict=False to skip "
            f"images without a caption; {LAYOUT_HINT}"
        )
    dropped.append(where)


def list_sidecar_folder(root: str | os.PathLike, strict: bool = False) -> Listing:
    """(image path, caption) for every captioned image under `root` (recursive, sorted), and the dropped.

    Hidden folders (names starting with ".") are not searched.

    Raises:
        ConfigError: `root` is not a folder, or (with `strict`) an image has no usable caption.
    """
    if not Path(root).is_dir():
        raise ConfigError(f"captioned image folder root='{root}' does not exist; {LAYOUT_HINT}")
    paths = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        paths.extend(os.path.join(dirpath, f) for f in filenames if is_image_file(f))
    samples, dropped = [], []
    for path in sorted(paths):
        try:
            caption = read_sidecar(path)
        except _BAD_TEXT as err:
            _reject(path, f"unreadable caption sidecar ({type(err).__name__}: {err})", strict, dropped)
            continue
        if caption is None:
            _reject(path, "no caption (no <name>.txt/.json sidecar, or an empty one)", strict, dropped)
        else:
            samples.append((path, caption))
    return samples, dropped


def read_manifest(manifest: str | os.PathLike, strict: bool = False) -> Listing:
    """(image path, caption) for every usable line of a JSON-lines manifest, and the dropped lines.

    Blank lines are ignored. Relative image paths are resolved against the manifest's folder; whether the
    image exists is checked when it is read (a missing file is skipped and counted then).

    Raises:
        ConfigError: the manifest is missing or unreadable, or (with `strict`) a line is unusable.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ConfigError(f"caption manifest='{manifest}' does not exist; {LAYOUT_HINT}")
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except _BAD_TEXT as err:
        raise ConfigError(f"manifest='{manifest}' is unreadable ({type(err).__name__}: {err})") from err
    samples, dropped = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{manifest}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            _reject(where, f"not valid JSON ({err})", strict, dropped)
            continue
        image = row.get("image") if isinstance(row, dict) else None
        caption = _first_caption(row.get("caption")) if isinstance(row, dict) else None
        if not isinstance(image, str) or not image:
            _reject(where, 'no "image" path', strict, dropped)
        elif caption is None:
            _reject(where, 'no "caption" or an empty one', strict, dropped)
        else:
            samples.append((str(manifest.parent / image), caption))  # an absolute image path stays absolute
    return samples, dropped


class CaptionedImageFolderDataset(ImageFiles):
    """Captioned images; each item is {"image": [C, S, S] in [-1, 1], "caption": str}, or None if corrupt.

    Give exactly one of `root` (sidecar layout) or `manifest` (JSON lines); see the module docstring.

    Args:
        root: folder of images with `<name>.txt` / `<name>.json` caption sidecars (searched recursively).
        manifest: JSON-lines file of {"image": path, "caption": str}.
        image_size: side of the square output images.
        channels: 3 (RGB) or 1 (grey, PIL mode "L").
        strict: raise ConfigError on a caption-less image or an unreadable image instead of skipping it.
        random_flip: horizontal flip with probability 0.5 (beware captions that say "left" / "right").

    Attributes:
        samples: (image path, caption) pairs in listing order.
        num_uncaptioned: images (or manifest lines) dropped at listing time for want of a caption.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        manifest: str | os.PathLike | None = None,
        image_size: int = 256,
        channels: int = 3,
        strict: bool = False,
        random_flip: bool = False,
    ):
        if (root is None) == (manifest is None):
            raise ConfigError(
                f"give exactly one of root (got {root!r}) or manifest (got {manifest!r}); {LAYOUT_HINT}"
            )
        super().__init__(image_size, channels, strict, random_flip)
        source = f"root='{root}'" if root is not None else f"manifest='{manifest}'"
        if root is not None:
            self.samples, dropped = list_sidecar_folder(root, strict)
        else:
            self.samples, dropped = read_manifest(manifest, strict)
        if not self.samples:
            raise ConfigError(
                f"no captioned images in {source} ({len(dropped)} without a caption); {LAYOUT_HINT}"
            )
        if dropped:
            log.warning(
                "dropped %d of %d images without a usable caption in %s (e.g. %s); strict=True raises",
                len(dropped),
                len(dropped) + len(self.samples),
                source,
                dropped[:3],
            )
        self.num_uncaptioned = len(dropped)

    def subset(self, indices: Sequence[int], random_flip: bool | None = None) -> CaptionedImageFolderDataset:
        """A dataset over `samples[indices]` sharing this one's settings (`random_flip` may differ)."""
        other = copy.copy(self)
        other.samples = [self.samples[i] for i in indices]
        other.skipped_paths = set()
        if random_flip is not None:
            other.random_flip = random_flip
        return other

    def fields(self, caption: str) -> dict:
        return {"caption": caption}


class CaptionedImageFolderDataModule(SplitDataModule):
    """One captioned image folder or manifest, split into train and val by a seeded permutation.

    The val split is `val_fraction` of the captioned images (at least one when > 0), drawn by a permutation
    seeded with `split_seed` over the sorted listing, so it is the same on every run and every rank as long
    as the data does not change. With `val_fraction=0` there is no validation. The test split is the val
    split. Batches whose every image was unreadable arrive as None; the LightningModules skip them.

    Args:
        root: folder of images with `<name>.txt` / `<name>.json` caption sidecars (searched recursively).
        manifest: JSON-lines file of {"image": path, "caption": str} (instead of `root`).
        val_fraction: share of the images held out for validation, in [0, 1).
        split_seed: seed of the train/val permutation.
        image_size: side of the square images.
        channels: 3 (RGB) or 1 (grey).
        batch_size: items per batch (skipped files make a batch smaller).
        num_workers: DataLoader worker processes.
        strict: raise on caption-less or unreadable images instead of skipping them.
        random_flip: horizontal flips on the train split (flips contradict "left"/"right" in captions).
    """

    collate_fn = staticmethod(collate_skip_none)

    def __init__(
        self,
        root: str | None = None,
        manifest: str | None = None,
        val_fraction: float = 0.0,
        split_seed: int = 0,
        image_size: int = 256,
        channels: int = 3,
        batch_size: int = 64,
        num_workers: int = 0,
        strict: bool = False,
        random_flip: bool = False,
    ):
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        if (root is None) == (manifest is None):
            raise ConfigError(
                f"give exactly one of data root (got {root!r}) or manifest (got {manifest!r}); {LAYOUT_HINT}"
            )
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"val_fraction={val_fraction} must be in [0, 1); use 0 for no validation")
        self.root = root
        self.manifest = manifest
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.image_size = image_size
        self.channels = channels
        self.strict = strict
        self.random_flip = random_flip

    @property
    def num_skipped(self) -> int:
        """Images skipped as unreadable (train and val, in this process) plus those without a caption."""
        datasets = [d for d in (self.train_dataset, self.val_dataset) if d is not None]
        uncaptioned = datasets[0].num_uncaptioned if datasets else 0
        return uncaptioned + sum(d.num_skipped for d in datasets)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return (self.channels, self.image_size, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        full = CaptionedImageFolderDataset(
            self.root, self.manifest, self.image_size, self.channels, strict=self.strict
        )
        n = len(full)
        n_val = max(1, round(n * self.val_fraction)) if self.val_fraction > 0 else 0
        if n_val >= n:
            raise ConfigError(
                f"val_fraction={self.val_fraction} leaves no training images among {n} captioned images; "
                "lower val_fraction or add images"
            )
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        val, train = sorted(order[:n_val]), sorted(order[n_val:])
        self.train_dataset = full.subset(train, random_flip=self.random_flip)
        self.val_dataset = full.subset(val, random_flip=False) if n_val else None
