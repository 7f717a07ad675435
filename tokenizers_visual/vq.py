"""VQ image tokenizer: VQGAN's conv autoencoder (Esser et al., 2021) with LlamaGen's codebook (Sun et al.,
2024, "Autoregressive Model Beats Diffusion"), optionally residual (RQ-VAE, Lee et al., 2022).

The encoder's features are projected to a low-dimensional space (`codebook_dim`, 8 by default) and
l2-normalised before the nearest-code lookup, so codes are compared by cosine similarity; LlamaGen shows
this keeps codebook usage near 100% even for 16k codes. The codebook is updated by EMA
(`vector_quantize_pytorch.VectorQuantize`); codes whose EMA usage falls below `threshold_ema_dead_code`
are re-seeded from encoder outputs of the current batch, which also initialises the codebook from data
on the first step. The commitment loss (weight 0.25) pulls the encoder towards its codes. Unlike LlamaGen,
whose codebook is learned by gradient, the codebook here is an EMA of the l2-normalised encoder outputs
(vector_quantize_pytorch has no learnable cosine-similarity codebook). Images are in [-1, 1].

With `num_quantizers` Q > 1 the quantiser is `vector_quantize_pytorch.ResidualVQ` with the same codebook
settings: the projected feature x is quantised by the first codebook, the residual x - c1 by the second,
and so on; the quantised feature is the projection back of c1 + ... + cQ, and each grid cell gets Q ids
(tokens [B, h, w, Q], `token_shape = (Q,)`), as in RQ-VAE. Every level compares directions (cosine
similarity) and adds a unit-norm code, so a level refines a residual r only where r . c > 1/2: the encoder
learns latents long enough for Q unit steps (norm ~3.3 for Q = 2 on the digits, where the latent error
halves at each level and a Euclidean codebook reconstructs no better).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from vector_quantize_pytorch import ResidualVQ, VectorQuantize

from mmar.tokenizer import register_tokenizer
from tokenizers_visual.quantized import QuantizedTokenizer, require


def nearest_codes(codebook: torch.Tensor, delta: int) -> torch.Tensor:
    """Codebook [K, d] -> ids [K, delta] of each code's delta nearest other codes (cosine similarity)."""
    codes = F.normalize(codebook.float(), dim=-1)
    sims = codes @ codes.T  # (K, K)
    sims.fill_diagonal_(-float("inf"))  # a code is never its own replacement
    return sims.topk(delta, dim=-1).indices  # (K, delta)


def perturb_ids(
    ids: torch.Tensor,
    neighbours: torch.Tensor,
    alpha: float,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace tokens by random near neighbours of their codes.

    Args:
        ids: code ids [B, h, w].
        neighbours: [K, delta] candidate replacements of each code (`nearest_codes`).
        alpha: share of the tokens of a perturbed image that are replaced (round(alpha * h * w) of them).
        beta: share of the images that are perturbed (round(beta * B) of them, chosen at random).
        generator: a CPU random generator (for reproducible pFID); draws happen on the CPU.

    Returns:
        perturbed ids [B, h, w] and the bool mask [B, h, w] of replaced tokens.
    """
    b, n = ids.shape[0], ids[0].numel()
    flat = ids.reshape(b, n)
    images = torch.randperm(b, generator=generator)[: round(beta * b)]  # which images
    tokens = torch.rand(len(images), n, generator=generator).argsort(dim=-1)[:, : round(alpha * n)]
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask[images[:, None], tokens] = True  # (B, N)
    pick = torch.randint(neighbours.shape[1], (b, n), generator=generator).to(ids.device)
    replaced = neighbours.to(ids.device)[flat, pick]  # (B, N): a uniform draw among each code's neighbours
    mask = mask.to(ids.device)
    return torch.where(mask, replaced, flat).reshape(ids.shape), mask.reshape(ids.shape)


@register_tokenizer
class VQTokenizer(QuantizedTokenizer):
    """Discrete image tokenizer: images [B, C, H, W] <-> code ids [B, H / f, W / f], f = `downsample`
    ([B, H / f, W / f, Q] with `num_quantizers` Q > 1).

    A subclass that perturbs the quantised latents (RobusTok) overrides `perturb_latents`, which `forward`
    calls on (features, quantised features, ids) after the commitment loss and before the decoder.

    Args:
        in_channels: image channels (1 for grayscale, 3 for RGB).
        ch: base channel count of the encoder/decoder.
        ch_mult: channel multiplier per resolution; downsampling factor is 2 ** (len(ch_mult) - 1).
        num_res_blocks: ResBlocks per resolution.
        z_channels: channels of the encoder output / decoder input.
        codebook_size: number of codes (per level; the vocabulary of the generator).
        codebook_dim: dimension of the l2-normalised codes (LlamaGen: 8).
        commitment_weight: weight of the commitment loss (VQ-VAE / LlamaGen: 0.25), summed over levels.
        decay: EMA decay of the codebook update.
        threshold_ema_dead_code: codes whose EMA count of assignments per batch drops below this are
            re-seeded from the batch's encoder outputs (0 disables); keep it well below the average
            count, tokens per batch / codebook_size, or healthy codes get replaced too.
        num_quantizers: residual levels Q; 1 is plain VQ (ids [B, h, w]), Q > 1 residual VQ with a
            codebook per level (ids [B, h, w, Q]).
    """

    name = "vq"

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
        num_quantizers: int = 1,
    ):
        require(codebook_size >= 1, f"codebook_size must be >= 1, got {codebook_size}; e.g. 16384")
        require(
            num_quantizers >= 1,
            f"num_quantizers must be >= 1 (1: plain VQ, > 1: residual VQ), got {num_quantizers}",
        )
        super().__init__(
            in_channels,
            ch,
            ch_mult,
            num_res_blocks,
            z_channels,
            codebook_size=codebook_size,
            codebook_dim=codebook_dim,
            commitment_weight=commitment_weight,
            decay=decay,
            threshold_ema_dead_code=threshold_ema_dead_code,
            num_quantizers=num_quantizers,
        )
        self.vocab_size = codebook_size
        self.num_quantizers = num_quantizers
        self.token_shape = (num_quantizers,) if num_quantizers > 1 else ()
        codebook = {
            "dim": z_channels,
            "codebook_size": codebook_size,
            "codebook_dim": codebook_dim,  # project z_channels -> codebook_dim before the lookup
            "use_cosine_sim": True,  # l2-normalised codes and inputs (LlamaGen)
            "commitment_weight": commitment_weight,
            "decay": decay,
            "threshold_ema_dead_code": threshold_ema_dead_code,
        }
        # Q = 1 keeps the plain VectorQuantize (and its state-dict keys) of tokenizers saved before RVQ.
        self.quantizer = (
            ResidualVQ(num_quantizers=num_quantizers, **codebook)
            if num_quantizers > 1
            else VectorQuantize(**codebook)
        )

    def _quantize_tokens(
        self, tokens: torch.Tensor, freeze_codebook: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zq, ids, aux_loss = self.quantizer(tokens, freeze_codebook=freeze_codebook)  # [B, N, Z], [B, N(, Q)]
        return zq, ids, aux_loss.sum()  # RVQ: one commitment loss per level, summed

    def _codes_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.quantizer.get_output_from_indices(ids)  # [B, N(, Q)] -> [B, N, Z]

    @property
    def can_perturb(self) -> bool:
        """Whether `perturb_ids` applies: RobusTok's perturbation replaces codes of a single codebook."""
        return self.num_quantizers == 1

    def perturb_ids(
        self, ids: torch.Tensor, alpha: float, delta: int, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Ids [B, h, w] with round(alpha * h * w) tokens of every image replaced by a uniform draw among
        the `delta` codes nearest to each (RobusTok's perturbation; the pFID of `mmar.eval`)."""
        return perturb_ids(ids, nearest_codes(self.quantizer.codebook, delta), alpha, 1.0, generator)[0]
