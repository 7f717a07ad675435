"""`mmar fit|validate|test|predict --config ...`: the LightningCLI entry point.

Models and data are given by class path in YAML (`model: {class_path: mmar.lit.GeneratorModule, ...}`),
so every LightningModule and DataModule in mmar (and in user code) is reachable from one command.
`mmar predict` writes its samples to disk through `mmar.lit.prediction_writer.PredictionWriter`
(`--prediction_writer.output_dir=DIR`; by default `predictions/` in the run folder).
"""

from __future__ import annotations

import sys

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from mmar.errors import ConfigError
from mmar.lit.prediction_writer import PredictionWriter


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

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":  # predictions go to disk by default, not only into memory
            parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        return parser


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
