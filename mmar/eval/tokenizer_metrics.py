"""Tokenizer metrics in one place: codebook usage, PSNR, SSIM, the reconstruction Fréchet distance and its
perturbed variant (pFID) for VQ tokenizers.

Codebook usage follows LlamaGen (Sun et al., 2024): the fraction of codes that occur among the most
recently produced code ids — not the perplexity of the code distribution. SSIM is torchmetrics' Gaussian
SSIM (Wang et al. 2004). The reconstruction Fréchet distance (rFID-style) compares features of
reconstructions with features of the originals; with the embedded digits classifier's features it is an
embedded metric, not Inception rFID. Videos are scored frame by frame.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics.functional.image import structural_similarity_index_measure

from mmar.eval.frechet import feature_statistics, frechet_distance


class CodebookUsage(nn.Module):
    """Fraction of the codebook used by the most recent `buffer_size` code ids.

    The ids live in a ring buffer (a non-persistent module buffer, so it follows the module's device and
    stays out of checkpoints); `update` overwrites the oldest entries, so codes that stop occurring are
    forgotten after `buffer_size` newer ids.

    Args:
        codebook_size: number of codes.
        buffer_size: how many of the most recent ids are kept.
    """

    def __init__(self, codebook_size: int, buffer_size: int = 65536):
        super().__init__()
        if codebook_size < 1 or buffer_size < 1:
            raise ValueError(
                f"codebook_size and buffer_size must be >= 1, got {codebook_size}, {buffer_size}"
            )
        self.codebook_size = codebook_size
        self.buffer_size = buffer_size
        self.register_buffer("ids", torch.full((buffer_size,), -1, dtype=torch.long), persistent=False)
        self.pos = 0  # next slot to write
        self.count = 0  # ids written so far (capped at buffer_size)

    @torch.no_grad()
    def update(self, indices: torch.Tensor) -> None:
        """Append code ids of any shape (e.g. [B, h, w]); the oldest ids are dropped when full."""
        flat = indices.detach().reshape(-1).to(self.ids.device, torch.long)[-self.buffer_size :]  # [N]
        n = flat.numel()
        if n == 0:
            return
        slots = (self.pos + torch.arange(n, device=self.ids.device)) % self.buffer_size  # [N]
        self.ids[slots] = flat
        self.pos = (self.pos + n) % self.buffer_size
        self.count = min(self.count + n, self.buffer_size)

    @torch.no_grad()
    def compute(self) -> float:
        """Unique codes in the buffer / codebook_size (0.0 before any update)."""
        ids = self.ids[: self.count] if self.count < self.buffer_size else self.ids  # [N]
        if ids.numel() == 0:
            return 0.0
        used = torch.bincount(ids, minlength=self.codebook_size)[: self.codebook_size] > 0  # [V]
        return used.sum().item() / self.codebook_size

    def reset(self) -> None:
        """Forget all ids."""
        self.ids.fill_(-1)
        self.pos = 0
        self.count = 0


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the per-image PSNR (dB) of images [B, ...] in [-1, 1] (clamped first).

    The peak-to-peak range is 2, so PSNR = 10 log10(4 / MSE); identical images give 100 dB (MSE floored
    at 4e-10).
    """
    x, y = x.detach().float().clamp(-1, 1), y.detach().float().clamp(-1, 1)
    mse = (x - y).pow(2).flatten(1).mean(dim=1).clamp_min(4e-10)  # [B]
    return (10 * torch.log10(4.0 / mse)).mean()


def as_frames(x: torch.Tensor) -> torch.Tensor:
    """Images [B, C, H, W] as they are; videos [B, C, T, H, W] as frames [B * T, C, H, W]."""
    return x.transpose(1, 2).flatten(0, 1) if x.ndim == 5 else x


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of images (or video frames) in [-1, 1] (clamped first), data range 2."""
    x, y = as_frames(x.detach().float().clamp(-1, 1)), as_frames(y.detach().float().clamp(-1, 1))
    return structural_similarity_index_measure(x, y, data_range=2.0)


def reconstruction_fd(features, originals: torch.Tensor, reconstructions: torch.Tensor) -> float:
    """Fréchet distance between `features(reconstructions)` and `features(originals)` ([N, D] each)."""
    mu_r, sigma_r = feature_statistics(features(reconstructions))
    mu_o, sigma_o = feature_statistics(features(originals))
    return frechet_distance(mu_r, sigma_r, mu_o, sigma_o)


@torch.no_grad()
def perturbed_fd(
    tokenizer,
    features,
    images: torch.Tensor,
    alpha: float,
    delta: int,
    seed: int = 0,
    batch_size: int = 256,
) -> float:
    """pFID-style robustness score (RobusTok, Qiu et al. 2025): the Fréchet distance between
    `features(images)` and the features of decodes of their tokens after a perturbation that replaces
    round(alpha * N) tokens of every image by a uniform draw among the `delta` codes nearest to each
    (the tokenizer's own `perturb_ids`). Works for any tokenizer that has one (single-codebook VQ).

    Args:
        tokenizer: a tokenizer with `perturb_ids(ids, alpha, delta, generator)` (vq, robust_vq).
        features: callable images [N, C, H, W] -> features [N, D] (embedded or Inception features).
        images: [N, C, H, W] in [-1, 1].
        alpha: share of the tokens of each image replaced.
        delta: nearest codes a replacement is drawn from.
        seed: seed of the perturbation (CPU generator), so scores are reproducible.
        batch_size: images encoded and decoded at once.
    """
    if not getattr(tokenizer, "can_perturb", False):
        raise ValueError(
            f"perturbed_fd needs a single-codebook VQ tokenizer (vq, robust_vq), got '{tokenizer.name}'"
        )
    generator = torch.Generator().manual_seed(seed)
    decoded = []
    for x in images.split(batch_size):
        ids = tokenizer.perturb_ids(tokenizer.encode(x), alpha, delta, generator)  # (b, h, w)
        decoded.append(tokenizer.decode(ids).clamp(-1, 1))
    return reconstruction_fd(features, images, torch.cat(decoded))
