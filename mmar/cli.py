"""`mmar fit|validate|test|predict --config ...`: the LightningCLI entry point; `mmar export`.

Models and data are given by class path in YAML (`model: {class_path: mmar.lit.GeneratorModule, ...}`),
so every LightningModule and DataModule in mmar (and in user code) is reachable from one command.
Checkpoints are written atomically and `--ckpt_path` is loaded weights-only (`SafeCheckpointIO`).
`mmar export --ckpt PATH --out DIR` writes a self-contained folder (`mmar.export`).
`mmar predict` writes its samples to disk through `mmar.lit.prediction_writer.PredictionWriter`
(`--prediction_writer.output_dir=DIR`; by default `predictions/` in the run folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI

from mmar.checkpoint_io import read_checkpoint, use_safe_checkpoint_io
from mmar.cli_checks import check_no_null_arguments, check_trainer_settings
from mmar.errors import ConfigError
from mmar.lit.interrupt import SaveOnInterrupt
from mmar.lit.nonfinite import NonFiniteGuard
from mmar.lit.prediction_writer import PredictionWriter
from mmar.lit.rng_state import TrainingRNG
from mmar.lit.watch import watch_defaults


class MMARCLI(LightningCLI):
    """LightningCLI with mmar's defaults: subclass mode for model and data, config saved per run, and
    TensorBoard + CSV logs, an LR monitor, sample grids and Rich progress bars (`mmar.lit.watch`)."""

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

    def add_arguments_to_parser(self, parser) -> None:
        # always on: a NaN/inf loss stops training (or skips the step) and never reaches a checkpoint
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs):
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "predict":  # predictions go to disk by default, not only into memory
            parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        return parser

    def instantiate_trainer(self, **kwargs):
        # not `trainer_defaults`: those are appended to a config's callbacks unconditionally, so a config
        # with its own progress bar, or without a logger, would fail
        trainer = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        try:
            built = super().instantiate_trainer(**{**kwargs, **watch_defaults(trainer)})
        except (TypeError, ValueError, MisconfigurationException) as err:  # Lightning refusing a setting
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"the trainer settings are refused: {' '.join(str(err).split())}") from err
        built.callbacks.extend([TrainingRNG(), SaveOnInterrupt()])  # exact resume, a save on a signal
        return built

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_trainer_settings(config.get("trainer") or {})
        for section in ("model", "data"):
            chosen = config.get(section)
            if getattr(chosen, "class_path", None) and chosen.get("init_args") is not None:
                init_args = dict(chosen.init_args.items(branches=True))
                check_no_null_arguments(section, chosen.class_path, init_args)

    def _parse_ckpt_path(self) -> None:
        """`--ckpt_path` is read (weights-only) before Lightning reads its hyper-parameters: a corrupt or
        pickling checkpoint is one line naming the file."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and Path(ckpt_path).is_file():
            read_checkpoint(ckpt_path, mmap=True)
        super()._parse_ckpt_path()

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        use_safe_checkpoint_io(self.trainer)  # before any subcommand saves or loads a checkpoint


def export_main(args: list[str]) -> None:
    """`mmar export --ckpt PATH --out DIR`."""
    p = argparse.ArgumentParser(
        prog="mmar export", description="Export a checkpoint as a self-contained folder"
    )
    p.add_argument(
        "--ckpt", required=True, help="a .ckpt of a GeneratorModule, StreamModule or TokenizerModule"
    )
    p.add_argument(
        "--out", required=True, help="folder to write (config.json, model.safetensors, tokenizer/)"
    )
    parsed = p.parse_args(args)
    from mmar.export import export_checkpoint  # the CLI's other subcommands do not need it

    print(f"exported to {export_checkpoint(parsed.ckpt, parsed.out).resolve()}")


def main(args: list[str] | None = None, run: bool = True) -> None:
    """Console script `mmar`; bad input ends with one `error: ...` line and exit code 2. `run=False`
    only parses and builds model, data and trainer (no subcommand in `args`)."""
    words = sys.argv[1:] if args is None else args
    try:
        if words[:1] == ["export"]:
            export_main(words[1:])
        else:
            MMARCLI(args=args, run=run)  # None: LightningCLI reads sys.argv itself (no warning)
    except Exception as err:
        config_error = _config_error_in(err)
        if config_error is None:
            raise
        print(f"error: {config_error}", file=sys.stderr)
        sys.exit(2)


def _config_error_in(err: BaseException | None) -> ConfigError | None:
    """The ConfigError behind `err`: jsonargparse wraps errors raised while instantiating classes.
    Lightning's MisconfigurationException (e.g. `max_steps=-5`) is a config error too."""
    while err is not None and not isinstance(err, ConfigError | MisconfigurationException):
        err = err.__cause__ or err.__context__
    if isinstance(err, MisconfigurationException):
        return ConfigError(" ".join(str(err).split()))  # one line
    return err


if __name__ == "__main__":
    main()
