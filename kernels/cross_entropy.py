"""Cross-entropy of hidden states against a vocabulary matrix: `linear_cross_entropy(h, W, y)`.

Heads call this instead of materialising logits and calling `F.cross_entropy`. Both paths share one
autograd function that never keeps the [N, V] logits: the forward saves each row's log-sum-exp, the
target logit is an O(N D) gather, and the backward recomputes the logits to form the softmax part of
the gradient (the one-hot part is an `index_add`). The engines differ in how they tile the logits:
- torch (CPU): blocks of rows holding about LOGITS_PER_CHUNK logits, gradients accumulated in place;
- triton (Cut Cross-Entropy style, `triton_cross_entropy.py`): register tiles, atomics into dh and dW.
`linear_cross_entropy_reference` is the plain formula (the specification, full logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmar.kernels.dispatch import resolve_impl

LOGITS_PER_CHUNK = 1 << 21  # torch engine: rows per chunk = this / V (8 MiB of fp32 logits)


def linear_cross_entropy_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    z_loss: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy (+ z_loss * mean logsumexp^2) over targets != ignore_index, from full logits."""
    logits = F.linear(hidden.reshape(-1, hidden.shape[-1]), weight, bias).float()  # (N, V)
    targets = targets.reshape(-1)
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index)
    if z_loss:
        loss = loss + z_loss * (torch.logsumexp(logits, -1)[targets != ignore_index] ** 2).mean()
    return loss


class TorchEngine:
    """The row-chunked torch tiling of the two passes over the logits."""

    @staticmethod
    def chunks(hidden: torch.Tensor, weight: torch.Tensor):
        rows = max(16, LOGITS_PER_CHUNK // weight.shape[0])
        return [slice(i, i + rows) for i in range(0, hidden.shape[0], rows)]

    @staticmethod
    def log_sum_exp(hidden, weight, bias) -> torch.Tensor:
        parts = [
            torch.logsumexp(F.linear(hidden[r], weight, bias).float(), -1)
            for r in TorchEngine.chunks(hidden, weight)
        ]
        return torch.cat(parts)

    @staticmethod
    def softmax_grads(hidden, weight, bias, lse, coef):
        """fp32 (sum_v P W_v, sum_i P h_i, sum_i P) for P = softmax(logits) * coef[:, None]."""
        dh = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device)
        dw = torch.zeros(weight.shape, dtype=torch.float32, device=hidden.device)
        db = torch.zeros(weight.shape[0], dtype=torch.float32, device=hidden.device)
        for r in TorchEngine.chunks(hidden, weight):
            p = (F.linear(hidden[r], weight, bias).float() - lse[r, None]).exp_().mul_(coef[r, None])
            dh[r] = p @ weight.float()
            dw.addmm_(p.T, hidden[r].float())
            db += p.sum(0)
        return dh, dw, db


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, ignore_index, z_loss, engine):
        lse = engine.log_sum_exp(hidden, weight, bias)  # (N,)
        valid = targets != ignore_index
        safe = torch.where(valid, targets, 0)
        target_logit = (hidden.float() * weight[safe].float()).sum(-1)  # (N,): O(N D), no [N, V]
        if bias is not None:
            target_logit = target_logit + bias[safe].float()
        per_row = lse - target_logit + z_loss * lse.square()
        count = valid.sum().clamp_min(1)
        ctx.save_for_backward(hidden, weight, bias, safe, valid, lse)
        ctx.z_loss, ctx.count, ctx.engine = z_loss, count, engine
        return torch.where(valid, per_row, 0.0).sum() / count

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, safe, valid, lse = ctx.saved_tensors
        row_weight = valid.float() * (grad.float() / ctx.count)  # d loss / d per-row loss
        coef = (row_weight * (1 + 2 * ctx.z_loss * lse)).contiguous()  # softmax's factor (with z-loss)
        dh, dw, db = ctx.engine.softmax_grads(hidden, weight, bias, lse, coef)
        dh -= row_weight[:, None] * weight[safe].float()  # the one-hot part: - w_i W[y_i]
        dw.index_add_(0, safe, -row_weight[:, None] * hidden.float())
        db.index_add_(0, safe, -row_weight)
        grad_bias = None if bias is None else db.to(bias.dtype)
        return dh.to(hidden.dtype), dw.to(weight.dtype), grad_bias, None, None, None, None


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
        engine = TorchEngine
    else:
        from mmar.kernels import triton_cross_entropy as engine
    hidden = hidden.reshape(-1, hidden.shape[-1])
    hidden = hidden if hidden.stride(-1) == 1 else hidden.contiguous()
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets.reshape(-1), ignore_index, z_loss, engine)
