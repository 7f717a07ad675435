"""Non-finite training: a NaN/inf loss or gradient stops training (or skips the step), and no checkpoint
with NaN/inf weights is ever written or loaded.

`NonFiniteGuard` is a Lightning callback that `mmar fit` always adds (configured under `nonfinite:` in
YAML or `--nonfinite.action skip` on the command line); Python users add it to `Trainer(callbacks=...)`.
It checks the gradients right before each optimizer step, so a bad step is caught before it reaches the
weights: the weights at the moment training stops are the last finite ones. A NaN/inf loss always gives
non-finite gradients, so checking the gradients covers the loss too.
"""

from __future__ import annotations

import logging

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from mmar.errors import ConfigError

log = logging.getLogger(__name__)

NONFINITE_ACTIONS = ("stop", "skip")


class NonFiniteLossError(ConfigError):
    """Training went NaN/inf: a setting to change (learning rate, clipping), named in the message."""


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors in `tensors` holding a NaN or inf (one device sync)."""
    named = [(name, t) for name, t in tensors.items() if torch.is_tensor(t) and t.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).cpu()
    return [name for (name, _), ok in zip(named, finite.tolist(), strict=True) if not ok]


def check_finite_weights(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """ConfigError naming `source` when any weight is NaN/inf (a diverged run's checkpoint)."""
    bad = nonfinite_tensors(state_dict)
    if bad:
        raise ConfigError(
            f"'{source}' has NaN/inf weights in {len(bad)} tensor(s) (e.g. {bad[0]}): the run diverged; "
            "retrain with a lower model.init_args.lr or use an earlier checkpoint"
        )


class NonFiniteGuard(Callback):
    def __init__(self, action: str = "stop", max_skips: int = 10):
        """Stops (or skips) training steps whose loss or gradients are NaN/inf.

        Args:
            action: "stop" ends training with a one-line error naming the step; "skip" drops the step's
                update (the optimizer sees no gradients) and goes on.
            max_skips: with "skip", this many non-finite steps in a row still stop training (the run has
                diverged, skipping would only spin).
        """
        if action not in NONFINITE_ACTIONS:
            raise ConfigError(f"nonfinite.action='{action}' is unknown; choose one of {NONFINITE_ACTIONS}")
        if not isinstance(max_skips, int) or max_skips < 1:
            raise ConfigError(f"nonfinite.max_skips={max_skips} must be at least 1")
        self.action, self.max_skips = action, max_skips
        self.num_skipped = 0  # steps skipped in this run
        self._in_a_row = 0

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        if getattr(trainer.precision_plugin, "scaler", None) is not None:
            return  # fp16 with a GradScaler: inf gradients are how it calibrates; it skips those steps itself
        # this optimizer's gradients only: with several (a GAN's), another's are not this step's concern
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grads = {str(i): p.grad for i, p in enumerate(params)}
        finite = trainer.strategy.reduce_boolean_decision(not nonfinite_tensors(grads), all=True)
        if finite:
            self._in_a_row = 0
            return
        self._in_a_row += 1
        if self.action == "stop" or self._in_a_row > self.max_skips:
            lr = pl_module.hparams.get("lr")
            now = f" (now {lr})" if lr is not None else ""
            repeated = f" ({self._in_a_row} steps in a row)" if self.action == "skip" else ""
            raise NonFiniteLossError(
                f"the training loss or its gradients became NaN/inf at step {trainer.global_step}{repeated}; "
                f"training stopped before applying it (no NaN checkpoint): lower model.init_args.lr{now} "
                "or set trainer.gradient_clip_val"
            )
        self.num_skipped += 1
        step, skipped = trainer.global_step, self.num_skipped
        log.warning("skipping step %d: NaN/inf loss or gradients (%d skipped so far)", step, skipped)
        optimizer.zero_grad(set_to_none=True)  # the optimizer updates no parameter without a gradient

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        check_finite_weights(checkpoint.get("state_dict", {}), f"checkpoint at step {trainer.global_step}")

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        # resuming (`mmar fit --ckpt_path`) a diverged checkpoint would only train NaN further
        check_finite_weights(checkpoint.get("state_dict", {}), str(trainer.ckpt_path or "--ckpt_path"))

    def state_dict(self) -> dict:
        return {"num_skipped": self.num_skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.num_skipped = state_dict.get("num_skipped", 0)
