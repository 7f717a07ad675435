"""VQ image tokenizer: VQGAN's conv autoencoder (Esser et al., 2021) with LlamaGen's codebook (Sun et al.,
2024, "Autoregressive Model Beats Diffusion").

The encoder's features are projected to a low-dimensional space (`codebook_dim`, 8 by default) and
l2-normalised before the nearest-code lookup, so codes are compared by cosine similarity; LlamaGen shows
this keeps codebook usage near 100% even for 16k codes. The codebook is updated by EMA
(`vector_quantize_pytorch.VectorQuantize`); codes whose EMA usage falls below `threshold_ema_dead_code`
are re-seeded from encoder outputs of the current batch, which also initialises the codebook from data
on the first step. The commitment loss (weight 0.25) pulls the encoder towards its codes. Unlike LlamaGen,
whose codebook is learned by gradient, the codebook here is an EMA of the l2-normalised encoder outputs
(vector_quantize_pytorch has no learnable cosine-similarity codebook). Images are in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from vector_quantize_pytorch import VectorQuantize

from mmar.errors import ConfigError
from tokenizers_visual.base import Tokenizer, register_tokenizer
from tokenizers_visual.nets import Decoder, Encoder


@register_tokenizer
class VQTokenizer(Tokenizer):
    """Discrete image tokenizer: images [B, C, H, W] <-> code ids [B, H / f, W / f], f = `downsample`.

    Args:
        in_channels: image channels (1 for grayscale, 3 for RGB).
        ch: base channel count of the encoder/decoder.
        ch_mult: channel multiplier per resolution; downsampling factor is 2 ** (len(ch_mult) - 1).
        num_res_blocks: ResBlocks per resolution.
        z_channels: channels of the encoder output / decoder input.
        codebook_size: number of codes (the vocabulary of the generator).
        codebook_dim: dimension of the l2-normalised codes (LlamaGen: 8).
        commitment_weight: weight of the commitment loss (VQ-VAE / LlamaGen: 0.25).
        decay: EMA decay of the codebook update.
        threshold_ema_dead_code: codes whose EMA count of assignments per batch drops below this are
            re-seeded from the batch's encoder outputs (0 disables); keep it well below the average
            count, tokens per batch / codebook_size, or healthy codes get replaced too.
    """

    name = "vq"
    kind = "discrete"

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
    ):
        super().__init__()
        ch_mult = [int(m) for m in ch_mult]
        self.config = {
            "in_channels": in_channels,
            "ch": ch,
            "ch_mult": ch_mult,
            "num_res_blocks": num_res_blocks,
            "z_channels": z_channels,
            "codebook_size": codebook_size,
            "codebook_dim": codebook_dim,
            "commitment_weight": commitment_weight,
            "decay": decay,
            "threshold_ema_dead_code": threshold_ema_dead_code,
        }
        self.in_channels = in_channels
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.vocab_size = codebook_size
        self.encoder = Encoder(in_channels, ch, ch_mult, num_res_blocks, z_channels)
        self.decoder = Decoder(in_channels, ch, ch_mult, num_res_blocks, z_channels)
        self.quantizer = VectorQuantize(
            dim=z_channels,
            codebook_size=codebook_size,
            codebook_dim=codebook_dim,  # project z_channels -> codebook_dim before the lookup
            use_cosine_sim=True,  # l2-normalised codes and inputs (LlamaGen)
            commitment_weight=commitment_weight,
            decay=decay,
            threshold_ema_dead_code=threshold_ema_dead_code,
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Autoencode a batch.

        Args:
            x: images [B, C, H, W] in [-1, 1].

        Returns:
            recon [B, C, H, W], ids [B, h, w] (long) and the quantiser's auxiliary (commitment) loss, a
            scalar that is zero in eval mode. In training mode the codebook is updated by EMA.
        """
        self.check_input(x)
        z = self.encoder(x)  # [B, Z, h, w]
        zq, ids, aux_loss = self._quantize(z)
        return self.decoder(zq), ids, aux_loss

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> code ids [B, h, w] (long); never updates the codebook."""
        self.check_input(x)
        z = self.encoder(x)  # [B, Z, h, w]
        _, ids, _ = self._quantize(z, freeze_codebook=True)
        return ids

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Code ids [B, h, w] -> images [B, C, h * f, w * f] (roughly in [-1, 1])."""
        self._check_ids(ids)
        with torch.autocast(device_type=ids.device.type, enabled=False):
            zq = self.quantizer.get_output_from_indices(ids)  # [B, h, w, Z]
        zq = rearrange(zq, "b h w d -> b d h w")
        return self.decoder(zq)  # [B, C, H, W]

    def _quantize(
        self, z: torch.Tensor, freeze_codebook: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nearest-code lookup in fp32: features [B, Z, h, w] -> (quantised [B, Z, h, w], ids, aux loss)."""
        h, w = z.shape[-2:]
        tokens = rearrange(z, "b d h w -> b (h w) d").float()  # [B, h*w, Z]
        # The EMA codebook and the cosine similarities are kept in fp32 even under bf16/fp16 autocast.
        with torch.autocast(device_type=z.device.type, enabled=False):
            zq, ids, aux_loss = self.quantizer(tokens, freeze_codebook=freeze_codebook)  # [B, h*w, Z]
        zq = rearrange(zq, "b (h w) d -> b d h w", h=h, w=w)
        ids = rearrange(ids, "b (h w) -> b h w", h=h, w=w).long()
        return zq, ids, aux_loss

    def _check_ids(self, ids: torch.Tensor) -> None:
        """Raise ConfigError unless `ids` is an integer tensor [B, h, w] with values in [0, vocab_size)."""
        if ids.ndim != 3 or ids.is_floating_point() or ids.is_complex():
            raise ConfigError(
                f"decode expects integer code ids of shape [B, h, w], got {tuple(ids.shape)} {ids.dtype}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ConfigError(
                f"code ids must lie in [0, {self.vocab_size}) for this tokenizer (codebook_size="
                f"{self.vocab_size}), got values in [{int(ids.min())}, {int(ids.max())}]; check that the "
                "generator's vocab_size matches the tokenizer's codebook_size"
            )
