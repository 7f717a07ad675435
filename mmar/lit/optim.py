"""AdamW with linear warmup and a cosine or constant schedule, shared by the LightningModules."""

from __future__ import annotations

import math

import torch
from torch import nn

from mmar.errors import ConfigError

LR_SCHEDULES = ("cosine", "constant")


def check_optimizer_settings(
    lr: float, betas, weight_decay: float, warmup_steps: int, lr_schedule: str, min_lr_ratio: float
) -> None:
    """ConfigError (one line naming the field) for settings no optimiser can run with; at construction,
    so a bad number fails before any data is read, not as a torch traceback at the first step."""
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"model.init_args.lr={lr} must be a positive number (e.g. 3e-4)")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(
            f"model.init_args.betas={list(betas)} must be two numbers in [0, 1) (e.g. [0.9, 0.95])"
        )
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ConfigError(f"model.init_args.weight_decay={weight_decay} must be >= 0 (e.g. 0.05)")
    if warmup_steps < 0:
        raise ConfigError(f"model.init_args.warmup_steps={warmup_steps} must be >= 0")
    if lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"unknown lr_schedule '{lr_schedule}'; choose one of {LR_SCHEDULES}")
    if not 0 <= min_lr_ratio <= 1:
        raise ConfigError(f"model.init_args.min_lr_ratio={min_lr_ratio} must lie in [0, 1]")


def warmup_schedule(step: int, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to `min_ratio` (or constant 1)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw(module: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and conv kernels only (not on norms, biases or gains)."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


class WarmupSchedule(torch.optim.lr_scheduler.LambdaLR):
    """Per-step LambdaLR applying `warmup_schedule`; its checkpoint state records `total_steps`, and
    resuming a cosine schedule under a different total is refused: the cosine would silently stretch
    or jump. A constant schedule does not depend on the total, so it may be resumed with any."""

    def __init__(self, optimizer, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float):
        self.total_steps, self.schedule = total_steps, schedule
        super().__init__(
            optimizer, lambda step: warmup_schedule(step, warmup_steps, total_steps, schedule, min_lr_ratio)
        )

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get("total_steps", self.total_steps)
        if self.schedule == "cosine" and saved != self.total_steps:
            raise ConfigError(
                f"the checkpoint's lr schedule spans {saved} steps but this run has {self.total_steps}; "
                f"resume with --trainer.max_steps={saved} (the schedule cannot change length mid-run), "
                "or start a new run from the checkpoint's weights"
            )
        super().load_state_dict({**state_dict, "total_steps": self.total_steps})


def scheduled(optimizer, warmup_steps: int, total_steps: int, schedule: str, min_lr_ratio: float = 0.1):
    """A per-step `WarmupSchedule` applying `warmup_schedule` to `optimizer`."""
    if schedule not in LR_SCHEDULES:
        raise ConfigError(f"unknown lr_schedule '{schedule}'; choose one of {LR_SCHEDULES}")
    return WarmupSchedule(optimizer, warmup_steps, total_steps, schedule, min_lr_ratio)


def adamw_with_schedule(
    module: nn.Module,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    warmup_steps: int,
    total_steps: int,
    schedule: str = "cosine",
    min_lr_ratio: float = 0.1,
) -> dict:
    """Lightning optimiser config: AdamW + per-step warmup and cosine/constant schedule."""
    optimizer = adamw(module, lr, betas, weight_decay)
    scheduler = scheduled(optimizer, warmup_steps, total_steps, schedule, min_lr_ratio)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def configure_adamw(module, trainable: nn.Module):
    """`adamw_with_schedule` of `trainable` from a LightningModule's hyper-parameters (lr, betas,
    weight_decay, warmup_steps, lr_schedule, min_lr_ratio) over its trainer's total steps."""
    hp = module.hparams
    total = module.trainer.estimated_stepping_batches
    return adamw_with_schedule(
        trainable, hp.lr, hp.betas, hp.weight_decay, hp.warmup_steps, total, hp.lr_schedule, hp.min_lr_ratio
    )
