"""Cross-entropy of hidden states against a vocabulary matrix: `linear_cross_entropy(h, W, y)`.

Heads call this instead of materialising logits and calling `F.cross_entropy`. Neither path keeps the
[N, V] logits:
- torch (reference, CPU): logits in chunks of rows (about LOGITS_PER_CHUNK values each), recomputed in
  backward (activation checkpointing), so peak memory is one chunk of logits, not the full matrix;
- triton (Cut Cross-Entropy style, `triton_cross_entropy.py`): logits exist only as register tiles,
  in a forward log-sum-exp and a backward that recomputes them.
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


LOGITS_PER_CHUNK = 1 << 21  # torch path: rows per chunk = this / V (8 MiB of fp32 logits)


def linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    z_loss: float = 0.0,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Mean cross-entropy (+ z_loss * mean logsumexp^2) over targets != ignore_index."""
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)  # (N, D), (N,)
    chunk_size = chunk_size or max(16, LOGITS_PER_CHUNK // weight.shape[0])
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
        impl: "auto" (Triton on CUDA) | "torch" | "triton".
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} do not match")
    if weight.ndim != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"weight {tuple(weight.shape)} must be [V, {hidden.shape[-1]}] to match hidden states"
        )
    tensors = [hidden, weight] + ([] if bias is None else [bias])
    same = hidden.dtype == weight.dtype and hidden.dtype in (torch.float16, torch.bfloat16, torch.float32)
    problem = None if same else f"hidden {hidden.dtype} and weight {weight.dtype} must share a float dtype"
    if resolve_impl(impl, *tensors, problem=problem) == "torch":
        return linear_cross_entropy_reference(hidden, weight, targets, bias, ignore_index, z_loss)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets.reshape(-1), ignore_index, z_loss)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, z_loss):
        from mmar.kernels import triton_cross_entropy

        lse = triton_cross_entropy.log_sum_exp(hidden, weight, bias)  # (N,)
        valid = targets != ignore_index
        safe = torch.where(valid, targets, 0)
        target_logit = (hidden.float() * weight[safe].float()).sum(-1)  # (N,): O(N D), no [N, V]
        if bias is not None:
            target_logit = target_logit + bias[safe].float()
        per_row = lse - target_logit + z_loss * lse.square()
        count = valid.sum().clamp_min(1)
        ctx.save_for_backward(hidden, weight, bias, safe, valid, lse)
        ctx.z_loss, ctx.count = z_loss, count
        return torch.where(valid, per_row, 0.0).sum() / count

    @staticmethod
    def backward(ctx, grad):
        from mmar.kernels import triton_cross_entropy

        hidden, weight, bias, safe, valid, lse = ctx.saved_tensors
        row_weight = valid.float() * (grad.float() / ctx.count)  # d loss / d per-row loss
        coef = (row_weight * (1 + 2 * ctx.z_loss * lse)).contiguous()  # softmax's factor (with z-loss)
        dh, dw, db = triton_cross_entropy.softmax_grads(hidden, weight, bias, lse, coef)
        dh -= row_weight[:, None] * weight[safe].float()  # the one-hot part: - w_i W[y_i]
        dw.index_add_(0, safe, -row_weight[:, None] * hidden.float())
        db.index_add_(0, safe, -row_weight)
        grads_bias = None if bias is None else db.to(bias.dtype)
        return dh.to(hidden.dtype), dw.to(weight.dtype), grads_bias, None, None, None
