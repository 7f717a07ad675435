"""`mmar fit|validate|test|predict --config ...`: the LightningCLI entry point.

Models and data are given by class path in YAML (`model: {class_path: mmar.lit.GeneratorModule, ...}`),
so every LightningModule and DataModule in mmar (and in user code) is reachable from one command.
"""

from __future__ import annotations

import sys

from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

from mmar.errors import ConfigError
from mmar.lit.interrupt import SaveOnInterrupt
from mmar.lit.rng_state import TrainingRNG


class MMARCLI(LightningCLI):
    """LightningCLI with mmar's defaults: subclass mode for model and data, config saved per run."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(
            LightningModule,
            LightningDataModule,
            *args,
            subclass_mode_model=True,
            subclass_mode_data=True,
            **kwargs,
        )

    def instantiate_trainer(self, **kwargs) -> Trainer:
        """The configured Trainer plus what every run needs to resume exactly and to save on a signal."""
        trainer = super().instantiate_trainer(**kwargs)
        trainer.callbacks.extend([TrainingRNG(), SaveOnInterrupt()])
        return trainer


def main(args: list[str] | None = None) -> None:
    """Console script `mmar`; bad input ends with one `error: ...` line and exit code 2."""
    try:
        MMARCLI(args=args)
    except Exception as err:
        config_error = _config_error_in(err)
        if config_error is None:
            raise
        print(f"error: {config_error}", file=sys.stderr)
        sys.exit(2)


def _config_error_in(err: BaseException | None) -> ConfigError | None:
    """The ConfigError behind `err`: jsonargparse wraps errors raised while instantiating classes."""
    while err is not None and not isinstance(err, ConfigError):
        err = err.__cause__ or err.__context__
    return err


if __name__ == "__main__":
    main()
