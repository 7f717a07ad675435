"""Token sampling: CFG mix, temperature, top-k / top-p / min-p filtering and a Gumbel-max draw.

The torch path is the specification, applied in this order:
1. mix: `u + s * (c - u)` when unconditional logits are given (classifier-free guidance, s per row);
2. temperature: logits / T (T = 0 means greedy argmax);
3. filters, each on the distribution left by the previous one: top-k (keep logits >= the k-th
   largest), top-p (keep every token whose strictly more likely tokens hold less than p of the mass:
   the smallest most-likely set reaching p, with ties kept together), min-p (keep tokens with
   probability >= min_p * max probability);
4. draw: argmax(logits + Gumbel noise), an exact sample from softmax(logits), seeded by a generator.

The Triton path (`triton_sample.py`) fuses all four steps in one program per row; its support equals
this reference's exactly and its draws follow the same distribution (a different random stream).
"""

from __future__ import annotations

import torch

from mmar.kernels.dispatch import resolve_impl

MAX_VOCAB = 1 << 17  # the Triton kernel holds one row in one program


def filter_logits(
    logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0
) -> torch.Tensor:
    """Set the logits of filtered-out tokens to -inf. logits [B, V] -> [B, V]."""
    logits = logits.float()
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # (B, V) mass of the tokens sorted before each one
        ascending = -sorted_logits.contiguous()
        first_of_tie = torch.searchsorted(ascending, ascending)  # ties share the mass before the first
        drop_sorted = mass_before.gather(-1, first_of_tie) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if min_p > 0.0:
        ratio = (logits - logits.amax(-1, keepdim=True)).exp()  # p / p_max
        logits = logits.masked_fill(ratio < min_p, float("-inf"))
    return logits


def cfg_mix(cond: torch.Tensor, uncond: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance on logits: u + s (c - u); `scale` is a float or per-row [B]."""
    if torch.is_tensor(scale) and scale.ndim == 1:
        scale = scale[:, None]
    return (scale * (cond - uncond)).add_(uncond)  # uncond + ..., adding into the fresh product


def sample_reference(
    logits: torch.Tensor,
    uncond_logits: torch.Tensor | None = None,
    cfg_scale: float | torch.Tensor = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The specification of `sample` (see module docstring). logits [B, V] -> ids [B]."""
    logits = logits.float()
    if uncond_logits is not None:
        logits = cfg_mix(logits, uncond_logits.float(), cfg_scale)
    if temperature == 0:
        return logits.argmax(-1)
    if temperature != 1:  # x / 1 == x: the division would only cost a pass over [B, V]
        logits = logits / temperature
    logits = filter_logits(logits, top_k, top_p, min_p)
    # in place on the fresh noise: the same values as -log(-log(u)) + logits, without four [B, V] temporaries
    gumbel = torch.rand(logits.shape, generator=generator, device=logits.device)  # (B, V)
    gumbel = gumbel.clamp_min_(1e-20).log_().neg_().log_().neg_()
    return gumbel.add_(logits).argmax(-1)


def sample(
    logits: torch.Tensor,
    uncond_logits: torch.Tensor | None = None,
    cfg_scale: float | torch.Tensor = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    generator: torch.Generator | None = None,
    impl: str = "auto",
) -> torch.Tensor:
    """Pick one token per row. logits [B, V] (and uncond_logits [B, V] for CFG) -> ids [B] (long).

    Args:
        logits: conditional logits.
        uncond_logits: unconditional logits; when given, logits are mixed as u + s (c - u).
        cfg_scale: guidance scale s, a float or a per-row tensor [B].
        temperature: softmax temperature; 0 picks the argmax.
        top_k: keep the k most likely tokens (0 = off).
        top_p: nucleus mass (1.0 = off).
        min_p: keep tokens with probability >= min_p * max probability (0 = off).
        generator: a seeded torch.Generator on the logits' device for reproducible draws.
        impl: "auto" (Triton on CUDA) | "torch" | "triton".
    """
    if temperature < 0 or not 0 < top_p <= 1 or not 0 <= min_p <= 1 or top_k < 0:
        raise ValueError(
            f"invalid sampling settings temperature={temperature}, top_k={top_k}, top_p={top_p}, "
            f"min_p={min_p}: need temperature >= 0, top_k >= 0, 0 < top_p <= 1, 0 <= min_p <= 1"
        )
    tensors = [logits] if uncond_logits is None else [logits, uncond_logits]
    too_wide = logits.shape[-1] > MAX_VOCAB
    problem = f"vocabulary {logits.shape[-1]} is wider than one program's {MAX_VOCAB}" if too_wide else None
    if resolve_impl(impl, *tensors, problem=problem) == "torch" or temperature == 0:
        return sample_reference(logits, uncond_logits, cfg_scale, temperature, top_k, top_p, min_p, generator)
    from mmar.kernels import triton_sample

    device = logits.device if generator is None else generator.device
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=device))  # reproducible draws
    return triton_sample.sample(logits, uncond_logits, cfg_scale, temperature, top_k, top_p, min_p, seed)
