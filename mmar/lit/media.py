"""Pictures of samples for the training logs: image grids, video frame strips, audio spectrograms, and
their logging to whichever loggers can show pictures (TensorBoard, or any with W&B's `log_image`)."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from torchvision.utils import make_grid

from mmar.audio_io import spectrogram_image

MAX_FRAMES = 8
"""Frames of a clip shown in its strip (evenly spaced, first and last included)."""


def picture(samples: torch.Tensor, modality: str, row: int, sample_rate: int | None = None) -> torch.Tensor:
    """Samples in [-1, 1] -> one RGB picture uint8 [3, H, W].

    Images [N, C, H, W] make a grid of `row` images per row; videos [N, C, T, H, W] one strip of frames
    per clip; audio [N, C, samples] a grid of log-mel spectrograms, `row` per row."""
    x = samples.detach().float().cpu().clamp(-1, 1)
    if modality == "audio":
        tiles = [torch.from_numpy(np.asarray(spectrogram_image(clip, sample_rate))) for clip in x]
        tiles = torch.stack(tiles).permute(0, 3, 1, 2).float() / 255  # (N, 3, mels, frames)
        return _grid(tiles, row)
    if modality == "video":
        t = x.shape[2]
        frames = torch.linspace(0, t - 1, min(t, MAX_FRAMES)).round().long()
        x = x[:, :, frames].transpose(1, 2).flatten(0, 1)  # (N * frames, C, H, W): a row per clip
        return _grid((x + 1) / 2, len(frames))
    return _grid((x + 1) / 2, row)


def _grid(tiles: torch.Tensor, row: int) -> torch.Tensor:
    grid = make_grid(tiles, nrow=row, padding=2, pad_value=1.0)  # (3, H, W): grayscale repeated
    return (grid * 255).round().to(torch.uint8)


def picture_loggers(loggers: list[Logger]) -> list[Logger]:
    """The loggers that can show a picture: TensorBoard, and those with W&B's `log_image` (looked up on
    the class: Lightning's DummyLogger answers every attribute)."""
    return [lg for lg in loggers if isinstance(lg, TensorBoardLogger) or hasattr(type(lg), "log_image")]


def log_picture(loggers: list[Logger], tag: str, image: torch.Tensor, step: int) -> None:
    """Log a picture uint8 [3, H, W] to every logger that can show one."""
    for logger in picture_loggers(loggers):
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(tag, image, step, dataformats="CHW")
        else:
            logger.log_image(key=tag, images=[image.permute(1, 2, 0).numpy()], step=step)


def log_text(loggers: list[Logger], tag: str, lines: list[str], step: int) -> None:
    """Log text samples, one per line: TensorBoard's text tab, or W&B's `log_text` table; control characters
    that an undertrained model samples are shown as U+FFFD."""
    lines = ["".join(c if c.isprintable() or c == "\n" else "\ufffd" for c in line) for line in lines]
    for logger in picture_loggers(loggers):
        if isinstance(logger, TensorBoardLogger):
            blocks = ["\n".join(f"    {part}" for part in line.splitlines() or [""]) for line in lines]
            logger.experiment.add_text(tag, "\n\n".join(blocks), step)  # code blocks: text as sampled
        elif hasattr(type(logger), "log_text"):
            logger.log_text(key=tag, columns=["sample"], data=[[line] for line in lines], step=step)
