"""Moving digits: an embedded video dataset in the spirit of Moving MNIST (Srivastava et al., 2015).

Each clip shows one of scikit-learn's bundled digits (`mmar.data.digits`, upsampled to `digit_size`)
moving with a constant integer velocity on a black canvas and bouncing off the borders: when the next
position along an axis would leave the canvas, that velocity component flips sign before the move. Every
frame is therefore the previous frame shifted by the current velocity, never zero. Each clip is a pure
function of `(seed, split, index)`, so items are deterministic without storing videos. Train and val
clips draw from disjoint digit images: the class-stratified split of `mmar.data.digits.stratified_split`
(the same held-out images as `DigitsDataModule` for the same `val_fraction` and `seed`).

The default T = 9 frames (a first frame + 8) suits a causal tokenizer with temporal downsampling 4
(1 + 8 / 4 = 3 latent frames); T = 5 suits downsampling 2.

Each clip also carries its motion: `direction`, the compass direction of its first step (frame 0 -> 1,
after any bounce), one of the 8 `DIRECTIONS`. The condition label is the digit's class (`labels="digit"`,
10 classes) or the digit and the direction together (`labels="digit_direction"`: direction * 10 + digit,
80 classes), so a class-conditional generator can be asked for "a 3 moving left".

Batches: {"video": float32 [B, 1, T, H, W] in [-1, 1], "label": long [B], "digit": long [B],
"direction": long [B], "caption": list[str]} — the caption says the same in words ("a 3 moving left"),
for text-conditional generators (`mmar.conditioning.TextCondition`).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch.utils.data import Dataset

from mmar.data.base import SplitDataModule
from mmar.data.digits import NUM_CLASSES, load_digits_images, stratified_split
from mmar.errors import ConfigError

BACKGROUND = -1.0
SPLITS = {"train": 0, "val": 1, "test": 2}
DIRECTIONS = ("up", "up-right", "right", "down-right", "down", "down-left", "left", "up-left")
STEPS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))  # (row, col) signs
LABELS = ("digit", "digit_direction")


def direction_of(positions: np.ndarray) -> int:
    """Index in `DIRECTIONS` of the first step of a trajectory [T >= 2, 2] of (row, col) positions."""
    step = tuple(int(v) for v in np.sign(positions[1] - positions[0]))
    return STEPS.index(step)


def caption(digit: int, direction: int) -> str:
    """What a clip shows, in words: "a 3 moving left"."""
    return f"a {digit} moving {DIRECTIONS[direction]}"


def captions_of(labels: torch.Tensor) -> list[str]:
    """The captions of "digit_direction" labels (direction * 10 + digit): the same condition in words."""
    return [caption(int(label) % NUM_CLASSES, int(label) // NUM_CLASSES) for label in labels]


def num_label_classes(labels: str) -> int:
    """Condition classes of a `labels` choice: 10 digits, or 10 digits x 8 directions."""
    if labels not in LABELS:
        raise ConfigError(f"labels='{labels}' must be one of {LABELS}")
    return NUM_CLASSES * (len(DIRECTIONS) if labels == "digit_direction" else 1)


def bounce_trajectory(start: np.ndarray, velocity: np.ndarray, limit: int, num_frames: int) -> np.ndarray:
    """Integer positions [T, 2] in [0, limit] of a point moving at `velocity`, bouncing off 0 and `limit`.

    Per axis: if `pos + v` would leave [0, limit], v flips sign first; needs 2 |v| <= limit so that the
    reflected step lands inside.
    """
    positions = np.empty((num_frames, 2), dtype=np.int64)
    pos, vel = start.astype(np.int64).copy(), velocity.astype(np.int64).copy()
    for t in range(num_frames):
        positions[t] = pos
        out = (pos + vel < 0) | (pos + vel > limit)  # [2]
        vel = np.where(out, -vel, vel)
        pos = pos + vel
    return positions


class MovingDigitsDataset(Dataset):
    """Clips of one digit sprite bouncing on a black canvas; item i is a pure function of (seed, split, i).

    Args:
        sprites: float32 [N, 1, d, d] in [-1, 1] (background -1), the digit images clips draw from.
        labels: long [N], their classes.
        num_clips: number of clips (the dataset's length).
        image_size: side S of the square canvas.
        num_frames: frames T per clip.
        max_speed: largest |velocity| per axis in pixels per frame (at most (S - d) // 2).
        seed: seed of the clip generator.
        split: "train", "val" or "test"; mixed into the per-item seed so splits get different clips.
        source_indices: long [N], index of each sprite in `load_digits_images` (for provenance).
        label_kind: what "label" holds: "digit" or "digit_direction" (direction * 10 + digit).
    """

    def __init__(
        self,
        sprites: torch.Tensor,
        labels: torch.Tensor,
        num_clips: int,
        image_size: int = 32,
        num_frames: int = 9,
        max_speed: int = 2,
        seed: int = 0,
        split: str = "train",
        source_indices: torch.Tensor | None = None,
        label_kind: str = "digit",
    ):
        digit_size = sprites.shape[-1]
        _check_geometry(image_size, digit_size, num_frames, max_speed)
        num_label_classes(label_kind)  # validates the choice
        if label_kind == "digit_direction" and num_frames < 2:
            raise ConfigError("labels='digit_direction' needs num_frames >= 2 (a first step to move)")
        if len(sprites) == 0:
            raise ConfigError("MovingDigitsDataset needs at least one digit image; lower val_fraction")
        if num_clips < 0:
            raise ConfigError(f"num_clips={num_clips} must be >= 0")
        self.sprites, self.labels = sprites, labels
        self.num_clips = num_clips
        self.image_size = image_size
        self.num_frames = num_frames
        self.max_speed = max_speed
        self.seed = seed
        self.split_id = SPLITS[split]
        self.source_indices = torch.arange(len(sprites)) if source_indices is None else source_indices
        self.label_kind = label_kind

    def __len__(self) -> int:
        return self.num_clips

    def trajectory(self, index: int) -> tuple[int, np.ndarray]:
        """(sprite index, top-left positions [T, 2] as (row, col)) of clip `index`."""
        rng = np.random.default_rng((self.seed, self.split_id, index))
        limit = self.image_size - self.sprites.shape[-1]
        digit = int(rng.integers(len(self.sprites)))
        start = rng.integers(0, limit + 1, size=2)
        velocity = np.zeros(2, dtype=np.int64)
        while not velocity.any():  # a digit that stands still would make a useless clip
            velocity = rng.integers(-self.max_speed, self.max_speed + 1, size=2)
        return digit, bounce_trajectory(start, velocity, limit, self.num_frames)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.num_clips:
            raise IndexError(f"clip {index} out of range for {self.num_clips} clips")
        digit, positions = self.trajectory(index)
        sprite = self.sprites[digit]  # [1, d, d]
        d, s = sprite.shape[-1], self.image_size
        video = torch.full((1, self.num_frames, s, s), BACKGROUND)  # [1, T, S, S]
        for t, (row, col) in enumerate(positions.tolist()):
            video[:, t, row : row + d, col : col + d] = sprite
        label = self.labels[digit]
        direction = torch.tensor(direction_of(positions) if self.num_frames > 1 else 0)
        if self.label_kind == "digit_direction":
            label = direction * NUM_CLASSES + label
        return {
            "video": video,
            "label": label,
            "digit": self.labels[digit],
            "direction": direction,
            "caption": caption(int(self.labels[digit]), int(direction)),
        }


def _check_geometry(image_size: int, digit_size: int, num_frames: int, max_speed: int) -> None:
    """ConfigError unless the digit fits the canvas with room to bounce at `max_speed`."""
    if num_frames < 1:
        raise ConfigError(f"num_frames={num_frames} must be >= 1; e.g. num_frames=9")
    if max_speed < 1:
        raise ConfigError(f"max_speed={max_speed} must be >= 1 pixel per frame")
    room = image_size - digit_size
    if 2 * max_speed > room:
        raise ConfigError(
            f"a {digit_size}px digit on a {image_size}px canvas has {room}px to move, too little to bounce "
            f"at max_speed={max_speed} (needs 2 * max_speed <= image_size - digit_size); lower max_speed "
            "or digit_size, or raise image_size"
        )


class MovingDigitsDataModule(SplitDataModule):
    """Moving digits as a LightningDataModule; the test split is `num_clips_val` clips of the val digit
    images (never seen in training) drawn from a third random stream, so its motions differ from val's.

    Args:
        image_size: side of the square canvas.
        num_frames: frames per clip (1 + k * t_down for a causal tokenizer with temporal downsampling t_down).
        batch_size: clips per batch.
        num_clips_train: clips in the train split.
        num_clips_val: clips in the val split.
        digit_size: side of the digit sprites (default image_size // 2), at least 8.
        max_speed: largest |velocity| per axis, pixels per frame.
        val_fraction: fraction of each digit class whose images only appear in val clips.
        seed: seed of the digit split and of the clips.
        num_workers: DataLoader worker processes.
        labels: the condition label, "digit" (10 classes) or "digit_direction" (80: direction * 10 + digit).
    """

    def __init__(
        self,
        image_size: int = 32,
        num_frames: int = 9,
        batch_size: int = 16,
        num_clips_train: int = 4096,
        num_clips_val: int = 256,
        digit_size: int | None = None,
        max_speed: int = 2,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        labels: str = "digit",
    ):
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        self.num_classes = num_label_classes(labels)
        self.labels = labels
        self.image_size = image_size
        self.num_frames = num_frames
        self.digit_size = image_size // 2 if digit_size is None else digit_size
        _check_geometry(image_size, self.digit_size, num_frames, max_speed)
        if num_clips_train < 1:
            raise ConfigError(f"num_clips_train={num_clips_train} must be >= 1")
        self.num_clips = {"train": num_clips_train, "val": num_clips_val}
        self.max_speed = max_speed
        self.val_fraction = val_fraction
        self.seed = seed

    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of every clip."""
        return (1, self.num_frames, self.image_size, self.image_size)

    def embedded_metrics(self, condition: str):
        """Class-conditional moving digits: digit (and motion) accuracy, temporal consistency and FD
        against held-out clips."""
        if condition != "label":
            return None
        from mmar.eval.sample_metrics import ClassMetrics
        from mmar.eval.video import MovingDigitsMetrics

        settings = (self.image_size, self.num_frames, self.max_speed, self.val_fraction, self.seed)
        build = partial(MovingDigitsMetrics, *settings, digit_size=self.digit_size)  # built on first use
        return ClassMetrics(self.num_classes, build, "video", directions=self.labels == "digit_direction")

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        images, labels = load_digits_images(self.digit_size)  # [N, 1, d, d], [N]
        train_idx, val_idx = stratified_split(labels, self.val_fraction, self.seed)
        self.train_dataset = self._dataset("train", images, labels, train_idx)
        self.val_dataset = self._dataset("val", images, labels, val_idx)
        self.test_dataset = self._dataset("test", images, labels, val_idx)

    def _dataset(
        self, split: str, images: torch.Tensor, labels: torch.Tensor, idx: torch.Tensor
    ) -> MovingDigitsDataset | None:
        if len(idx) == 0:  # val_fraction = 0: no val split
            return None
        return MovingDigitsDataset(
            images[idx],
            labels[idx],
            self.num_clips["train" if split == "train" else "val"],
            self.image_size,
            self.num_frames,
            self.max_speed,
            self.seed,
            split,
            source_indices=idx,
            label_kind=self.labels,
        )
