"""Training steps draw from one RNG stream that nothing else touches and that survives a resume.

Dropout, class dropout, random orders and mask ratios all draw from the global RNGs inside training
steps. `TrainingRNG` snapshots the RNG states after every training step, saves the snapshot in
checkpoints and puts it back right before the next step. So whatever runs between two steps (the sanity
check and the loader's prefetch of a resumed run, validation and its loader, callbacks) cannot shift the
stream, and a resumed run draws exactly what the uninterrupted one drew; how often a run validates does
not change its training either. The data side is seeded per batch by `mmar.data.resumable`.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch import Callback


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
    """Every training step starts from the RNG states the previous step ended with (also when that step
    ran before a resume), whatever ran in between: validation, its loader, sample grids, checkpoints."""

    def __init__(self):
        self._after_last_step: dict | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._after_last_step is not None:
            set_rng_states(self._after_last_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._after_last_step = rng_states()

    def state_dict(self) -> dict:
        return {} if self._after_last_step is None else {"rng": self._after_last_step}

    def load_state_dict(self, state_dict: dict) -> None:
        self._after_last_step = state_dict.get("rng")
