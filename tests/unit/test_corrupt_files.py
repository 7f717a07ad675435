"""A corrupt file in any kind of dataset folder (images, captioned images, audio, video, text) is skipped,
counted (`num_skipped` on the datamodule) and named in a warning, not fatal; `strict=True` makes it a
ConfigError naming the file."""

import logging

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from mmar.data import (
    AudioFolderDataModule,
    CaptionedImageFolderDataModule,
    ImageFolderDataModule,
    TextDataModule,
    VideoFolderDataModule,
)
from mmar.errors import ConfigError

BROKEN = np.random.default_rng(0).bytes(600)  # random bytes under a valid file name


def png(path, shade: int) -> None:
    Image.fromarray(np.full((10, 12), shade, dtype=np.uint8)).save(path)


def images(root):
    (root / "cls").mkdir(parents=True)
    for i in range(3):
        png(root / "cls" / f"{i}.png", 40 * i)
    (root / "cls" / "broken.png").write_bytes(BROKEN)
    return ImageFolderDataModule, {"train_root": str(root), "image_size": 8, "channels": 1}


def captioned(root):
    root.mkdir()
    for i in range(3):
        png(root / f"{i}.png", 40 * i)
        (root / f"{i}.txt").write_text(f"a square of shade {i}")
    (root / "broken.png").write_bytes(BROKEN)
    (root / "broken.txt").write_text("a caption of a corrupt image")
    return CaptionedImageFolderDataModule, {"root": str(root), "image_size": 8, "channels": 1}


def audio(root):
    (root / "cls").mkdir(parents=True)
    for i in range(3):
        tone = 0.3 * np.sin(2 * np.pi * (220 + 110 * i) * np.arange(4000) / 8000)
        sf.write(root / "cls" / f"{i}.wav", tone.astype(np.float32), 8000)
    (root / "cls" / "broken.wav").write_bytes(BROKEN)
    return AudioFolderDataModule, {
        "root": str(root),
        "sample_rate": 8000,
        "duration": 0.25,
        "val_fraction": 0.0,
    }


def video(root):
    (root / "cls").mkdir(parents=True)
    for i in range(3):
        frames = [Image.fromarray(np.full((16, 16), 30 * t + i, dtype=np.uint8)) for t in range(5)]
        frames[0].save(root / "cls" / f"{i}.gif", save_all=True, append_images=frames[1:], duration=40)
    (root / "cls" / "broken.gif").write_bytes(BROKEN)
    kwargs = {"root": str(root), "num_frames": 4, "image_size": 8, "channels": 1, "val_fraction": 0.0}
    return VideoFolderDataModule, kwargs


def text(root, tokenizer):
    root.mkdir()
    for i in range(3):
        (root / f"{i}.txt").write_text(f"document {i}: a red cube left of a blue ball. " * 4)
    (root / "broken.txt").write_bytes(b"\xff\xfe\xfa not utf-8 \xc3")
    return TextDataModule, {"tokenizer": tokenizer, "root": str(root), "seq_len": 8, "val_fraction": 0.0}


KINDS = {"images": images, "captioned": captioned, "audio": audio, "video": video, "text": text}


def build(kind, tmp_path, request, **extra):
    args = (request.getfixturevalue("debug_text_tokenizer"),) if kind == "text" else ()
    cls, kwargs = KINDS[kind](tmp_path / kind, *args)
    return cls(batch_size=2, **kwargs, **extra)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_corrupt_file_is_skipped_counted_and_named(kind, tmp_path, request, caplog):
    data = build(kind, tmp_path, request)
    with caplog.at_level(logging.WARNING):
        data.setup("fit")
        batches = [batch for batch in data.train_dataloader() if batch is not None]
    assert data.num_skipped == 1 and "broken" in caplog.text
    assert batches  # the readable files still train


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_strict_makes_a_corrupt_file_an_error_naming_it(kind, tmp_path, request):
    data = build(kind, tmp_path, request, strict=True)
    with pytest.raises(ConfigError, match="broken"):
        data.setup("fit")
        for _ in data.train_dataloader():
            pass
