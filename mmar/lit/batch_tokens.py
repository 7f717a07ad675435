"""The token grid of a training batch, shared by the modules that train on images or videos."""

from __future__ import annotations

import torch

from mmar.errors import ConfigError


@torch.no_grad()
def batch_tokens(batch: dict, tokenizer: torch.nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """Token grid [B, *grid] of a batch: cached ids ("tokens", checked against the tokenizer's vocabulary)
    or inputs encoded by the frozen tokenizer: "image" [B, C, H, W], "video" [B, C, T, H, W] or "audio"
    [B, C, samples], whichever the tokenizer's modality reads, of shape [B, *input_shape]."""
    if "tokens" in batch:
        tokens = batch["tokens"].long()
        if tokens.numel() and tokens.max() >= tokenizer.vocab_size:
            raise ConfigError(
                f"cached token id {tokens.max().item()} is outside the tokenizer's vocabulary "
                f"({tokenizer.vocab_size}); rebuild the cache with this tokenizer"
            )
        return tokens
    key = tokenizer.modality
    noun = key if key == "audio" else f"{key}s"
    if key not in batch:
        raise ConfigError(
            f"the model reads {noun} (its {tokenizer.name} tokenizer is a {tokenizer.modality} tokenizer) "
            f"but the batch holds {sorted(batch)}; pair {key} data with a {key} tokenizer"
        )
    pixels = batch[key]
    if tuple(pixels.shape[1:]) != tuple(input_shape):
        what = {"video": "model.image_size (and model.num_frames)", "audio": "model.duration"}.get(
            key, "model.image_size"
        )
        raise ConfigError(
            f"{noun} of shape {tuple(pixels.shape[1:])} do not match {what} -> {tuple(input_shape)}; "
            "set the data and the model to the same sizes"
        )
    return tokenizer.encode(pixels)
