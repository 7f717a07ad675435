"""Trainer numbers Lightning would accept and then fail on (a ZeroDivisionError deep in the loop) or
silently misuse (a negative clip value flips the gradients): refused with one line before the Trainer
is built. Lightning's own refusals (MisconfigurationException) the CLI prints as one line too."""

from __future__ import annotations

from collections.abc import Mapping

from mmar.errors import ConfigError

# field -> (smallest allowed value, what it means): None always passes (Lightning's "not set")
_AT_LEAST = {
    "accumulate_grad_batches": (1, "batches per optimizer step"),
    "check_val_every_n_epoch": (1, "epochs between validations, or null with val_check_interval"),
    "log_every_n_steps": (1, "steps between logged metrics"),
    "gradient_clip_val": (0, "max gradient norm (0 or null: no clipping)"),
    "max_steps": (-1, "optimizer steps (-1: no limit)"),
    "max_epochs": (-1, "epochs (-1: no limit)"),
}


def check_trainer_settings(trainer: Mapping) -> None:
    """ConfigError naming the first `trainer.<field>` no training can run with."""
    for field, (least, meaning) in _AT_LEAST.items():
        value = trainer.get(field)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < least:
            raise ConfigError(f"trainer.{field}={value} must be >= {least} ({meaning})")
    interval = trainer.get("val_check_interval")
    if isinstance(interval, (int, float)) and not isinstance(interval, bool) and interval <= 0:
        raise ConfigError(
            f"trainer.val_check_interval={interval} must be > 0 (a fraction of an epoch, or a step count)"
        )
