"""Training steps draw from one RNG stream that nothing else touches and that survives a resume.

Dropout, class dropout, random orders and mask ratios all draw from the global RNGs inside training
steps. `TrainingRNG` keeps that stream exact across an interruption: it snapshots the RNG states after
every training step, saves the snapshot in checkpoints and puts it back right before the first step of
a resumed run (after the sanity check and the loader's prefetch, which would otherwise shift it).
Validation runs on a copy of the states, so how often a run validates does not change its training.
The data side is seeded per batch by `mmar.data.resumable`.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn


def rng_states() -> dict:
    """torch (CPU and CUDA), numpy and Python RNG states, as tensors and plain values (weights-only safe)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_states(states: dict) -> None:
    """Restore what `rng_states` returned."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


class TrainingRNG(Callback):
    """Saves the training RNG stream in checkpoints and resumes it exactly; validation cannot move it."""

    def __init__(self):
        self._after_last_step: dict | None = None
        self._to_restore: dict | None = None
        self._outside_validation: dict | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._to_restore is not None:
            set_rng_states(self._to_restore)
            self._to_restore = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._after_last_step = rng_states()

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            self._outside_validation = rng_states()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._outside_validation is not None:
            set_rng_states(self._outside_validation)
            self._outside_validation = None

    def state_dict(self) -> dict:
        return {} if self._after_last_step is None else {"rng": self._after_last_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self._to_restore = state_dict.get("rng")
