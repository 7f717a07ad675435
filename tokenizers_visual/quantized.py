"""Shared base of the discrete image tokenizers: VQGAN's conv autoencoder (Esser et al., 2021) with a
quantiser between encoder and decoder (VQ, residual VQ, FSQ, LFQ).

`QuantizedTokenizer` owns everything the quantisers share: the Encoder/Decoder, the config, the input
checks, the fp32 quantisation (autocast is disabled around the quantiser so that codebooks, grids and
distances stay in fp32 under bf16/fp16 training), the id checks of `decode`, and the hook
`perturb_latents` between quantiser and decoder (RobusTok's latent perturbation goes there). A subclass
builds `self.quantizer` and implements two methods on flattened tokens:

- `_quantize_tokens(tokens [B, N, Z]) -> (quantised [B, N, Z], ids [B, N, *token_shape], aux loss)`
- `_codes_from_ids(ids [B, N, *token_shape]) -> quantised [B, N, Z]`
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from einops import rearrange

from mmar.errors import ConfigError
from mmar.tokenizer import Tokenizer
from tokenizers_visual.nets import Decoder, Encoder


class QuantizedTokenizer(Tokenizer):
    """Images [B, C, H, W] <-> ids [B, H / f, W / f, *token_shape] through encoder -> quantiser -> decoder.

    Args:
        in_channels: image channels (1 for grayscale, 3 for RGB).
        ch: base channel count of the encoder/decoder.
        ch_mult: channel multiplier per resolution; downsampling factor f is 2 ** (len(ch_mult) - 1).
        num_res_blocks: ResBlocks per resolution.
        z_channels: channels of the encoder output / decoder input.
        **quantizer_config: the subclass's quantiser kwargs (primitives), stored in `self.config` after
            the autoencoder's, so that `save_pretrained` / `load_tokenizer` rebuild the same tokenizer.
    """

    kind = "discrete"
    vocab_field: ClassVar[str] = "codebook_size"
    """The constructor argument that sets the vocabulary (named in errors about out-of-range ids)."""

    def __init__(
        self,
        in_channels: int,
        ch: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        z_channels: int,
        **quantizer_config: Any,
    ):
        super().__init__()
        ch_mult = [int(m) for m in ch_mult]
        self.config = {
            "in_channels": in_channels,
            "ch": ch,
            "ch_mult": ch_mult,
            "num_res_blocks": num_res_blocks,
            "z_channels": z_channels,
            **quantizer_config,
        }
        self.in_channels = in_channels
        self.downsample = 2 ** (len(ch_mult) - 1)
        self.encoder = Encoder(in_channels, ch, ch_mult, num_res_blocks, z_channels)
        self.decoder = Decoder(in_channels, ch, ch_mult, num_res_blocks, z_channels)

    # --- what a quantiser subclass implements -------------------------------------------------------

    def _quantize_tokens(
        self, tokens: torch.Tensor, freeze_codebook: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """fp32 tokens [B, N, Z] -> (quantised [B, N, Z], ids [B, N, *token_shape], scalar aux loss)."""
        raise NotImplementedError

    def _codes_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Valid ids [B, N, *token_shape] -> quantised tokens [B, N, Z] (fp32)."""
        raise NotImplementedError

    # --- shared pipeline ------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Autoencode a batch.

        Args:
            x: images [B, C, H, W] in [-1, 1].

        Returns:
            recon [B, C, H, W], ids [B, h, w, *token_shape] (long) and the quantiser's auxiliary loss, a
            scalar (zero in eval mode). In training mode an EMA codebook is updated.
        """
        self.check_input(x)
        z = self.encoder(x)  # [B, Z, h, w]
        zq, ids, aux_loss = self.quantize(z)
        zq, ids = self.perturb_latents(z, zq, ids)  # hook: identity here, RobusTok perturbs
        return self.decoder(zq), ids, aux_loss

    def perturb_latents(
        self, z: torch.Tensor, zq: torch.Tensor, ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hook between quantiser and decoder in `forward`; the identity here.

        Called after the quantiser's losses are computed and never by `encode` / `decode`. A subclass
        (e.g. RobusTok's latent perturbation) may replace codes, e.g. via `codes_from_ids`.

        Args:
            z: encoder features [B, Z, h, w] before quantisation.
            zq: quantised features [B, Z, h, w] (with the quantiser's straight-through gradient).
            ids: code ids [B, h, w, *token_shape].

        Returns:
            the decoder input [B, Z, h, w] and the ids that `forward` returns.
        """
        return zq, ids

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> ids [B, h, w, *token_shape] (long); never updates a codebook."""
        self.check_input(x)
        z = self.encoder(x)  # [B, Z, h, w]
        _, ids, _ = self.quantize(z, freeze_codebook=True)
        return ids

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids [B, h, w, *token_shape] -> images [B, C, h * f, w * f] (roughly in [-1, 1])."""
        return self.decoder(self.codes_from_ids(ids))  # [B, C, H, W]

    def quantize(
        self, z: torch.Tensor, freeze_codebook: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantise in fp32: features [B, Z, h, w] -> (quantised [B, Z, h, w], ids, scalar aux loss)."""
        h, w = z.shape[-2:]
        tokens = rearrange(z, "b d h w -> b (h w) d").float()  # [B, h*w, Z]
        # Codebooks, grids and distances stay in fp32 even under bf16/fp16 autocast.
        with torch.autocast(device_type=z.device.type, enabled=False):
            zq, ids, aux_loss = self._quantize_tokens(tokens, freeze_codebook)  # [B, h*w, Z]
        zq = rearrange(zq, "b (h w) d -> b d h w", h=h, w=w)
        ids = ids.unflatten(1, (h, w)).long()  # [B, h, w, *token_shape]
        return zq, ids, aux_loss

    def codes_from_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids [B, h, w, *token_shape] -> quantised features [B, Z, h, w] (fp32); ConfigError if invalid."""
        self._check_ids(ids)
        h, w = ids.shape[1:3]
        with torch.autocast(device_type=ids.device.type, enabled=False):
            zq = self._codes_from_ids(ids.flatten(1, 2).long())  # [B, h*w, Z]
        return rearrange(zq, "b (h w) d -> b d h w", h=h, w=w)

    def _check_ids(self, ids: torch.Tensor) -> None:
        """Raise ConfigError unless `ids` is an integer tensor [B, h, w, *token_shape] in [0, vocab_size)."""
        shape = "[B, h, w" + "".join(f", {n}" for n in self.token_shape) + "]"
        ndim = 3 + len(self.token_shape)
        if (
            ids.ndim != ndim
            or tuple(ids.shape[3:]) != tuple(self.token_shape)
            or ids.is_floating_point()
            or ids.is_complex()
        ):
            raise ConfigError(
                f"decode expects integer code ids of shape {shape}, got {tuple(ids.shape)} {ids.dtype}"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ConfigError(
                f"code ids must lie in [0, {self.vocab_size}) for this tokenizer ({self.vocab_field}="
                f"{self.config[self.vocab_field]}), got values in [{int(ids.min())}, {int(ids.max())}]; "
                f"check that the generator's vocab_size matches the tokenizer's ({self.vocab_size})"
            )


def require(condition: bool, message: str) -> None:
    """Raise ConfigError(message) unless `condition` (constructor argument checks)."""
    if not condition:
        raise ConfigError(message)
