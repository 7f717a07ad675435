"""The image token grid of a training batch, shared by the modules that train on images."""

from __future__ import annotations

import torch

from mmar.errors import ConfigError


@torch.no_grad()
def image_tokens_of(batch: dict, tokenizer: torch.nn.Module, image_shape: tuple[int, ...]) -> torch.Tensor:
    """Token grid [B, *grid] of a batch: cached ids ("tokens", checked against the tokenizer's vocabulary)
    or images ("image" [B, *image_shape]) encoded by the frozen tokenizer."""
    if "tokens" in batch:
        tokens = batch["tokens"].long()
        if tokens.numel() and tokens.max() >= tokenizer.vocab_size:
            raise ConfigError(
                f"cached token id {tokens.max().item()} is outside the tokenizer's vocabulary "
                f"({tokenizer.vocab_size}); rebuild the cache with this tokenizer"
            )
        return tokens
    images = batch["image"]
    if tuple(images.shape[1:]) != tuple(image_shape):
        raise ConfigError(
            f"images of shape {tuple(images.shape[1:])} do not match model.image_size -> "
            f"{tuple(image_shape)}; set data and model image sizes to the same value"
        )
    return tokenizer.encode(images)
