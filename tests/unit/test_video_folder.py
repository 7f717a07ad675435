"""Video folders: class layout and flat folders, clip enumeration with a stride, skipped corrupt and
too-short files (probe and read time), the stable by-file split, batches, and ConfigErrors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from mmar.data import VideoFolderDataModule, VideoFolderDataset, collate_skip_none
from mmar.data.video_folder import clip_starts, in_val_split
from mmar.errors import ConfigError
from mmar.video_io import write_gif, write_mp4

pytest.importorskip("av")

# 3 frames every 2 frames: a clip spans 5 source frames
CLIPS = {"num_frames": 3, "frame_stride": 2, "image_size": 16}


def moving_square(t: int, h: int = 16, w: int = 16, c: int = 3, shade: int = 0) -> np.ndarray:
    """uint8 [T, H, W, C]: a square moving one pixel per frame; `shade` changes the background."""
    video = np.full((t, h, w, c), 20 + shade, dtype=np.uint8)
    for i in range(t):
        y = x = i % (min(h, w) - 4)
        video[i, y : y + 4, x : x + 4] = 230
    return video


@pytest.fixture
def folder(tmp_path):
    """Two classes: 'a' with a 12-frame MP4, a 12-frame GIF and a corrupt MP4 (random bytes); 'b' with a
    20-frame 16x24 GIF and a 3-frame (too short) MP4."""
    root = tmp_path / "videos"
    write_mp4(root / "a" / "a0.mp4", moving_square(12))
    write_gif(root / "a" / "a1.gif", moving_square(12, shade=10))
    (root / "a" / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(1500))
    write_gif(root / "b" / "nested" / "b0.gif", moving_square(20, h=16, w=24))
    write_mp4(root / "b" / "short.mp4", moving_square(3))
    (root / "b" / "notes.txt").write_text("not a video")
    return root


def test_clip_starts_are_non_overlapping_and_capped():
    assert clip_starts(12, 3, 2) == [0, 5]  # span 5: 0..4, 5..9 (10..14 does not fit)
    assert clip_starts(20, 3, 2) == [0, 5, 10, 15]
    assert clip_starts(4, 3, 2) == []
    assert clip_starts(9, 9, 1) == [0]
    assert clip_starts(100, 1, 1, max_clips=3) == [0, 50, 99]


def test_dataset_enumerates_clips_and_skips_corrupt_and_short_files(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="mmar.data.video_folder"):
        data = VideoFolderDataset(folder, **CLIPS)
    assert data.classes == ["a", "b"]
    assert [(p.split("/")[-1], start, label) for p, start, label in data.clips] == [
        ("a0.mp4", 0, 0),
        ("a0.mp4", 5, 0),
        ("a1.gif", 0, 0),
        ("a1.gif", 5, 0),
        ("b0.gif", 0, 1),
        ("b0.gif", 5, 1),
        ("b0.gif", 10, 1),
        ("b0.gif", 15, 1),
    ]
    assert data.num_skipped == 2
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "skipping 2 of 5 video file(s)" in warnings[0]
    assert "corrupt.mp4 (unreadable, " in warnings[0] and "short.mp4 (too short: 3 frames < 5)" in warnings[0]


def test_items_are_the_strided_frames_in_minus_one_to_one(folder):
    data = VideoFolderDataset(folder, **CLIPS)
    item = data[3]  # a1.gif from frame 5: frames 5, 7, 9, stored exactly by the GIF
    expected = torch.from_numpy(moving_square(12, shade=10)[5:10:2]).float() / 127.5 - 1
    assert item["video"].shape == (3, 3, 16, 16) and item["video"].dtype == torch.float32
    torch.testing.assert_close(item["video"], expected.permute(3, 0, 1, 2))
    assert item["label"].dtype == torch.long and item["label"].item() == 0
    wide = data[5]["video"]  # 16x24 GIF: centre crop of the middle 16 columns (no resize needed)
    source = torch.from_numpy(moving_square(20, h=16, w=24)[5:10:2, :, 4:20]).float() / 127.5 - 1
    torch.testing.assert_close(wide, source.permute(3, 0, 1, 2))
    mp4 = data[0]["video"]
    assert mp4.min() >= -1 and mp4.max() <= 1
    close = torch.from_numpy(moving_square(12)[0:5:2]).float().permute(3, 0, 1, 2) / 127.5 - 1
    assert (mp4 - close).abs().mean() < 0.03


def test_resize_grey_and_max_clips(folder):
    data = VideoFolderDataset(folder, num_frames=4, image_size=8, channels=1, max_clips_per_video=2)
    assert len(data) == 6  # two clips from each of the three readable files
    starts = [start for path, start, _ in data.clips if path.endswith("b0.gif")]
    assert starts == [0, 16]  # the first and last of the 5 non-overlapping starts 0, 4, ..., 16
    video = data[0]["video"]
    assert video.shape == (1, 4, 8, 8) and video.min() >= -1 and video.max() <= 1


def test_datamodule_batches(folder):
    dm = VideoFolderDataModule(str(folder), batch_size=3, val_fraction=0.0, **CLIPS)
    assert dm.video_shape == (3, 3, 16, 16)
    assert dm.num_classes == 2 and dm.num_skipped == 2
    assert dm.val_dataloader() == []
    batches = list(dm.train_dataloader())
    assert len(batches) == 2  # 8 clips, batches of 3, the last incomplete one dropped
    for batch in batches:
        assert batch["video"].shape == (3, 3, 3, 16, 16) and batch["video"].dtype == torch.float32
        assert batch["video"].min() >= -1 and batch["video"].max() <= 1
        assert batch["label"].dtype == torch.long


def test_file_unreadable_at_read_time_is_skipped_and_counted(folder, caplog):
    data = VideoFolderDataset(folder, **CLIPS)
    (folder / "a" / "a0.mp4").write_bytes(b"gone bad")  # probed fine, fails when read
    with caplog.at_level(logging.WARNING, logger="mmar.data.video_folder"):
        assert data[0] is None and data[1] is None
    assert data.num_skipped == 3
    assert sum("a0.mp4" in r.getMessage() for r in caplog.records) == 1  # warned once
    batch = collate_skip_none([data[0], data[2], data[1]])
    assert batch["video"].shape == (1, 3, 3, 16, 16)
    assert collate_skip_none([data[0]]) is None


def test_videos_beside_class_folders_are_ignored(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="mmar.data.video_folder"):
        data = VideoFolderDataset(folder / "b", **CLIPS)  # b/short.mp4 beside the class folder b/nested
    assert data.classes == ["nested"] and len(data.files) == 1 and data.num_skipped == 0
    assert "ignoring 1 video file(s)" in caplog.text


def test_strict_raises_on_corrupt_files(folder):
    with pytest.raises(ConfigError, match=r"corrupt\.mp4"):
        VideoFolderDataset(folder, strict=True, **CLIPS)


def test_split_is_by_file_stable_and_disjoint(folder):
    for i in range(12):
        write_gif(folder / "b" / f"extra{i}.gif", moving_square(5, h=8, w=8))
    dm = VideoFolderDataModule(str(folder), val_fraction=0.4, seed=3, batch_size=2, **CLIPS)
    dm.setup()
    train = {p for p, _ in dm.train_dataset.files}
    val = {p for p, _ in dm.val_dataset.files}
    assert train.isdisjoint(val) and len(train | val) == 17 and val and train
    assert {p for p, *_ in dm.val_dataset.clips} <= val  # every clip of a val file is in val
    for i in range(12, 20):  # more files: no file changes side
        write_gif(folder / "b" / f"extra{i}.gif", moving_square(5, h=8, w=8))
    later = VideoFolderDataModule(str(folder), val_fraction=0.4, seed=3, batch_size=2, **CLIPS)
    later.setup()
    assert val <= {p for p, _ in later.val_dataset.files}
    assert train <= {p for p, _ in later.train_dataset.files}
    assert in_val_split("b/extra0.gif", 0.4, 3) == (str(folder / "b" / "extra0.gif") in val)
    assert len(next(iter(later.val_dataloader()))["video"]) >= 1


def test_flat_folder_is_one_class(tmp_path):
    write_gif(tmp_path / "clips" / "x.gif", moving_square(9))
    write_mp4(tmp_path / "clips" / "y.mp4", moving_square(9))
    dm = VideoFolderDataModule(
        str(tmp_path / "clips"), num_frames=9, batch_size=2, val_fraction=0.0, image_size=16
    )
    assert dm.num_classes == 1
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (2, 3, 9, 16, 16) and batch["label"].tolist() == [0, 0]


def test_empty_missing_and_unreadable_folders_raise(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        VideoFolderDataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no videos.*\.mp4"):
        VideoFolderDataModule(str(tmp_path / "empty")).setup()
    (tmp_path / "classes" / "a").mkdir(parents=True)
    (tmp_path / "classes" / "b").mkdir()
    write_gif(tmp_path / "classes" / "a" / "x.gif", moving_square(9))
    with pytest.raises(ConfigError, match=r"class folders without videos.*\['b'\]"):
        VideoFolderDataset(tmp_path / "classes")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.mp4").write_bytes(b"\x00" * 100)
    write_gif(tmp_path / "bad" / "y.gif", moving_square(4))
    with pytest.raises(
        ConfigError, match=r"no readable video clips.*2 video file\(s\) \(2 skipped\).*at least 9"
    ):
        VideoFolderDataset(tmp_path / "bad", num_frames=9)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_frames": 0}, "num_frames"),
        ({"frame_stride": 0}, "frame_stride"),
        ({"image_size": 0}, "image_size"),
        ({"channels": 2}, "channels"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"max_clips_per_video": 0}, "max_clips_per_video"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_bad_arguments_raise_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        VideoFolderDataModule("does/not/matter", **kwargs)
