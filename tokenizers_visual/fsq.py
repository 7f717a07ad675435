"""Lookup-free scalar quantisers on VQGAN's conv autoencoder: FSQ (Mentzer et al., 2023, "Finite Scalar
Quantization: VQ-VAE Made Simple") and LFQ (Yu et al., 2023, MAGVIT-v2, "Language Model Beats Diffusion").

FSQ projects each feature to len(levels) dimensions, bounds dimension i with tanh to L_i values and rounds
(straight-through gradient): the implicit codebook is the grid of prod(levels) points, with no codebook
to learn and no auxiliary loss. LFQ projects to `bits` dimensions and keeps only the signs: the code is a
vector in {-1, +1}^bits and its id the binary number of its signs (first dimension most significant);
an entropy loss (confident per token, diverse over the batch) and a commitment loss keep the codes used.
Both come from `vector_quantize_pytorch`; the quantiser runs in fp32 (see `QuantizedTokenizer`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from vector_quantize_pytorch import FSQ, LFQ

from mmar.tokenizer import register_tokenizer
from tokenizers_visual.quantized import QuantizedTokenizer, require


@register_tokenizer
class FSQTokenizer(QuantizedTokenizer):
    """FSQ image tokenizer: images [B, C, H, W] <-> ids [B, H / f, W / f] in [0, prod(levels)).

    Args:
        in_channels: image channels (1 for grayscale, 3 for RGB).
        ch: base channel count of the encoder/decoder.
        ch_mult: channel multiplier per resolution; downsampling factor is 2 ** (len(ch_mult) - 1).
        num_res_blocks: ResBlocks per resolution.
        z_channels: channels of the encoder output / decoder input.
        levels: values per quantised dimension, each >= 3 (the paper's [8, 6, 5] ~ 2^8 codes,
            [8, 5, 5, 5] ~ 2^10, [7, 5, 5, 5, 5] ~ 2^12); the vocabulary is their product.
    """

    name = "fsq"
    vocab_field = "levels"

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        levels: Sequence[int] = (8, 5, 5, 5),
    ):
        levels = [int(level) for level in levels]
        # Level 2 is refused by vector_quantize_pytorch's FSQ grid; binary codes are what LFQ is for.
        require(
            len(levels) > 0 and min(levels) >= 3,
            f"levels must be a non-empty list of integers >= 3, got {levels}; e.g. [8, 5, 5, 5] "
            "(1000 codes), or the lfq tokenizer for binary codes",
        )
        super().__init__(in_channels, ch, ch_mult, num_res_blocks, z_channels, levels=levels)
        self.vocab_size = math.prod(levels)
        self.quantizer = FSQ(levels=levels, dim=z_channels)  # projects z_channels <-> len(levels)

    def _quantize_tokens(
        self, tokens: torch.Tensor, freeze_codebook: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zq, ids = self.quantizer(tokens)  # [B, N, Z], [B, N]
        return zq, ids, tokens.new_zeros(())  # no auxiliary loss

    def _codes_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.quantizer.indices_to_codes(ids)  # [B, N] -> [B, N, Z]


@register_tokenizer
class LFQTokenizer(QuantizedTokenizer):
    """LFQ image tokenizer: images [B, C, H, W] <-> ids [B, H / f, W / f] in [0, 2 ** bits).

    Args:
        in_channels: image channels (1 for grayscale, 3 for RGB).
        ch: base channel count of the encoder/decoder.
        ch_mult: channel multiplier per resolution; downsampling factor is 2 ** (len(ch_mult) - 1).
        num_res_blocks: ResBlocks per resolution.
        z_channels: channels of the encoder output / decoder input.
        bits: quantised dimensions; the vocabulary is 2 ** bits (MAGVIT-v2: 18). The entropy loss
            compares every token with all 2 ** bits codes, so its cost grows with the vocabulary.
        entropy_weight: weight of the entropy loss (MAGVIT-v2: 0.1).
        commitment_weight: weight of the commitment loss, MSE(features, sign codes) (MAGVIT-v2: 0.25).
        diversity_gamma: weight of the batch (codebook) entropy inside the entropy loss, which is
            mean per-token entropy - diversity_gamma * entropy of the batch-averaged code distribution.
    """

    name = "lfq"
    vocab_field = "bits"

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        z_channels: int = 256,
        bits: int = 10,
        entropy_weight: float = 0.1,
        commitment_weight: float = 0.25,
        diversity_gamma: float = 1.0,
    ):
        require(
            isinstance(bits, int) and bits >= 1,
            f"bits must be an integer >= 1 (vocabulary 2 ** bits), got {bits!r}; e.g. 10 (1024 codes)",
        )
        super().__init__(
            in_channels,
            ch,
            ch_mult,
            num_res_blocks,
            z_channels,
            bits=bits,
            entropy_weight=entropy_weight,
            commitment_weight=commitment_weight,
            diversity_gamma=diversity_gamma,
        )
        self.vocab_size = 2**bits
        self.quantizer = LFQ(
            dim=z_channels,  # projects z_channels <-> bits
            codebook_size=2**bits,
            entropy_loss_weight=entropy_weight,
            commitment_loss_weight=commitment_weight,
            diversity_gamma=diversity_gamma,
        )

    def _quantize_tokens(
        self, tokens: torch.Tensor, freeze_codebook: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        zq, ids, aux_loss = self.quantizer(tokens)  # [B, N, Z], [B, N], scalar (zero in eval mode)
        return zq, ids, aux_loss

    def _codes_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        return self.quantizer.indices_to_codes(ids)  # [B, N] -> [B, N, Z]
