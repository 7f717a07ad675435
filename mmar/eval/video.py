"""Embedded quality metric for generated moving-digits clips: a small two-headed video classifier.

NOT FVD. This is the video analogue of `mmar.eval.embedded`: an embedded, moving-digits-only metric that
runs offline on CPU. A small classifier (`MovingDigitsClassifier`) is trained in under a minute on
train-split clips of `mmar.data.video.MovingDigitsDataModule` and cached on disk. It has two heads:

- a per-frame digit head (a 2D CNN applied to every frame; a clip's digit logits are the mean of its
  frames' logits), which also says whether the digit keeps its identity from frame to frame;
- a motion head (a 2D CNN over the frames and their differences stacked as channels) that predicts the
  compass direction of the first step, one of the 8 `mmar.data.video.DIRECTIONS`.

From generated clips and the digits (and, for a direction-conditioned generator, the directions) they
were asked for, `MovingDigitsMetrics` reports

- `video_class_accuracy`: the fraction of clips whose predicted digit is the intended one;
- `video_motion_accuracy`: the fraction whose predicted direction is the intended one (left out when no
  directions are given);
- `video_temporal_consistency`: the mean fraction of frames whose per-frame digit prediction is the
  clip's most common one (1.0: the digit never changes identity). Clips that are consistently wrong score
  high too (uniform noise: ~0.95), so read it beside the class accuracy;
- `video_classifier_fd`: the Fréchet distance (`mmar.eval.frechet`) between the classifier's features
  (mean frame features + motion features, 128-d) of the samples and of held-out val clips.

Its numbers are not comparable to FVD or to anything outside this codebase. To read them, the metric also
reports the classifier's own val accuracies (the ceilings for the two accuracies), the temporal
consistency of real val clips (the ceiling for consistency) and, since FD is biased upwards for small
sample sets, the FD of the same number of real train clips (`real_fd_at(n)`). Compare runs at equal
sample counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmar.data.digits import NUM_CLASSES
from mmar.data.video import DIRECTIONS, MovingDigitsDataModule, MovingDigitsDataset
from mmar.errors import ConfigError
from mmar.eval.embedded import (
    conv_stack,
    default_cache_dir,
    load_cached_classifier,
    save_classifier,
    single_thread,
)
from mmar.eval.frechet import ReferenceFD, feature_statistics

CLASSIFIER_VERSION = 1  # bump when the architecture or the training recipe changes (invalidates caches)
FRAME_FEATURE_DIM = 64
MOTION_FEATURE_DIM = 64
NUM_DIRECTIONS = len(DIRECTIONS)
TRAIN_OPTIONS = ("num_clips", "num_val_clips", "epochs", "batch_size", "lr", "frames_per_clip")


class ClipOutputs(NamedTuple):
    """Everything the classifier says about a batch of clips, from one forward pass."""

    frame_features: torch.Tensor  # [B, T, F]
    frame_logits: torch.Tensor  # [B, T, 10]
    motion_features: torch.Tensor  # [B, M]
    direction_logits: torch.Tensor  # [B, 8]

    @property
    def digit_logits(self) -> torch.Tensor:
        """Clip digit logits [B, 10]: the mean over frames of the per-frame logits."""
        return self.frame_logits.mean(dim=1)

    @property
    def features(self) -> torch.Tensor:
        """Fréchet features [B, F + M]: mean frame features, then motion features."""
        return torch.cat([self.frame_features.mean(dim=1), self.motion_features], dim=1)


class MovingDigitsClassifier(nn.Module):
    """Two-headed classifier for clips [B, 1, T, S, S] in [-1, 1]: digit (per frame) and first-step direction.

    Frames larger than `work_size` are first average-pooled to it, as in `DigitsClassifier`: the digits
    hold 8x8 of detail, and the low-pass keeps the classifier equally cheap at any image size. A 1-pixel
    step at S = 32 is still a clear half-pixel step at 16.

    The digit head is a 2D CNN applied to each frame on its own (so it can also tell when the digit
    changes identity mid-clip). The motion head sees the T frames and their T - 1 differences stacked as
    channels: a difference image shows where the digit came from and where it went, which a small CNN
    reads reliably, and the fixed channel order tells it which step is the first. It is therefore built
    for a fixed number of frames.
    """

    def __init__(
        self,
        num_frames: int = 9,
        width: int = 32,
        frame_dim: int = FRAME_FEATURE_DIM,
        motion_dim: int = MOTION_FEATURE_DIM,
        work_size: int = 16,
    ):
        super().__init__()
        if num_frames < 2:
            raise ConfigError(f"num_frames={num_frames} must be >= 2: the motion head needs a first step")
        self.num_frames = num_frames
        self.work_size = work_size
        self.frame_body = conv_stack(1, width, frame_dim)
        self.digit_head = nn.Linear(frame_dim, NUM_CLASSES)
        self.motion_body = conv_stack(2 * num_frames - 1, width, motion_dim)
        self.direction_head = nn.Linear(motion_dim, NUM_DIRECTIONS)

    def low_pass(self, x: torch.Tensor) -> torch.Tensor:
        """Clips [B, 1, T, S, S] -> frames [B, T, s, s], average-pooled to s = work_size when S is larger."""
        if x.ndim != 5 or x.shape[1] != 1 or x.shape[2] != self.num_frames:
            raise ConfigError(
                f"MovingDigitsClassifier(num_frames={self.num_frames}) expects clips "
                f"[B, 1, {self.num_frames}, S, S] in [-1, 1], got {tuple(x.shape)}; build (or load) it with "
                "the clips' num_frames"
            )
        b, _, t, h, w = x.shape
        frames = x.reshape(b * t, 1, h, w)
        if h > self.work_size or w > self.work_size:
            frames = F.adaptive_avg_pool2d(frames, self.work_size)  # [B*T, 1, 16, 16]
        return frames.reshape(b, t, *frames.shape[-2:])

    def _frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Low-passed frames [B, K, s, s] -> per-frame features [B, K, F]."""
        b, k, h, w = frames.shape
        return self.frame_body(frames.reshape(b * k, 1, h, w)).mean(dim=(2, 3)).reshape(b, k, -1)

    def _motion_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Low-passed frames [B, T, s, s] -> motion features [B, M] (from frames + differences)."""
        stacked = torch.cat([frames, frames[:, 1:] - frames[:, :-1]], dim=1)  # [B, 2T - 1, s, s]
        return self.motion_body(stacked).mean(dim=(2, 3))

    def outputs(self, x: torch.Tensor) -> ClipOutputs:
        """Frame features and logits, motion features and direction logits of clips, in one pass."""
        frames = self.low_pass(x)
        frame_features = self._frame_features(frames)  # [B, T, F]
        motion_features = self._motion_features(frames)  # [B, M]
        return ClipOutputs(
            frame_features,
            self.digit_head(frame_features),
            motion_features,
            self.direction_head(motion_features),
        )

    def frame_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame digit logits [B, T, 10]."""
        return self.digit_head(self._frame_features(self.low_pass(x)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(clip digit logits [B, 10], direction logits [B, 8])."""
        out = self.outputs(x)
        return out.digit_logits, out.direction_logits

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Fréchet features [B, F + M] (128 by default): mean frame features, then motion features."""
        return self.outputs(x).features


def classifier_cache_path(
    image_size: int = 32,
    num_frames: int = 9,
    max_speed: int = 2,
    val_fraction: float = 0.1,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    digit_size: int | None = None,
    train_options: Mapping[str, float] | None = None,
) -> Path:
    """Where the classifier for this clip distribution (and training recipe) is cached.

    A non-default `digit_size` or any `train_options` add a suffix, so that a classifier trained
    differently (e.g. a quick one for tests) never stands in for the default one.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = (
        f"moving_digits_classifier_v{CLASSIFIER_VERSION}_s{image_size}_t{num_frames}_speed{max_speed}"
        f"_val{val_fraction:g}_seed{seed}"
    )
    if digit_size is not None and digit_size != image_size // 2:
        name += f"_d{digit_size}"
    if train_options:
        digest = hashlib.sha1(json.dumps(dict(train_options), sort_keys=True).encode()).hexdigest()[:10]
        name += f"_opts{digest}"
    return root / "embedded" / f"{name}.safetensors"


def train_video_classifier(
    image_size: int = 32,
    num_frames: int = 9,
    max_speed: int = 2,
    val_fraction: float = 0.1,
    seed: int = 0,
    digit_size: int | None = None,
    num_clips: int = 8192,
    num_val_clips: int = 1024,
    epochs: int = 4,
    batch_size: int = 64,
    lr: float = 1e-2,
    frames_per_clip: int = 2,
) -> tuple[MovingDigitsClassifier, dict[str, float]]:
    """Train a `MovingDigitsClassifier` on train-split clips of `MovingDigitsDataModule` (seeded).

    The clips are materialised once (already low-passed to the work size, which the classifier would do
    anyway) and each step trains the digit head on `frames_per_clip` random frames of every clip (the
    frames of a clip are near-duplicates, so more would mostly cost time) and the motion head on the
    whole clip. Runs on one CPU thread (see `single_thread`), which also makes it deterministic.

    Args:
        image_size, num_frames, max_speed, val_fraction, seed, digit_size: the clip distribution; must
            match the data the generator was trained on.
        num_clips: train-split clips to train on; num_val_clips: val-split clips (held-out digit images)
            to measure the accuracies on.
        epochs, batch_size, lr, frames_per_clip: the training recipe.

    Returns:
        The classifier in eval mode and {"val_digit_accuracy", "val_direction_accuracy",
        "train_seconds", "data_seconds"}.
    """
    if num_clips < batch_size:
        raise ConfigError(f"num_clips={num_clips} must be >= batch_size={batch_size}")
    if not 1 <= frames_per_clip <= num_frames:
        raise ConfigError(f"frames_per_clip={frames_per_clip} must be in [1, num_frames={num_frames}]")
    start = time.perf_counter()
    data = _data_module(
        image_size, num_frames, max_speed, val_fraction, seed, digit_size, num_clips, num_val_clips
    )
    with single_thread(), torch.random.fork_rng(), torch.enable_grad():  # caller's RNG kept
        torch.manual_seed(seed)
        model = MovingDigitsClassifier(num_frames)
        train = _materialise(data.train_dataset, num_clips, model=model)
        val = (
            _materialise(data.val_dataset, num_val_clips, model=model)
            if data.val_dataset is not None
            else None
        )
        info = {"data_seconds": time.perf_counter() - start}
        start = time.perf_counter()
        _fit(model, *train, epochs, batch_size, lr, frames_per_clip)
        info["train_seconds"] = time.perf_counter() - start
        info["val_digit_accuracy"], info["val_direction_accuracy"] = (
            _accuracies(model, *val) if val is not None and len(val[0]) else (float("nan"), float("nan"))
        )
    return model, info


def _data_module(
    image_size: int,
    num_frames: int,
    max_speed: int,
    val_fraction: float,
    seed: int,
    digit_size: int | None,
    num_clips_train: int,
    num_clips_val: int,
) -> MovingDigitsDataModule:
    data = MovingDigitsDataModule(
        image_size,
        num_frames,
        digit_size=digit_size,
        max_speed=max_speed,
        val_fraction=val_fraction,
        seed=seed,
        num_clips_train=max(num_clips_train, 1),
        num_clips_val=num_clips_val,
    )
    data.setup()
    return data


def _materialise(
    dataset: MovingDigitsDataset,
    stop: int,
    start: int = 0,
    model: MovingDigitsClassifier | None = None,
    chunk: int = 512,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clips `start` to `stop` of `dataset` as (videos, digits long [N], directions long [N]).

    Videos are [N, 1, T, S, S], or low-passed frames [N, T, s, s] when `model` is given (to save memory).
    """
    videos, digits, directions = [], [], []
    for begin in range(start, stop, chunk):
        items = [dataset[i] for i in range(begin, min(begin + chunk, stop))]
        batch = torch.stack([item["video"] for item in items])  # [n, 1, T, S, S]
        videos.append(model.low_pass(batch) if model is not None else batch)
        digits.append(torch.stack([item["digit"] for item in items]))
        directions.append(torch.stack([item["direction"] for item in items]))
    if not videos:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(videos), torch.cat(digits).long(), torch.cat(directions).long()


def _fit(
    model: MovingDigitsClassifier,
    frames: torch.Tensor,
    digits: torch.Tensor,
    directions: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    frames_per_clip: int,
) -> None:
    """AdamW + one-cycle schedule on low-passed clips [N, T, s, s]; sum of both heads' cross-entropies."""
    steps_per_epoch = len(digits) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    rows = torch.arange(batch_size)[:, None]  # [B, 1]
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(digits))
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            clips = frames[idx]  # [B, T, s, s]
            picked = clips[rows, torch.randint(clips.shape[1], (batch_size, frames_per_clip))]  # [B, K, s, s]
            frame_logits = model.digit_head(model._frame_features(picked))  # [B, K, 10]
            digit_loss = F.cross_entropy(
                frame_logits.flatten(0, 1), digits[idx].repeat_interleave(frames_per_clip)
            )
            motion_loss = F.cross_entropy(
                model.direction_head(model._motion_features(clips)), directions[idx]
            )
            loss = digit_loss + motion_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


@torch.no_grad()
def _accuracies(
    model: MovingDigitsClassifier, frames: torch.Tensor, digits: torch.Tensor, directions: torch.Tensor
) -> tuple[float, float]:
    """(digit accuracy, direction accuracy) on low-passed clips [N, T, s, s]."""
    digit_hits, direction_hits = 0, 0
    for x, y, d in zip(frames.split(256), digits.split(256), directions.split(256)):
        digit_logits = model.digit_head(model._frame_features(x)).mean(dim=1)
        direction_logits = model.direction_head(model._motion_features(x))
        digit_hits += (digit_logits.argmax(dim=-1) == y).sum().item()
        direction_hits += (direction_logits.argmax(dim=-1) == d).sum().item()
    return digit_hits / len(digits), direction_hits / len(digits)


def temporal_consistency_of(frame_logits: torch.Tensor) -> torch.Tensor:
    """Per clip [B], the fraction of frames whose predicted digit is the clip's most common prediction.

    From per-frame logits [B, T, 10]; 1.0 when every frame shows the same digit, 1 / T at worst.
    """
    predictions = frame_logits.argmax(dim=-1)  # [B, T]
    counts = F.one_hot(predictions, frame_logits.shape[-1]).sum(dim=1)  # [B, 10]
    return counts.max(dim=-1).values.float() / frame_logits.shape[1]


def load_video_classifier(
    image_size: int = 32,
    num_frames: int = 9,
    max_speed: int = 2,
    val_fraction: float = 0.1,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    digit_size: int | None = None,
    train_options: Mapping[str, float] | None = None,
) -> tuple[MovingDigitsClassifier, dict[str, float]]:
    """The cached classifier for this clip distribution, training and caching it first when absent.

    Args:
        train_options: keyword arguments of `train_video_classifier`'s recipe (`TRAIN_OPTIONS`, e.g. a
            quick {"num_clips": 1024, "epochs": 4} for tests); they get a cache file of their own.

    Returns:
        The classifier in eval mode and {"val_digit_accuracy", "val_direction_accuracy", "train_seconds",
        "data_seconds", "loaded_from_cache"}.
    """
    train_options = dict(train_options or {})
    unknown = sorted(set(train_options) - set(TRAIN_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown train_options {unknown}; the recipe options are {list(TRAIN_OPTIONS)}")
    path = classifier_cache_path(
        image_size, num_frames, max_speed, val_fraction, seed, cache_dir, digit_size, train_options
    )
    if path.is_file():
        model, info = load_cached_classifier(MovingDigitsClassifier(num_frames), path)
        return model, {**info, "loaded_from_cache": True}
    model, info = train_video_classifier(
        image_size, num_frames, max_speed, val_fraction, seed, digit_size, **train_options
    )
    save_classifier(model, info, path)
    return model, {**info, "loaded_from_cache": False}


class MovingDigitsMetrics(ReferenceFD):
    """Embedded moving-digits metrics (not FVD): digit and motion accuracy, temporal consistency, FD.

    Args:
        image_size, num_frames, max_speed, val_fraction, seed, digit_size: the clip distribution of
            `MovingDigitsDataModule`; must match the data the generator was trained on (the classifier is
            trained on it and the reference clips are drawn from its val split).
        cache_dir: classifier cache folder (default `$MMAR_CACHE` or `~/.cache/mmar`).
        batch_size: clips per classifier forward pass.
        num_reference: val-split clips (held-out digit images) the FD compares against.
        train_options: the classifier's training recipe, see `load_video_classifier` (default: the
            standard one; only tests should change it).

    Attributes:
        classifier_val_digit_accuracy, classifier_val_direction_accuracy: the classifier's accuracies on
            held-out val clips (> 0.95 with the standard recipe): the ceilings for the accuracies.
        real_temporal_consistency: the temporal consistency of the reference clips (~1.0): its ceiling.
        val_videos, val_digits, val_directions: the reference clips and their labels.
        reference_mu, reference_sigma: feature statistics of the reference clips.
    """

    def __init__(
        self,
        image_size: int = 32,
        num_frames: int = 9,
        max_speed: int = 2,
        val_fraction: float = 0.1,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 256,
        num_reference: int = 1024,
        digit_size: int | None = None,
        train_options: Mapping[str, float] | None = None,
    ):
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction={val_fraction} must be in (0, 1): the FD needs a val split")
        if num_reference < 2:
            raise ConfigError(f"num_reference={num_reference} must be >= 2 (e.g. 1024) for the FD statistics")
        self.image_size = image_size
        self.num_frames = num_frames
        self.batch_size = batch_size
        self.classifier, self.classifier_info = load_video_classifier(
            image_size, num_frames, max_speed, val_fraction, seed, cache_dir, digit_size, train_options
        )
        self.classifier_val_digit_accuracy = float(self.classifier_info["val_digit_accuracy"])
        self.classifier_val_direction_accuracy = float(self.classifier_info["val_direction_accuracy"])
        self._data = _data_module(
            image_size, num_frames, max_speed, val_fraction, seed, digit_size, 1, num_reference
        )
        self.val_videos, self.val_digits, self.val_directions = _materialise(
            self._data.val_dataset, num_reference
        )
        reference = self.outputs(self.val_videos)
        self.reference_mu, self.reference_sigma = feature_statistics(reference.features)
        self.real_temporal_consistency = temporal_consistency_of(reference.frame_logits).mean().item()
        self._real_fd_at: dict[int, float] = {}

    @torch.no_grad()
    def outputs(self, videos: torch.Tensor) -> ClipOutputs:
        """The classifier's outputs (`ClipOutputs`) for clips [N, 1, T, S, S] in [-1, 1]."""
        self._check_videos(videos)
        with single_thread():
            chunks = [self.classifier.outputs(x.float().cpu()) for x in videos.split(self.batch_size)]
        return ClipOutputs(*(torch.cat(parts) for parts in zip(*chunks)))

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        """Classifier features [N, 128] (mean frame features, then motion features)."""
        return self.outputs(videos).features

    def predict(self, videos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted digits long [N], predicted directions long [N], indices into `DIRECTIONS`)."""
        out = self.outputs(videos)
        return out.digit_logits.argmax(dim=-1), out.direction_logits.argmax(dim=-1)

    def class_accuracy(self, videos: torch.Tensor, digits: torch.Tensor) -> float:
        """Fraction of clips whose predicted digit is the intended one (digits long [N])."""
        self._check_labels(videos, digits, "digits", NUM_CLASSES)
        return _hits(self.outputs(videos).digit_logits, digits)

    def motion_accuracy(self, videos: torch.Tensor, directions: torch.Tensor) -> float:
        """Fraction of clips whose predicted first-step direction is the intended one (long [N] in 0..7)."""
        self._check_labels(videos, directions, "directions", NUM_DIRECTIONS)
        return _hits(self.outputs(videos).direction_logits, directions)

    def temporal_consistency(self, videos: torch.Tensor) -> float:
        """Mean over clips of the fraction of frames showing the clip's most common digit (1.0 = stable)."""
        return temporal_consistency_of(self.outputs(videos).frame_logits).mean().item()

    def classifier_fd(self, videos: torch.Tensor) -> float:
        """Fréchet distance between classifier features of `videos` and of the reference val clips."""
        return self._fd(self.features(videos))

    def _train_dataset(self, num: int) -> MovingDigitsDataset:
        d = self._data
        return _data_module(
            self.image_size, self.num_frames, d.max_speed, d.val_fraction, d.seed, d.digit_size, num, 0
        ).train_dataset

    @staticmethod
    def _clips(dataset: MovingDigitsDataset, stop: int, start: int) -> torch.Tensor:
        return _materialise(dataset, stop, start)[0]

    def compute(
        self, videos: torch.Tensor, digits: torch.Tensor, directions: torch.Tensor | None = None
    ) -> dict[str, float]:
        """All numbers as a dict (e.g. for a metrics JSON), with the references needed to read them.

        Args:
            videos: generated clips [N, 1, T, S, S] in [-1, 1].
            digits: the digits they were asked for, long [N].
            directions: the first-step directions they were asked for, long [N] in 0..7 (for labels
                "digit_direction": label // 10; the digit is label % 10), or None when the generator was
                not conditioned on direction; then `video_motion_accuracy` is left out.
        """
        self._check_labels(videos, digits, "digits", NUM_CLASSES)
        if directions is not None:
            self._check_labels(videos, directions, "directions", NUM_DIRECTIONS)
        out = self.outputs(videos)
        result = {"video_class_accuracy": _hits(out.digit_logits, digits)}
        if directions is not None:
            result["video_motion_accuracy"] = _hits(out.direction_logits, directions)
        result |= {
            "video_temporal_consistency": temporal_consistency_of(out.frame_logits).mean().item(),
            "video_classifier_fd": self._fd(out.features),
            "video_classifier_fd_real_same_n": self.real_fd_at(len(videos)),
            "video_classifier_val_digit_accuracy": self.classifier_val_digit_accuracy,
            "video_classifier_val_direction_accuracy": self.classifier_val_direction_accuracy,
            "video_temporal_consistency_real": self.real_temporal_consistency,
            "num_samples": len(videos),
        }
        return result

    __call__ = compute

    def _check_videos(self, videos: torch.Tensor) -> None:
        expected = (1, self.num_frames, self.image_size, self.image_size)
        if videos.ndim != 5 or tuple(videos.shape[1:]) != expected:
            raise ConfigError(
                f"moving digits metrics expect clips [N, {', '.join(map(str, expected))}] in [-1, 1], got "
                f"{tuple(videos.shape)}; build MovingDigitsMetrics(image_size=..., num_frames=...) to match "
                "the samples"
            )
        if videos.numel() and (videos.min() < -1.5 or videos.max() > 1.5):
            raise ConfigError(
                f"moving digits metrics expect clips in [-1, 1], got values in [{videos.min():.3g}, "
                f"{videos.max():.3g}]; rescale them (uint8 x -> x / 127.5 - 1)"
            )

    @staticmethod
    def _check_labels(videos: torch.Tensor, labels: torch.Tensor, name: str, num_classes: int) -> None:
        if labels.ndim != 1 or len(labels) != len(videos):
            raise ConfigError(
                f"got {len(videos)} clips but {name} of shape {tuple(labels.shape)}; pass one per clip"
            )
        if labels.is_floating_point() or (
            len(labels) and not 0 <= labels.min() <= labels.max() < num_classes
        ):
            raise ConfigError(f"{name} must be integers in [0, {num_classes}), got {labels[:8].tolist()}...")


def _hits(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=-1) == labels.cpu().long()).float().mean().item()
