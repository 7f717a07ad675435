"""The token grid of a training batch, shared by the modules that train on images or videos."""

from __future__ import annotations

import torch

from mmar.errors import ConfigError


@torch.no_grad()
def batch_tokens(batch: dict, tokenizer: torch.nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Token grid [B, *grid] of a batch: cached ids ("tokens", checked against the tokenizer's vocabulary)
    or pixels encoded by the frozen tokenizer: "image" [B, C, H, W] or "video" [B, C, T, H, W], whichever
    `input_shape` ((C, H, W) or (C, T, H, W)) asks for."""
    if "tokens" in batch:
        tokens = batch["tokens"].long()
        if tokens.numel() and tokens.max() >= tokenizer.vocab_size:
            raise ConfigError(
                f"cached token id {tokens.max().item()} is outside the tokenizer's vocabulary "
                f"({tokenizer.vocab_size}); rebuild the cache with this tokenizer"
            )
        return tokens
    key = "video" if len(input_shape) == 4 else "image"
    if key not in batch:
        raise ConfigError(
            f"the model reads {key}s (its {tokenizer.name} tokenizer is a {tokenizer.modality} tokenizer) "
            f"but the batch holds {sorted(batch)}; pair {key} data with a {key} tokenizer"
        )
    pixels = batch[key]
    if tuple(pixels.shape[1:]) != tuple(input_shape):
        what = "model.image_size (and model.num_frames)" if key == "video" else "model.image_size"
        raise ConfigError(
            f"{key}s of shape {tuple(pixels.shape[1:])} do not match {what} -> {tuple(input_shape)}; "
            "set the data and the model to the same sizes"
        )
    return tokenizer.encode(pixels)
