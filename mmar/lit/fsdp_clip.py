"""Gradient-norm clipping under FSDP: `trainer.gradient_clip_val` is refused there by Lightning (its
`torch.nn.utils.clip_grad_norm_` would see only each rank's shard), so this callback clips through the
root FSDP module's `clip_grad_norm_`, which reduces the norm over all shards, as LlamaGen clips at 1.0."""

from __future__ import annotations

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from mmar.errors import ConfigError


class FSDPGradientClip(Callback):
    def __init__(self, max_norm: float = 1.0):
        """Clips the global gradient norm to `max_norm` before each optimizer step (FSDP or not).

        Args:
            max_norm: the largest total L2 norm of all gradients.
        """
        if not max_norm > 0:
            raise ConfigError(f"FSDPGradientClip max_norm={max_norm} must be > 0")
        self.max_norm = max_norm

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        root = trainer.strategy.model  # the FSDP-wrapped root under FSDPStrategy, else the module itself
        if hasattr(root, "clip_grad_norm_"):
            root.clip_grad_norm_(self.max_norm)
        else:
            torch.nn.utils.clip_grad_norm_(pl_module.parameters(), self.max_norm)
