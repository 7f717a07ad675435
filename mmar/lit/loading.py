"""Loading trained LightningModules from checkpoints, with errors that say what to do."""

from __future__ import annotations

from pathlib import Path

import torch

from mmar.errors import ConfigError
from mmar.lit.generator_module import GeneratorModule


def load_generator(checkpoint: str | Path, device: str | torch.device = "cpu") -> GeneratorModule:
    """A GeneratorModule from a Lightning checkpoint, loaded weights-only (EMA weights if trained so)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(
            f"checkpoint not found: '{checkpoint}'; train a generator first (e.g. `mmar fit --config "
            "configs/quickstart/digits_ar.yaml`) or pass the path of an existing .ckpt"
        )
    module = GeneratorModule.load_from_checkpoint(path, map_location=device, weights_only=True)
    return module.to(device).eval()
