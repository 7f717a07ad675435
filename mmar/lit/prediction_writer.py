"""PredictionWriter: what `mmar predict` writes to disk, one file per sample.

`predict_step` of every mmar LightningModule returns a dict keyed by modality (the batch keys):
{"image": [B, C, H, W]} (PNG), {"video": [B, C, T, H, W]} (GIF), {"audio": [B, C, samples],
"sample_rate": int} (16-bit WAV) or {"text": list of B strings} (.txt), floats in [-1, 1]. Files are
named by the sample's index in the prediction data (`000012.png`), so every device writes its own
samples and a rerun overwrites the same names; each file is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from mmar.audio_io import write_wav
from mmar.errors import ConfigError
from mmar.io import atomic_write
from mmar.video_io import write_gif

SUFFIXES = {"image": ".png", "video": ".gif", "audio": ".wav", "text": ".txt"}


class PredictionWriter(BasePredictionWriter):
    """Writes each predict batch's samples under `output_dir` as they come.

    Args:
        output_dir: folder of the files; None: `predictions/` in the run folder (the logger's version
            folder, or `trainer.default_root_dir` without a logger).
    """

    def __init__(self, output_dir: str | None = None):
        super().__init__(write_interval="batch")
        self.output_dir = output_dir

    def folder(self, trainer) -> Path:
        if self.output_dir is not None:
            return Path(self.output_dir)
        return Path(trainer.log_dir or trainer.default_root_dir) / "predictions"

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        if prediction is None:  # a batch whose every file was unreadable
            return
        kinds = [key for key in SUFFIXES if key in (prediction if isinstance(prediction, dict) else {})]
        if len(kinds) != 1:
            raise ConfigError(
                f"{type(pl_module).__name__}.predict_step must return a dict with one of {list(SUFFIXES)} "
                "for the prediction writer"
            )
        kind = kinds[0]
        samples = prediction[kind]
        if batch_indices is None or len(batch_indices) != len(samples):  # untracked sampler: by position
            batch_indices = range(batch_idx * len(samples), (batch_idx + 1) * len(samples))
        prefix = f"{dataloader_idx}_" if len(trainer.num_predict_batches) > 1 else ""
        folder = self.folder(trainer)
        for index, sample in zip(batch_indices, samples):
            path = folder / f"{prefix}{index:06d}{SUFFIXES[kind]}"
            write_sample(path, kind, sample, prediction.get("sample_rate"))


def write_sample(path: Path, kind: str, sample, sample_rate: int | None = None) -> None:
    """One sample to `path`: an image [C, H, W], a clip [C, T, H, W], audio [C, samples] or a string."""
    if kind == "text":
        atomic_write(path, lambda tmp: Path(tmp).write_text(sample + "\n", encoding="utf-8"))
    elif kind == "audio":
        write_wav(path, sample, sample_rate)
    elif kind == "video":
        write_gif(path, to_uint8(sample).permute(1, 2, 3, 0))  # (T, H, W, C)
    else:
        array = to_uint8(sample).permute(1, 2, 0).numpy()  # (H, W, C)
        image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
        atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 by rounding (the ADM convention), on the CPU."""
    return ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
