"""Checks of a parsed `mmar` config that jsonargparse and Lightning let through, run before anything is
built, each a one-line ConfigError:

* trainer numbers Lightning accepts and then fails on (a ZeroDivisionError deep in the loop) or silently
  misuses (a negative clip value flips the gradients); Lightning's own refusals (MisconfigurationException)
  the CLI prints as one line too;
* `null` for an init argument whose type does not allow None (jsonargparse passes it on, and the class
  then fails with a TypeError far from the config).
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
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


def _allows_none(hint) -> bool:
    if hint is typing.Any or hint is type(None):
        return True
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)


def check_no_null_arguments(section: str, class_path: str, init_args: Mapping) -> None:
    """ConfigError naming `<section>.init_args.<name>` when it is null but its type does not allow None."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # an unimportable class or unresolvable hints: jsonargparse reports those itself
        return
    defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}
    for key, value in init_args.items():
        if value is None and key in hints and not _allows_none(hints[key]):
            default = defaults.get(key, inspect.Parameter.empty)
            empty = default is inspect.Parameter.empty
            fix = "give a value" if empty else f"drop it for the default {default!r}"
            kind = getattr(hints[key], "__name__", str(hints[key]))
            raise ConfigError(f"{section}.init_args.{key}=null is not allowed (it takes a {kind}); {fix}")
