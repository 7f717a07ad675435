"""Folders of real video files: `root/<class_name>/<video files>`, or a flat folder of videos (one class).

Class folders are sorted by name and numbered 0..K-1 (a flat folder is class 0, named after the folder).
Files with the extensions in `VIDEO_FILE_EXTENSIONS` are found recursively inside each class folder and
read with `mmar.video_io.read_video` (GIF with PIL, the others with PyAV).

Clips: `num_frames` frames taken every `frame_stride` frames, so one clip spans
`span = (num_frames - 1) * frame_stride + 1` source frames. At setup every file's frame count is probed
(`mmar.video_io.num_frames`) and each video yields every non-overlapping clip start 0, span, 2 * span,
... that fits (or `max_clips_per_video` of them, evenly spread). Frames are resized and centre-cropped to
`image_size` as the image folders do (`center_crop_arr`: shorter side to `image_size`, centre crop to a
square), converted to RGB or grey (`channels`) and scaled to [-1, 1].

Train/val split by file: a file is in val when a stable hash of its path relative to `root` (sha256 of
`"{seed}:{class/file}"`, see `mmar.data.text.split_fraction`) falls below `val_fraction`, so about that
fraction of each class's files is held out and a file's side never changes when files are added or
removed. All clips of a video stay on one side.

Unreadable, corrupt or too-short files are skipped and counted (`num_skipped`), as `ImageFolderDataset`
does for images: at probe time (one warning giving the count and the first few names) and at read time
(`__getitem__` returns None, one warning per file, `collate_skip_none` drops it). `strict=True` raises
instead.

Items: {"video": float32 [C, T, H, W] in [-1, 1], "label": long}; batches {"video": [B, C, T, H, W],
"label": [B]}.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mmar.data.base import FolderDataModule
from mmar.data.image_folder import center_crop_arr, collate_skip_none
from mmar.data.text import split_fraction
from mmar.errors import ConfigError
from mmar.video_io import num_frames as probe_num_frames
from mmar.video_io import read_video

log = logging.getLogger(__name__)

VIDEO_FILE_EXTENSIONS = (".mp4", ".webm", ".gif", ".mov", ".avi", ".mkv")
LAYOUT_HINT = (
    "expected root/<class_name>/<video files> (e.g. root/walking/0001.mp4) or a flat folder of videos, "
    f"with extensions {list(VIDEO_FILE_EXTENSIONS)}"
)
SPLITS = ("all", "train", "val")
_WARN_NAMES = 5  # how many skipped files a probe warning names


def is_video_file(path: str | os.PathLike) -> bool:
    """True for file names with a known video extension (case-insensitive)."""
    return str(path).lower().endswith(VIDEO_FILE_EXTENSIONS)


def clip_span(num_frames: int, frame_stride: int) -> int:
    """Source frames one clip covers: (num_frames - 1) * frame_stride + 1."""
    return (num_frames - 1) * frame_stride + 1


def clip_starts(total: int, num_frames: int, frame_stride: int, max_clips: int | None = None) -> list[int]:
    """Non-overlapping clip starts 0, span, 2 * span, ... of a `total`-frame video; with `max_clips`,
    that many of them evenly spread (first and last included)."""
    span = clip_span(num_frames, frame_stride)
    starts = list(range(0, total - span + 1, span))
    if max_clips is not None and len(starts) > max_clips:
        picks = np.unique(np.round(np.linspace(0, len(starts) - 1, max_clips)).astype(int))
        starts = [starts[i] for i in picks]
    return starts


def find_videos(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(path, label)]) of a video folder; ConfigError when it is missing or has no videos.

    With sub-folders, each non-hidden sub-folder is a class (its videos found recursively, sorted) and
    videos directly in `root` are ignored with a warning; without, `root`'s own videos are class 0.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"video folder '{root}' does not exist; {LAYOUT_HINT}")
    entries = sorted(os.scandir(root), key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    top_files = [
        e.name for e in entries if e.is_file() and is_video_file(e.name) and not e.name.startswith(".")
    ]
    if not classes:
        if not top_files:
            raise ConfigError(f"video folder '{root}' has no videos and no class folders; {LAYOUT_HINT}")
        return [root.resolve().name], [(str(root / name), 0) for name in top_files]
    if top_files:
        log.warning(
            "ignoring %d video file(s) directly in '%s' (e.g. %s): with class sub-folders only their "
            "videos are used",
            len(top_files),
            root,
            top_files[:3],
        )
    samples, empty = [], []
    for label, name in enumerate(classes):
        files = sorted(
            os.path.join(dirpath, f)
            for dirpath, _, filenames in os.walk(root / name, followlinks=True)
            for f in filenames
            if is_video_file(f) and not f.startswith(".")
        )
        if not files:
            empty.append(name)
        samples.extend((path, label) for path in files)
    if empty:
        raise ConfigError(
            f"class folders without videos in '{root}': {empty[:10]}; remove them or add videos; "
            f"{LAYOUT_HINT}"
        )
    return classes, samples


def in_val_split(relative_path: str, val_fraction: float, seed: int = 0) -> bool:
    """Whether the file at `relative_path` (posix, relative to the root) is in the val split."""
    return split_fraction(relative_path, seed) < val_fraction


def _check_args(num_frames: int, frame_stride: int, image_size: int, channels: int, max_clips) -> None:
    if num_frames < 1:
        raise ConfigError(f"num_frames={num_frames} must be >= 1; e.g. 17 for temporal_downsample 4")
    if frame_stride < 1:
        raise ConfigError(f"frame_stride={frame_stride} must be >= 1 (1 = every frame)")
    if image_size < 1:
        raise ConfigError(f"image_size={image_size} must be >= 1")
    if channels not in (1, 3):
        raise ConfigError(f"channels={channels} is not supported; use 3 (RGB) or 1 (grey)")
    if max_clips is not None and max_clips < 1:
        raise ConfigError(f"max_clips_per_video={max_clips} must be >= 1 (or null for every clip)")


def _check_split(split: str, val_fraction: float) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split='{split}' must be one of {SPLITS}")
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction} must be in [0, 1)")


class VideoFolderDataset(Dataset):
    """Clips of the videos under `root`; item i is {"video": [C, T, S, S] in [-1, 1], "label": long}.

    Args:
        root: folder of class sub-folders of videos, or a flat folder of videos.
        num_frames: frames T per clip.
        frame_stride: take every `frame_stride`-th source frame (a clip spans
            (num_frames - 1) * frame_stride + 1 source frames).
        image_size: side S of the square frames (shorter side resized to S, centre crop).
        channels: 3 (RGB) or 1 (grey).
        split: "all" files, or the "train" / "val" side of the by-file hash split.
        val_fraction: fraction of files (per class, by hash) on the val side.
        seed: mixed into the split hash.
        max_clips_per_video: at most this many clips per video, evenly spread (None: all).
        strict: raise ConfigError on an unreadable or too-short file instead of skipping it.
        random_flip: flip all frames of a clip horizontally with probability 0.5 (training augmentation).

    A "val" dataset may be empty; any other raises ConfigError when no file gives a clip.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        num_frames: int = 17,
        frame_stride: int = 1,
        image_size: int = 128,
        channels: int = 3,
        split: str = "all",
        val_fraction: float = 0.0,
        seed: int = 0,
        max_clips_per_video: int | None = None,
        strict: bool = False,
        random_flip: bool = False,
    ):
        _check_args(num_frames, frame_stride, image_size, channels, max_clips_per_video)
        _check_split(split, val_fraction)
        self.root = Path(root)
        self.num_frames = num_frames
        self.frame_stride = frame_stride
        self.image_size = image_size
        self.channels = channels
        self.split = split
        self.strict = strict
        self.random_flip = random_flip
        self.skipped_paths: dict[str, str] = {}  # path -> why
        self.classes, samples = find_videos(root)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        if split != "all":
            want_val = split == "val"
            samples = [
                (path, label)
                for path, label in samples
                if in_val_split(Path(path).relative_to(self.root).as_posix(), val_fraction, seed) == want_val
            ]
        self.files = samples
        self.clips: list[tuple[str, int, int]] = []  # (path, start frame, label)
        self._probe(samples, max_clips_per_video)

    @property
    def span(self) -> int:
        """Source frames one clip covers."""
        return clip_span(self.num_frames, self.frame_stride)

    @property
    def num_skipped(self) -> int:
        """Distinct files skipped so far (probe and read time, in this process)."""
        return len(self.skipped_paths)

    def _probe(self, samples: list[tuple[str, int]], max_clips: int | None) -> None:
        skipped: list[tuple[str, str]] = []
        for path, label in samples:
            try:
                total = probe_num_frames(path)
            except ConfigError as err:
                if self.strict:
                    raise
                cause = err.__cause__ or err
                skipped.append((path, f"unreadable, {type(cause).__name__}: {cause}"))
                continue
            starts = clip_starts(total, self.num_frames, self.frame_stride, max_clips)
            if not starts:
                if self.strict:
                    raise ConfigError(
                        f"video '{path}' has {total} frames, fewer than the {self.span} a clip of "
                        f"{self.num_frames} frames every {self.frame_stride} needs; remove it, or set "
                        "strict=False to skip short videos"
                    )
                skipped.append((path, f"too short: {total} frames < {self.span}"))
                continue
            self.clips.extend((path, start, label) for start in starts)
        self.skipped_paths.update(skipped)
        if skipped:
            names = "; ".join(f"{Path(p).relative_to(self.root)} ({why})" for p, why in skipped[:_WARN_NAMES])
            more = f"; and {len(skipped) - _WARN_NAMES} more" if len(skipped) > _WARN_NAMES else ""
            log.warning(
                "skipping %d of %d video file(s) in '%s' (%s split): %s%s",
                len(skipped),
                len(samples),
                self.root,
                self.split,
                names,
                more,
            )
        if not self.clips and self.split != "val":
            found = f"{len(samples)} video file(s) ({len(skipped)} skipped)" if samples else "no video files"
            raise ConfigError(
                f"no readable video clips in '{self.root}' ({self.split} split): found {found}; each "
                f"clip needs a readable video of at least {self.span} frames (num_frames={self.num_frames}, "
                f"frame_stride={self.frame_stride}); {LAYOUT_HINT}"
            )

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor] | None:
        path, start, label = self.clips[index]
        try:
            frames = read_video(path, self.num_frames, self.frame_stride, start, channels=self.channels)
        except ConfigError as err:
            return self._skip(path, err)
        video = torch.from_numpy(self._resize(frames)).float() / 127.5 - 1  # [T, S, S, C]
        video = video.permute(3, 0, 1, 2)  # [C, T, S, S]
        if self.random_flip and torch.rand(()) < 0.5:
            video = video.flip(-1)
        return {"video": video.contiguous(), "label": torch.tensor(label, dtype=torch.long)}

    def _resize(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [T, H, W, C] -> [T, S, S, C]: shorter side to S, centre crop (per frame, as images)."""
        _, h, w, c = frames.shape
        if h == w == self.image_size:
            return frames
        out = []
        for frame in frames:
            image = Image.fromarray(frame[..., 0] if c == 1 else frame, "L" if c == 1 else "RGB")
            out.append(center_crop_arr(image, self.image_size))
        stack = np.stack(out)
        return stack[..., None] if stack.ndim == 3 else stack

    def _skip(self, path: str, err: Exception) -> None:
        if self.strict:
            raise ConfigError(
                f"{err}; remove or replace the file, or set strict=False to skip unreadable videos"
            ) from err
        if path not in self.skipped_paths:
            self.skipped_paths[path] = f"unreadable: {err}"
            log.warning("skipping unreadable video '%s' (%s)", path, err)
        return None


class VideoFolderDataModule(FolderDataModule):
    """A folder of videos as a LightningDataModule with a by-file train/val split (test split = val).

    Batches: {"video": float32 [B, C, T, S, S] in [-1, 1], "label": long [B]}; batches whose every clip was
    unreadable arrive as None and the LightningModules skip them. The folder is read in `setup`, so a
    config can be printed without it.

    Args:
        root: folder of class sub-folders of videos (labels: sorted class names), or a flat folder.
        num_frames: frames per clip (1 + k * t_down for a causal tokenizer with temporal downsampling t_down).
        frame_stride: take every `frame_stride`-th source frame.
        image_size: side of the square frames.
        channels: 3 (RGB) or 1 (grey).
        batch_size: clips per batch.
        val_fraction: fraction of files held out for validation (stable hash of the relative path; 0: none).
        seed: mixed into the split hash.
        max_clips_per_video: at most this many clips per video (None: every non-overlapping clip).
        num_workers: DataLoader worker processes.
        strict: raise on unreadable or too-short files instead of skipping them.
        random_flip: horizontal flips on the train split.
    """

    collate_fn = staticmethod(collate_skip_none)

    def __init__(
        self,
        root: str,
        num_frames: int = 17,
        frame_stride: int = 1,
        image_size: int = 128,
        channels: int = 3,
        batch_size: int = 8,
        val_fraction: float = 0.05,
        seed: int = 0,
        max_clips_per_video: int | None = None,
        num_workers: int = 0,
        strict: bool = False,
        random_flip: bool = False,
    ):
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        _check_args(num_frames, frame_stride, image_size, channels, max_clips_per_video)
        _check_split("train", val_fraction)
        self.root = root
        self.num_frames = num_frames
        self.frame_stride = frame_stride
        self.image_size = image_size
        self.channels = channels
        self.val_fraction = val_fraction
        self.seed = seed
        self.max_clips_per_video = max_clips_per_video
        self.strict = strict
        self.random_flip = random_flip

    @property
    def video_shape(self) -> tuple[int, int, int, int]:
        """(C, T, H, W) of every clip."""
        return (self.channels, self.num_frames, self.image_size, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        common = {
            "num_frames": self.num_frames,
            "frame_stride": self.frame_stride,
            "image_size": self.image_size,
            "channels": self.channels,
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "max_clips_per_video": self.max_clips_per_video,
            "strict": self.strict,
        }
        train = VideoFolderDataset(self.root, split="train", random_flip=self.random_flip, **common)
        if self.val_fraction > 0:
            self.val_dataset = VideoFolderDataset(self.root, split="val", **common)
        self.train_dataset = train
