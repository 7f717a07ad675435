"""What `mmar fit` shows while it trains: the CLI's default loggers and callbacks.

By default a run logs to TensorBoard and to CSV in the same folder, `<default_root_dir>/lightning_logs/
version_N/` (scripts read `metrics.csv`; `tensorboard --logdir runs` reads the event files), and adds a
`LearningRateMonitor`, a `SampleGrid` and Rich progress bars. A config keeps the last word: a
`trainer.logger` of its own replaces both loggers, `logger: false` drops them with the callbacks that need
one, `enable_progress_bar: false` drops the bar, and a callback of one of these types in
`trainer.callbacks` is used instead of the default one.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta

from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ProgressBar, RichProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from mmar.lit.callbacks import SampleGrid

LOG_FOLDER = "lightning_logs"


def default_loggers(save_dir: str) -> list:
    """TensorBoard and CSV loggers writing into one `save_dir/lightning_logs/version_N` folder."""
    tensorboard = TensorBoardLogger(save_dir, name=LOG_FOLDER, default_hp_metric=False)
    csv = CSVLogger(save_dir, name=LOG_FOLDER, version=tensorboard.version)
    csv.experiment  # noqa: B018 -- creates the folder first: the CSV writer warns about one it finds filled
    return [tensorboard, csv]


def watch_defaults(trainer: dict) -> dict:
    """The `logger` and `callbacks` Trainer arguments of a run whose config gave `trainer`: its own, plus
    the defaults it did not replace or turn off."""
    logger, quick = trainer.get("logger"), bool(trainer.get("fast_dev_run"))
    if (logger is None or logger is True) and not quick:  # Lightning's default: TensorBoard alone
        logger = default_loggers(os.fspath(trainer.get("default_root_dir") or os.getcwd()))
    callbacks = trainer.get("callbacks") or []
    callbacks = list(callbacks) if isinstance(callbacks, list | tuple) else [callbacks]
    defaults: list[Callback] = []
    if logger and not quick:  # fast_dev_run replaces every logger by a DummyLogger
        defaults += [LearningRateMonitor(logging_interval="step"), SampleGrid()]
    if trainer.get("enable_progress_bar") is not False:
        defaults.append(RunProgressBar())
    taken = (LearningRateMonitor, SampleGrid, ProgressBar)
    for default in defaults:
        kind = next(kind for kind in taken if isinstance(default, kind))
        if not any(isinstance(callback, kind) for callback in callbacks):
            callbacks.append(default)
    return {"logger": logger, "callbacks": callbacks}


class RunProgressBar(RichProgressBar):
    """Rich progress bars (steps/s, elapsed and remaining time of the epoch) that also show the run's step
    and ETA: recipes count training in steps (`max_steps`), over epochs of a few dozen batches."""

    def __init__(self):
        super().__init__()
        self._start: tuple[float, int] | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        super().on_train_start(trainer, pl_module)
        self._start = (time.monotonic(), trainer.global_step)

    def _get_train_description(self, current_epoch: int) -> str:
        description = super()._get_train_description(current_epoch)
        if self.trainer.max_epochs is not None and self.trainer.max_epochs < 0:  # not "Epoch 3/-2"
            description = description.replace(f"/{self.trainer.max_epochs - 1}", "")
        return description

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        if trainer.max_steps > 0 and self._start is not None and trainer.training:
            items["step"] = f"{trainer.global_step}/{trainer.max_steps}"
            started, first = self._start
            done = trainer.global_step - first
            if done > 0:  # the rate since this run (or resume) began, validation included
                left = (trainer.max_steps - trainer.global_step) * (time.monotonic() - started) / done
                items["eta"] = str(timedelta(seconds=round(left)))
        return items
