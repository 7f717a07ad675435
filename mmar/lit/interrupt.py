"""Save on SIGINT / SIGTERM: Ctrl-C, `kill`, a cluster's preemption notice.

The signal only raises a flag; the step in flight finishes (a signal in the middle of an optimiser step
would leave half-updated weights), then every rank agrees to stop, `last.ckpt` is written (to a temporary
name, then moved, so an interruption during the save leaves the previous one intact) and the run ends
with exit status 128 + the signal number and one line saying how to resume. A second signal while the
first is being handled interrupts at once.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(SystemExit):
    """The run stopped on a signal after saving; its exit status is 128 + the signal number."""


class SaveOnInterrupt(Callback):
    """On SIGINT or SIGTERM: finish the step, save `last.ckpt`, exit with status 128 + signal."""

    def __init__(self):
        self.received: int | None = None
        self._previous_handlers: dict = {}

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is threading.main_thread():  # signals only reach the main thread
            self._previous_handlers = {sig: signal.signal(sig, self._note) for sig in SIGNALS}

    def _note(self, signum: int, frame) -> None:
        if self.received is not None:  # asked twice: stop now
            self._restore_handlers()
            raise KeyboardInterrupt
        self.received = signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # every rank takes part in the decision, so all stop after the same step
        if not trainer.strategy.reduce_boolean_decision(self.received is not None, all=False):
            return
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path + ".tmp")
        if trainer.is_global_zero:
            os.replace(path + ".tmp", path)
            name = signal.Signals(self.received).name if self.received else "a signal to another rank"
            print(
                f"interrupted by {name} after step {trainer.global_step}: saved {path}; "
                "continue with the same command and --ckpt_path last",
                file=sys.stderr,
                flush=True,
            )
        trainer.strategy.barrier("save_on_interrupt")
        raise Interrupted(128 + (self.received or signal.SIGTERM))

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_handlers()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)
        self._previous_handlers = {}


def last_checkpoint_path(trainer) -> str:
    """`last.ckpt` in the folder of the run's ModelCheckpoint, where `--ckpt_path last` looks."""
    checkpoint = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
    folder = checkpoint.dirpath if checkpoint is not None and checkpoint.dirpath else trainer.default_root_dir
    os.makedirs(folder, exist_ok=True)
    name = ModelCheckpoint.CHECKPOINT_NAME_LAST if checkpoint is None else checkpoint.CHECKPOINT_NAME_LAST
    return os.path.join(folder, name + ModelCheckpoint.FILE_EXTENSION)
