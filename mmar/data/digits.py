"""scikit-learn's bundled handwritten digits as an embedded image dataset (no download, CPU friendly).

The 1,797 8x8 grey images (values 0..16, 10 classes) from `sklearn.datasets.load_digits` (the UCI
optical-recognition digits, Alpaydin & Kaynak 1998) are scaled to [-1, 1] and bilinearly upsampled to
`image_size`. The train/val split is class-stratified and a pure function of `(val_fraction, seed)`,
so the embedded quality metric (`mmar.eval.embedded`) holds out exactly the same images through
`digits_split`.

Batches: {"image": float32 [B, 1, H, W] in [-1, 1], "label": long [B]}.
"""

from __future__ import annotations

from functools import lru_cache, partial

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from mmar.data.base import SplitDataModule
from mmar.errors import ConfigError

NUM_CLASSES = 10
DIGITS_MAX_VALUE = 16.0


@lru_cache(maxsize=4)
def _digits_at(image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits at `image_size` (cached: the upsampling is shared by every split)."""
    from sklearn.datasets import load_digits  # imported lazily: sklearn is slow to import

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float()  # [N, 8, 8] in 0..16
    images = images[:, None] / DIGITS_MAX_VALUE * 2 - 1  # [N, 1, 8, 8] in [-1, 1]
    if image_size != images.shape[-1]:
        # bilinear weights are convex, so the result stays inside [-1, 1]
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    labels = torch.from_numpy(bunch.target).long()  # [N]
    return images.contiguous(), labels


def load_digits_images(image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as (images float32 [N, 1, S, S] in [-1, 1], labels long [N]), N = 1,797."""
    if image_size < 8:
        raise ConfigError(f"image_size={image_size} is too small for the 8x8 digits; use image_size >= 8")
    images, labels = _digits_at(int(image_size))
    return images.clone(), labels.clone()


def stratified_split(
    labels: torch.Tensor, val_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded, class-stratified split of item indices into (train_idx, val_idx), both sorted.

    Each class keeps `round(count * val_fraction)` items for validation; the result depends only on
    `labels`, `val_fraction` and `seed`.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction} must be in [0, 1); e.g. val_fraction=0.1")
    rng = np.random.default_rng(seed)
    labels_np = np.asarray(labels)
    val_parts = []
    for cls in np.unique(labels_np):
        members = np.flatnonzero(labels_np == cls)
        num_val = round(len(members) * val_fraction)
        val_parts.append(rng.permutation(members)[:num_val])
    val_idx = np.sort(np.concatenate(val_parts)) if val_parts else np.zeros(0, dtype=np.int64)
    train_idx = np.setdiff1d(np.arange(len(labels_np)), val_idx)
    return torch.from_numpy(train_idx).long(), torch.from_numpy(val_idx).long()


def digits_split(
    image_size: int = 32, val_fraction: float = 0.1, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The digits train/val split: (train_images, train_labels, val_images, val_labels).

    Images are float32 [N, 1, S, S] in [-1, 1], labels long [N]. The same arguments always give the
    same split (the DataModule and the embedded metric both use this function).
    """
    images, labels = load_digits_images(image_size)
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


class DigitsDataset(Dataset):
    """In-memory digits; each item is {"image": [1, S, S] in [-1, 1], "label": long scalar}.

    Args:
        images: float32 [N, 1, S, S] in [-1, 1].
        labels: long [N].
        augment: random translation by up to `max_shift` pixels, filling with the background (-1).
        max_shift: largest shift in pixels (default: image_size // 16, at least 1).
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, augment: bool = False, max_shift: int | None = None
    ):
        self.images = images
        self.labels = labels
        self.augment = augment
        self.max_shift = max(1, images.shape[-1] // 16) if max_shift is None else max_shift

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image = self.images[index]  # [1, S, S]
        if self.augment and self.max_shift > 0:
            image = random_shift(image, self.max_shift)
        return {"image": image, "label": self.labels[index]}


def random_shift(image: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Translate [C, H, W] by a random integer offset in [-max_shift, max_shift], padding with -1."""
    _, h, w = image.shape
    dy, dx = torch.randint(-max_shift, max_shift + 1, (2,)).tolist()
    padded = F.pad(image, (max_shift, max_shift, max_shift, max_shift), value=-1.0)  # [C, H+2m, W+2m]
    top, left = max_shift + dy, max_shift + dx
    return padded[:, top : top + h, left : left + w]


class DigitsDataModule(SplitDataModule):
    """The embedded digits dataset as a LightningDataModule (test split = val split).

    Args:
        image_size: side of the square images after bilinear upsampling from 8x8.
        batch_size: items per batch.
        val_fraction: fraction of each class held out for validation.
        seed: seed of the stratified split.
        num_workers: DataLoader worker processes.
        augment: light augmentation (random shifts of a pixel or two) on the train split only.
    """

    num_classes: int = NUM_CLASSES

    def __init__(
        self,
        image_size: int = 32,
        batch_size: int = 64,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        augment: bool = False,
    ):
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.augment = augment

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return (1, self.image_size, self.image_size)

    def embedded_metrics(self, condition: str):
        """Class-conditional digits: the digits classifier's accuracy and FD against the val (= test)
        split."""
        if condition != "label":
            return None
        from mmar.eval.embedded import DigitsMetrics
        from mmar.eval.sample_metrics import ClassMetrics

        build = partial(DigitsMetrics, self.image_size, self.val_fraction, self.seed)  # built on first use
        return ClassMetrics(NUM_CLASSES, build, "digits")

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        train_x, train_y, val_x, val_y = digits_split(self.image_size, self.val_fraction, self.seed)
        self.train_dataset = DigitsDataset(train_x, train_y, augment=self.augment)
        self.val_dataset = DigitsDataset(val_x, val_y)
