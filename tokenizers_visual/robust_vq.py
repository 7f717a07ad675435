"""Robust VQ tokenizer (RobusTok: Qiu et al., 2025, "Robust Latent Matters: Boosting Image Generation with
Sampling Error Synthesis", and "Image Tokenizer Needs Post-Training").

An autoregressive generator samples tokens that are close to, but not exactly, the tokenizer's own codes.
RobusTok trains the decoder on such errors so that its latent space tolerates them:

- **Latent perturbation** (training only, after the codebook losses): a fraction `beta` of the images in
  a batch is perturbed; in each of them round(alpha * N) of the N tokens are replaced, each by a uniform
  draw among the `delta` codes nearest to its own code (cosine similarity of the l2-normalised codes, the
  code itself excluded). Alpha and delta are annealed linearly from their start to their end values
  between the fractions `anneal_start` and `anneal_end` of training (`TokenizerModule` reports the
  progress through `Tokenizer.set_progress`).
- **Decoder post-training**: the encoder frozen, the decoder learns to reconstruct each image from tokens
  a trained generator produced for it under teacher forcing with probability sigma
  (`scripts/make_post_train_pairs.py`, then `TokenizerModule(trainable="decoder")`).
- **pFID**: the Fréchet distance of reconstructions from perturbed tokens against the originals
  (`mmar.eval.tokenizer_metrics.perturbed_fd`), which tracks generation quality better than rFID.

mmar replaces an exact count of tokens per perturbed image (round(alpha * N)) where the paper draws each
token with probability alpha: the same expectation with less variance, and a count tests can check.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmar.tokenizer import register_tokenizer
from tokenizers_visual.quantized import require
from tokenizers_visual.vq import VQTokenizer, nearest_codes, perturb_ids


def annealed(start: float, end: float, progress: float, anneal_start: float, anneal_end: float) -> float:
    """Linear from `start` (progress <= anneal_start) to `end` (progress >= anneal_end)."""
    if anneal_end <= anneal_start:
        return end if progress >= anneal_start else start
    frac = min(max((progress - anneal_start) / (anneal_end - anneal_start), 0.0), 1.0)
    return start + frac * (end - start)


@register_tokenizer
class RobustVQTokenizer(VQTokenizer):
    """VQ tokenizer trained with RobusTok's latent perturbation; encode/decode are plain VQ.

    Args (beyond `VQTokenizer`'s):
        alpha: share of tokens replaced in a perturbed image, at the start of the annealing.
        alpha_end: the same at its end.
        delta: number of nearest codes a replacement is drawn from, at the start of the annealing.
        delta_end: the same at its end.
        beta: share of the images of a training batch that are perturbed.
        num_quantizers: must be 1: the perturbation replaces codes of a single codebook.
        anneal_start: fraction of training where the annealing of alpha and delta starts.
        anneal_end: fraction of training where it ends (then alpha_end and delta_end hold).
    """

    name = "robust_vq"

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        codebook_size: int = 16384,
        codebook_dim: int = 8,
        commitment_weight: float = 0.25,
        decay: float = 0.8,
        threshold_ema_dead_code: float = 2.0,
        alpha: float = 0.5,
        alpha_end: float = 0.1,
        delta: int = 32,
        delta_end: int = 4,
        beta: float = 0.5,
        anneal_start: float = 0.0,
        anneal_end: float = 1.0,
        num_quantizers: int = 1,
    ):
        require(num_quantizers == 1, f"robust_vq perturbs one codebook; got num_quantizers={num_quantizers}")
        for field, value in {"alpha": alpha, "alpha_end": alpha_end, "beta": beta}.items():
            require(0.0 <= value <= 1.0, f"{field}={value} must lie in [0, 1] (a share of tokens or images)")
        for field, value in {"delta": delta, "delta_end": delta_end}.items():
            require(
                isinstance(value, int) and 1 <= value < codebook_size,
                f"{field}={value} must be an integer in [1, codebook_size={codebook_size}): the number "
                "of nearest other codes a replacement is drawn from",
            )
        require(
            0.0 <= anneal_start <= anneal_end <= 1.0,
            f"need 0 <= anneal_start <= anneal_end <= 1, got {anneal_start} and {anneal_end}",
        )
        super().__init__(
            in_channels=in_channels,
            ch=ch,
            ch_mult=ch_mult,
            num_res_blocks=num_res_blocks,
            z_channels=z_channels,
            codebook_size=codebook_size,
            codebook_dim=codebook_dim,
            commitment_weight=commitment_weight,
            decay=decay,
            threshold_ema_dead_code=threshold_ema_dead_code,
        )
        self.schedule = {
            "alpha": alpha,
            "alpha_end": alpha_end,
            "delta": delta,
            "delta_end": delta_end,
            "beta": beta,
            "anneal_start": anneal_start,
            "anneal_end": anneal_end,
        }
        self.config.update(self.schedule)
        self.progress = 0.0

    def set_progress(self, progress: float) -> None:
        self.progress = float(progress)  # drives the annealing of alpha and delta

    def perturbation(self, progress: float | None = None) -> tuple[float, int]:
        """(alpha, delta) at a fraction of training (default: the current one)."""
        s, p = self.schedule, self.progress if progress is None else progress
        alpha = annealed(s["alpha"], s["alpha_end"], p, s["anneal_start"], s["anneal_end"])
        delta = annealed(s["delta"], s["delta_end"], p, s["anneal_start"], s["anneal_end"])
        return alpha, round(delta)

    def perturb_latents(
        self, z: torch.Tensor, zq: torch.Tensor, ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """In training mode, replace tokens of a share of the images by near codes (see module doc)."""
        alpha, delta = self.perturbation()
        if not self.training or alpha == 0 or self.schedule["beta"] == 0:
            return zq, ids
        with torch.no_grad():
            neighbours = nearest_codes(self.quantizer.codebook, delta)  # (K, delta)
            new_ids, mask = perturb_ids(ids, neighbours, alpha, self.schedule["beta"])
        # replaced tokens get their new code (no gradient to the encoder through them)
        zq = torch.where(mask[:, None], self.codes_from_ids(new_ids).to(zq.dtype), zq)  # (B, Z, h, w)
        return zq, ids
