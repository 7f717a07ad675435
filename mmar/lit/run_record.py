"""A callback that records how far a training run got, whatever logger (or none) the recipe uses: the
comparison scripts read it to mark a run that stopped before the steps its recipe asks for."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, Timer

from mmar.io import atomic_write


class RunRecord(Callback):
    """On train end, write {"steps": global_step, "trainer_seconds": the Timer's training time (None
    without max_time)} as JSON to `path`.

    Args:
        path: the JSON file to write (its folder is created).
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
        record = {
            "steps": trainer.global_step,
            "trainer_seconds": None if timer is None else timer.time_elapsed("train"),
        }
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(json.dumps(record)))


def read_run_record(path: Path) -> dict:
    """The record a RunRecord wrote at `path`, or {} when there is none (not trained by a script)."""
    return json.loads(path.read_text()) if path.is_file() else {}
