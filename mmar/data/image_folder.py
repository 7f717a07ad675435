"""Class-labelled image folders in the ImageNet layout: `root/<class_name>/<image files>`.

Class folders are sorted by name and numbered 0..K-1. Images are read with PIL, converted to RGB (or
grey with `channels=1`), resized and centre-cropped to `image_size` as in ADM (Dhariwal & Nichol 2021,
guided-diffusion's `center_crop_arr`: box-halve while the image is at least twice the target, bicubic
resize of the shorter side, centre crop), and scaled to [-1, 1].

A corrupt or unreadable file is skipped and counted, not fatal: `__getitem__` returns None for it, a
warning names the file once, and `collate_skip_none` drops it from the batch. `strict=True` raises
instead. (With `num_workers > 0` the counters live in the worker processes; the warnings still show.)

Batches: {"image": float32 [B, C, H, W] in [-1, 1], "label": long [B]}.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from mmar.data.base import FolderDataModule
from mmar.errors import ConfigError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
LAYOUT_HINT = "expected the ImageNet layout root/<class_name>/<image files> (e.g. root/cat/0001.jpg)"
# errors PIL raises for unreadable, truncated or malicious files
_UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def is_image_file(path: str | os.PathLike) -> bool:
    """True for file names with a known image extension (case-insensitive)."""
    return str(path).lower().endswith(IMAGE_EXTENSIONS)


def find_classes(root: str | os.PathLike) -> list[str]:
    """Sorted class folder names under `root`; ConfigError when `root` is missing or has none."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"image folder '{root}' does not exist; {LAYOUT_HINT}")
    classes = sorted(
        entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise ConfigError(f"image folder '{root}' has no class folders; {LAYOUT_HINT}")
    return classes


def list_images(root: str | os.PathLike, classes: list[str]) -> list[tuple[str, int]]:
    """(path, label) for every image file under root/<class>/ (recursive, sorted per class)."""
    samples, empty = [], []
    for label, name in enumerate(classes):
        folder = Path(root) / name
        files = sorted(
            os.path.join(dirpath, f)
            for dirpath, _, filenames in os.walk(folder, followlinks=True)
            for f in filenames
            if is_image_file(f)
        )
        if not files:
            empty.append(name)
        samples.extend((path, label) for path in files)
    if empty:
        raise ConfigError(
            f"class folders without images in '{root}': {empty[:10]} (extensions {list(IMAGE_EXTENSIONS)}); "
            f"remove them or add images; {LAYOUT_HINT}"
        )
    return samples


def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's centre crop: box-halve while >= 2x the target, bicubic resize, crop -> uint8 [H, W(, C)]."""
    while min(image.size) >= 2 * image_size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = image_size / min(image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def collate_skip_none(batch: list[dict | None]) -> dict[str, torch.Tensor] | None:
    """Default collate without the skipped (None) items; None when every item was skipped."""
    batch = [item for item in batch if item is not None]
    return default_collate(batch) if batch else None


class ImageFiles(Dataset):
    """Image files read as ADM does (centre crop, [-1, 1]); an unreadable file gives None, is counted and
    warned about once (or raises with `strict`). Subclasses set `samples` [(path, target)] and say what a
    target adds to an item (`fields`).

    Args:
        image_size: side of the square output images.
        channels: 3 (RGB) or 1 (grey, PIL mode "L").
        strict: raise ConfigError on an unreadable file instead of skipping it.
        random_flip: horizontal flip with probability 0.5 (training augmentation).
    """

    samples: list[tuple[str, Any]]

    def __init__(self, image_size: int, channels: int, strict: bool, random_flip: bool):
        if channels not in (1, 3):
            raise ConfigError(f"channels={channels} is not supported; use 3 (RGB) or 1 (grey)")
        self.image_size = image_size
        self.channels = channels
        self.strict = strict
        self.random_flip = random_flip
        self.skipped_paths: set[str] = set()

    @property
    def num_skipped(self) -> int:
        """Number of distinct files skipped as unreadable so far (in this process)."""
        return len(self.skipped_paths)

    def fields(self, target) -> dict:
        """What a sample's target adds to its item, e.g. {"label": ...}."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict | None:
        path, target = self.samples[index]
        try:
            arr = self._load(path)  # uint8 [S, S] or [S, S, 3]
        except _UNREADABLE as err:
            return self._skip(path, err)
        image = torch.from_numpy(arr.copy()).float() / 127.5 - 1  # [S, S(, C)] in [-1, 1]
        image = image[None] if image.ndim == 2 else image.permute(2, 0, 1)  # [C, S, S]
        if self.random_flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return {"image": image.contiguous(), **self.fields(target)}

    def _load(self, path: str) -> np.ndarray:
        with Image.open(path) as img:
            img.load()  # decode now, so truncated files fail here
            img = img.convert("L" if self.channels == 1 else "RGB")
        return center_crop_arr(img, self.image_size)

    def _skip(self, path: str, err: Exception) -> None:
        if self.strict:
            raise ConfigError(
                f"unreadable image '{path}' ({type(err).__name__}: {err}); remove or replace the file, "
                "or set strict=False to skip unreadable files"
            ) from err
        if path not in self.skipped_paths:
            self.skipped_paths.add(path)
            log.warning("skipping unreadable image '%s' (%s: %s)", path, type(err).__name__, err)
        return None


class ImageFolderDataset(ImageFiles):
    """Images from `root/<class_name>/*`; each item is {"image": [C, S, S] in [-1, 1], "label": long}.

    Args:
        root: folder holding one sub-folder per class.
        image_size: side of the square output images.
        channels: 3 (RGB) or 1 (grey, PIL mode "L").
        classes: class names in label order (pass the train classes to a val set so ids agree);
            default: the sorted sub-folders of `root`.
        strict: raise ConfigError on an unreadable file instead of skipping it.
        random_flip: horizontal flip with probability 0.5 (training augmentation).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int = 256,
        channels: int = 3,
        classes: list[str] | None = None,
        strict: bool = False,
        random_flip: bool = False,
    ):
        super().__init__(image_size, channels, strict, random_flip)
        self.root = Path(root)
        found = find_classes(root)
        if classes is not None:
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise ConfigError(
                    f"class folders {unknown[:10]} in '{root}' are not among the {len(classes)} train "
                    "classes; the val folder must use the train folder's class names"
                )
        self.classes = list(classes) if classes is not None else found
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        present = [name for name in self.classes if name in found]
        self.samples = [(p, self.class_to_idx[present[label]]) for p, label in list_images(root, present)]

    def fields(self, label: int) -> dict:
        return {"label": torch.tensor(label, dtype=torch.long)}


class ImageFolderDataModule(FolderDataModule):
    """Train (and optional val) image folders as a LightningDataModule (test split = val split).

    Batches whose every file was unreadable arrive as None; the LightningModules skip them.

    Args:
        train_root: ImageNet-layout folder of training images.
        val_root: optional folder with the same class names; without it there is no validation.
        image_size: side of the square images.
        channels: 3 (RGB) or 1 (grey).
        batch_size: items per batch (skipped files make a batch smaller).
        num_workers: DataLoader worker processes.
        strict: raise on unreadable files instead of skipping them.
        random_flip: horizontal flips on the train split.
    """

    collate_fn = staticmethod(collate_skip_none)

    def __init__(
        self,
        train_root: str,
        val_root: str | None = None,
        image_size: int = 256,
        channels: int = 3,
        batch_size: int = 64,
        num_workers: int = 0,
        strict: bool = False,
        random_flip: bool = False,
    ):
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        self.train_root = train_root
        self.val_root = val_root
        self.image_size = image_size
        self.channels = channels
        self.strict = strict
        self.random_flip = random_flip

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return (self.channels, self.image_size, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        common = {"image_size": self.image_size, "channels": self.channels, "strict": self.strict}
        self.train_dataset = ImageFolderDataset(self.train_root, random_flip=self.random_flip, **common)
        if self.val_root is not None:
            self.val_dataset = ImageFolderDataset(self.val_root, classes=self.train_dataset.classes, **common)
