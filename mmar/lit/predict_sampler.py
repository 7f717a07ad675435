"""The sampler settings a LightningModule keeps for `mmar predict` (`model.init_args.sampler` in YAML).

They stay a dict of primitives in the hyper-parameters (checkpoints load with `weights_only=True`) and
become a `mmar.sampling.Sampler` per predict batch; a seed is offset by the batch index, so every batch
draws differently and a rerun (or another device count) reproduces each batch exactly.
"""

from __future__ import annotations

import dataclasses

from mmar.errors import ConfigError
from mmar.sampling import Sampler


def checked_sampler_settings(settings: dict | None) -> dict:
    """`settings` validated by building a Sampler from them; ConfigError names an unknown or bad field."""
    settings = dict(settings or {})
    fields = {f.name for f in dataclasses.fields(Sampler)}
    unknown = sorted(set(settings) - fields)
    if unknown:
        raise ConfigError(
            f"model.sampler has unknown field(s) {unknown}; Sampler fields are {sorted(fields)}"
        )
    Sampler(**settings)  # raises ConfigError on bad values
    return settings


def batch_sampler(settings: dict | None, batch_idx: int) -> Sampler:
    """The Sampler of predict batch `batch_idx`: the settings, with the seed (when set) + batch_idx."""
    sampler = Sampler(**(settings or {}))
    if sampler.seed is not None:
        sampler = dataclasses.replace(sampler, seed=sampler.seed + batch_idx)
    return sampler
