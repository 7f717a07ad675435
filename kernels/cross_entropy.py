"""Cross-entropy of hidden states against a vocabulary matrix: `linear_cross_entropy(h, W, y)`.

Heads call this instead of materialising logits and calling `F.cross_entropy`, so that a fused kernel
(Cut Cross-Entropy style) can replace the reference without touching the units. The reference computes
logits in chunks of rows and recomputes them in backward (activation checkpointing), so peak memory is
one chunk of logits rather than the full [N, V] matrix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from mmar.kernels.dispatch import resolve_impl


def _chunk_loss(h, weight, bias, targets, ignore_index: int, z_loss: float):
    logits = F.linear(h, weight, bias).float()  # (n, V) <- the largest tensor of the step
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    if z_loss:
        valid = targets != ignore_index
        loss = loss + z_loss * (torch.logsumexp(logits, -1)[valid] ** 2).sum()
    return loss


def linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    chunk_size: int = 4096,
) -> torch.Tensor:
    """Mean cross-entropy (+ z_loss * mean logsumexp^2) over targets != ignore_index."""
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)  # (N, D), (N,)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.shape[0], chunk_size):
        args = (hidden[start : start + chunk_size], weight, bias, targets[start : start + chunk_size])
        if torch.is_grad_enabled() and hidden.shape[0] > chunk_size:
            total = total + checkpoint(_chunk_loss, *args, ignore_index, z_loss, use_reentrant=False)
        else:
            total = total + _chunk_loss(*args, ignore_index, z_loss)
    return total / (targets != ignore_index).sum().clamp_min(1)


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    impl: str = "auto",
) -> torch.Tensor:
    """Cross-entropy of `hidden @ weight.T (+ bias)` against `targets` without keeping [N, V] logits.

    Args:
        hidden: [..., D] hidden states.
        weight: [V, D] output embedding.
        targets: [...] class ids; entries equal to `ignore_index` are left out of the mean.
        bias: optional [V].
        ignore_index: target value that contributes no loss.
        z_loss: weight of the mean squared log-partition (PaLM's z-loss); 0 disables it.
        impl: "auto" | "torch".
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} do not match")
    resolve_impl(impl, ("torch",))
    return linear_cross_entropy_reference(hidden, weight, targets, bias, ignore_index, z_loss)
