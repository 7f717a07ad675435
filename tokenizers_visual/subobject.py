"""Subobject-level image tokenizer (Chen et al., 2024, "Subobject-level Image Tokenization").

An image is cut into variable-shape segments (a `Segmenter`: by default a learnt boundary map ->
connected components -> watershed, see segmenters.py), and each segment becomes one continuous token:

    segments [B, H, W] -> per segment its bounding box and mask -> masked crop resized to S x S with the
        mask as an extra channel [B*N, C+1, S, S] -> conv encoder -> one embedding [B, N, D]
    decode: embedding -> conv decoder -> crop [C, S, S] -> resampled into the box and pasted on the
        segment's pixels; segments tile the image, so every pixel comes from exactly one token.

The paper's first version compresses each masked segment with a sequence-to-sequence autoencoder
(SeqAE); its ICML 2025 version (EPOC) embeds arbitrary-shaped tokens from mask-pooled features. Here the
masked crop is resized to a fixed S x S, so a small conv encoder to one D-vector does the SeqAE's job
(one vector per variable-shape segment, with a decoder back to pixels, which mask pooling lacks) at a
fraction of the CPU cost; a sequence model would only pay off for crops kept at their native size.

Tokens are variable in number: each image has K <= `max_tokens` segments, padded to `max_tokens` with a
padding mask (True = real token; real tokens come first, sorted by segment area, largest first). So
`grid(input_shape)` is `(max_tokens,)` and `encode` returns a `SubobjectTokens` holding the normalised
embeddings [B, N, D], the mask [B, N] and the geometry that `decode` needs (boxes [B, N, 4] and the
segment map [B, H, W], i.e. the per-token masks). A generator of such tokens has to produce the geometry
too (or take it as given); this tokenizer only defines the representation.

Training: `mmar fit` trains the crop autoencoder (TokenizerModule's reconstruction loss on the pasted
image; gradients reach the crops through the bilinear paste). Segmentation is not differentiable, so the
boundary predictor is trained separately on ground-truth boundary maps by `scripts/train_boundary.py`
and loaded from `boundary_path` on first use. With a TokenizerModule hook that passes the batch to
`supervised_losses(batch)`, it could instead train jointly on batches that carry "segments".
Embeddings are normalised by a data-fitted shift and scale (`fit_statistics`, over real tokens only).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mmar.continuous import LatentNormalization
from mmar.errors import ConfigError
from mmar.tokenizer import Tokenizer, register_tokenizer
from tokenizers_visual.segmenters import BoundarySegmenter, build_segmenter


@dataclass
class SubobjectTokens:
    """Variable-length subobject tokens, padded to N = max_tokens.

    Attributes:
        embeddings: float [B, N, D], normalised; zero at padding.
        mask: bool [B, N], True for real tokens (the first K of each row).
        boxes: long [B, N, 4], (top, left, bottom, right) of each token's segment, bottom/right exclusive;
            (0, 0, H, W) at padding.
        segments: long [B, H, W], the token index of every pixel (each token's mask is `segments == n`).
    """

    embeddings: torch.Tensor
    mask: torch.Tensor
    boxes: torch.Tensor
    segments: torch.Tensor

    @property
    def num_tokens(self) -> torch.Tensor:
        """Real tokens per image, long [B]."""
        return self.mask.sum(1)

    @property
    def masks(self) -> torch.Tensor:
        """Per-token pixel masks, bool [B, N, H, W] (all False at padding)."""
        n = self.mask.shape[1]
        return F.one_hot(self.segments, n).permute(0, 3, 1, 2).bool()  # [B, N, H, W]

    def to(self, device: torch.device | str) -> SubobjectTokens:
        return SubobjectTokens(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def segment_boxes(segments: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Bounding boxes of the segments: ids long [B, H, W] -> long [B, N, 4] (top, left, bottom, right).

    Bottom and right are exclusive; ids without pixels (padding) get the whole image (0, 0, H, W).
    """
    b, h, w = segments.shape
    ys = torch.arange(h, device=segments.device).view(1, h, 1).expand(b, h, w).reshape(b, -1)  # [B, HW]
    xs = torch.arange(w, device=segments.device).view(1, 1, w).expand(b, h, w).reshape(b, -1)  # [B, HW]
    ids = segments.reshape(b, -1)  # [B, HW]

    def reduce(values: torch.Tensor, how: str, init: int) -> torch.Tensor:
        out = torch.full((b, num_tokens), init, dtype=torch.long, device=segments.device)
        return out.scatter_reduce(1, ids, values, how, include_self=True)  # [B, N]

    top, left = reduce(ys, "amin", h), reduce(xs, "amin", w)
    bottom, right = reduce(ys, "amax", -1) + 1, reduce(xs, "amax", -1) + 1
    empty = bottom == 0  # no pixel: padding
    boxes = torch.stack([top, left, bottom, right], dim=-1)  # [B, N, 4]
    full = torch.tensor([0, 0, h, w], device=segments.device)
    return torch.where(empty[..., None], full, boxes)


def crop_grid(boxes: torch.Tensor, crop_size: int, height: int, width: int) -> torch.Tensor:
    """Sampling grid of every box's S x S crop, stacked vertically: [B, N * S, S, 2] for grid_sample.

    Crop pixel (i, j) of box (t, l, b, r) sits at image coordinates y = t + (i + 1/2) (b - t) / S - 1/2
    (pixel centres at integers), x likewise, so a box of exactly S x S pixels is sampled at its pixel
    centres (an exact copy). Coordinates are normalised for `align_corners=False`.
    """
    s = crop_size
    steps = (torch.arange(s, device=boxes.device, dtype=torch.float32) + 0.5) / s  # [S]
    top, left, bottom, right = boxes.float().unbind(-1)  # [B, N] each
    y = top[..., None] + steps * (bottom - top)[..., None] - 0.5  # [B, N, S]
    x = left[..., None] + steps * (right - left)[..., None] - 0.5  # [B, N, S]
    gy = (2 * y + 1) / height - 1  # [B, N, S]
    gx = (2 * x + 1) / width - 1  # [B, N, S]
    grid = torch.stack(torch.broadcast_tensors(gx[..., None, :], gy[..., :, None]), dim=-1)  # [B, N, S, S, 2]
    b, n = boxes.shape[:2]
    return grid.reshape(b, n * s, s, 2)


def extract_crops(
    images: torch.Tensor, segments: torch.Tensor, boxes: torch.Tensor, crop_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops of every token's box resized to S x S, and the token's soft mask on the same grid.

    Args:
        images: [B, C, H, W].
        segments: long [B, H, W], values < N.
        boxes: long [B, N, 4] from `segment_boxes`.
        crop_size: S.

    Returns:
        crops [B, N, C, S, S] (bilinear, not masked) and masks [B, N, S, S] in [0, 1].
    """
    b, c, h, w = images.shape
    n, s = boxes.shape[1], crop_size
    grid = crop_grid(boxes, s, h, w)  # [B, N*S, S, 2]
    crops = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
    crops = crops.view(b, c, n, s, s).transpose(1, 2)  # [B, N, C, S, S]
    onehot = F.one_hot(segments, n).permute(0, 3, 1, 2).to(images.dtype)  # [B, N, H, W]
    soft = F.grid_sample(onehot, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # channel m of block n is mask m sampled in box n: keep the diagonal m = n
    masks = soft.view(b, n, n, s, s).diagonal(dim1=1, dim2=2).permute(0, 3, 1, 2)  # [B, N, S, S]
    return crops, masks


def paste_crops(crops: torch.Tensor, segments: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Inverse of `extract_crops`: every pixel samples the crop of its own token at its place in the box.

    Args:
        crops: [B, N, C, S, S].
        segments: long [B, H, W], values < N.
        boxes: long [B, N, 4].

    Returns:
        images [B, C, H, W]. The crops are stacked into one tall image [B, C, N*S, S]; coordinates are
        clamped inside the token's own S x S block, so bilinear sampling never mixes two tokens.
    """
    b, n, c, s, _ = crops.shape
    h, w = segments.shape[-2:]
    box = boxes.float().gather(1, segments.reshape(b, -1, 1).expand(-1, -1, 4))  # [B, HW, 4]
    top, left, bottom, right = box.view(b, h, w, 4).unbind(-1)  # [B, H, W] each
    y = torch.arange(h, device=crops.device, dtype=torch.float32).view(1, h, 1) + 0.5
    x = torch.arange(w, device=crops.device, dtype=torch.float32).view(1, 1, w) + 0.5
    i = ((y - top) / (bottom - top) * s - 0.5).clamp(0, s - 1)  # [B, H, W] crop row (pixel centres)
    j = ((x - left) / (right - left) * s - 0.5).clamp(0, s - 1)  # [B, H, W] crop column
    row = segments.float() * s + i  # [B, H, W] row in the tall image
    grid = torch.stack([(2 * j + 1) / s - 1, (2 * row + 1) / (n * s) - 1], dim=-1)  # [B, H, W, 2]
    tall = crops.transpose(1, 2).reshape(b, c, n * s, s)  # [B, C, N*S, S]
    return F.grid_sample(tall, grid.to(crops.dtype), mode="bilinear", align_corners=False)  # [B, C, H, W]


def _widths(ch: int, crop_size: int) -> list[int]:
    """Channels per resolution, from S x S down to 4 x 4, doubling at each halving."""
    return [ch * 2**i for i in range(int(math.log2(crop_size // 4)) + 1)]


class CropEncoder(nn.Module):
    """Masked crop [M, C+1, S, S] -> embedding [M, D]: conv + SiLU, stride-2 convs down to 4 x 4, linear."""

    def __init__(self, in_channels: int, ch: int, latent_dim: int, crop_size: int):
        super().__init__()
        widths = _widths(ch, crop_size)
        layers: list[nn.Module] = [nn.Conv2d(in_channels + 1, widths[0], 3, padding=1), nn.SiLU()]
        for a, b in itertools.pairwise(widths):
            layers += [nn.Conv2d(a, b, 4, stride=2, padding=1), nn.SiLU()]  # halves S
        layers += [nn.Flatten(), nn.Linear(widths[-1] * 16, latent_dim)]
        self.net = nn.Sequential(*layers)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net(crops)  # [M, C+1, S, S] -> [M, D]


class CropDecoder(nn.Module):
    """Embedding [M, D] -> crop [M, C, S, S]: linear to 4 x 4, (nearest x2 + conv + SiLU) up to S x S."""

    def __init__(self, out_channels: int, ch: int, latent_dim: int, crop_size: int):
        super().__init__()
        widths = _widths(ch, crop_size)[::-1]
        layers: list[nn.Module] = [nn.Linear(latent_dim, widths[0] * 16), nn.Unflatten(1, (widths[0], 4, 4))]
        layers.append(nn.SiLU())
        for a, b in itertools.pairwise(widths):
            layers += [
                nn.Upsample(scale_factor=2.0, mode="nearest"),
                nn.Conv2d(a, b, 3, padding=1),
                nn.SiLU(),
            ]
        layers.append(nn.Conv2d(widths[-1], out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # [M, D] -> [M, C, S, S]


@register_tokenizer
class SubobjectTokenizer(LatentNormalization, Tokenizer):
    """Continuous, variable-length tokenizer: images [B, C, H, W] <-> `SubobjectTokens` (N = max_tokens).

    Args:
        in_channels: image channels.
        latent_dim: D, the size of each segment's embedding.
        max_tokens: N, the most segments (tokens) per image; sequences are padded to N.
        crop_size: S, side of the resized masked crop (a power of two >= 4).
        ch: channels of the crop encoder/decoder at S x S (doubling at each halving down to 4 x 4).
        segmenter: "boundary" (learnt boundary map + watershed), "slic" or "felzenszwalb".
        segmenter_args: constructor kwargs of the segmenter (segmenters.py), without max_tokens.
        boundary_path: folder of a boundary predictor written by scripts/train_boundary.py, loaded on
            the first segmentation (only for segmenter "boundary"); weights loaded from a checkpoint or
            an export take precedence, so an exported tokenizer no longer needs the folder.
        boundary_weight: weight of the boundary BCE in `supervised_losses` (joint training of the boundary
            predictor, for loops that pass whole batches). 0 (default) freezes the predictor: it is trained
            separately, and frozen parameters stay out of the optimiser and of DDP's gradient reduction.
        per_channel_scale: fit one shift/scale per embedding channel instead of one scalar.
        latent_scale: the fitted scale (float or list of D floats); None until `fit_statistics`.
        latent_shift: the fitted shift, as `latent_scale`.
    """

    name = "subobject"
    kind = "continuous"
    variable_length: ClassVar[bool] = True  # tokens are padded to max_tokens, with a padding mask

    def __init__(
        self,
        in_channels: int = 3,
        latent_dim: int = 32,
        max_tokens: int = 16,
        crop_size: int = 16,
        ch: int = 32,
        segmenter: str = "boundary",
        segmenter_args: dict[str, Any] | None = None,
        boundary_path: str | None = None,
        boundary_weight: float = 0.0,
        per_channel_scale: bool = False,
        latent_scale: float | list[float] | None = None,
        latent_shift: float | list[float] | None = None,
    ):
        super().__init__()
        segmenter_args = dict(segmenter_args or {})
        _check_args(max_tokens, crop_size, segmenter, segmenter_args, boundary_path, boundary_weight)
        self.config = {
            "in_channels": in_channels,
            "latent_dim": latent_dim,
            "max_tokens": max_tokens,
            "crop_size": crop_size,
            "ch": ch,
            "segmenter": segmenter,
            "segmenter_args": segmenter_args,
            "boundary_path": boundary_path,
            "boundary_weight": boundary_weight,
        }
        self.in_channels = in_channels
        self.downsample = 1
        self.latent_dim = latent_dim
        self.max_tokens = max_tokens
        self.crop_size = crop_size
        channels = {"in_channels": in_channels} if segmenter == "boundary" else {}
        self.segmenter = build_segmenter(segmenter, max_tokens=max_tokens, **channels, **segmenter_args)
        if boundary_weight == 0:
            self.segmenter.requires_grad_(False)
        # whether the boundary predictor holds trained weights (from boundary_path or a loaded state dict)
        self.register_buffer("boundary_loaded", torch.tensor(boundary_path is None))
        self.encoder = CropEncoder(in_channels, ch, latent_dim, crop_size)
        self.decoder = CropDecoder(in_channels, ch, latent_dim, crop_size)
        self._init_latent_normalization(latent_dim, per_channel_scale, latent_scale, latent_shift)

    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """(max_tokens,): tokens are a padded sequence, whatever the image size (C must match)."""
        c = input_shape[0]
        if c != self.in_channels:
            raise ConfigError(
                f"input has {c} channels but the {self.name} tokenizer expects {self.in_channels}; "
                f"convert the data (e.g. grayscale vs RGB) or train a tokenizer with in_channels={c}"
            )
        return (self.max_tokens,)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] -> segment ids long [B, H, W] in 0..K-1, K <= max_tokens, largest first."""
        self._load_boundary_once()
        return self.segmenter.segment(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Autoencode a batch.

        Args:
            x: images [B, C, H, W] in [-1, 1].

        Returns:
            recon [B, C, H, W], normalised embeddings [B, N, D] (zero at padding) and an auxiliary loss
            (a zero scalar: the crop autoencoder is deterministic and unregularised).
        """
        self.check_input(x)
        segments = self.segment(x)  # [B, H, W]
        boxes = segment_boxes(segments, self.max_tokens)  # [B, N, 4]
        z, mask = self._embed(x, segments, boxes)  # [B, N, D], [B, N]
        recon = self._render(z, mask, segments, boxes)  # [B, C, H, W]
        return recon, self._normalize(z, mask), x.new_zeros(())

    def encode(self, x: torch.Tensor) -> SubobjectTokens:
        """Images [B, C, H, W] in [-1, 1] -> `SubobjectTokens` (normalised embeddings + mask + geometry)."""
        self.check_input(x)
        self._warn_if_unfitted()
        with torch.no_grad():
            segments = self.segment(x)  # [B, H, W]
            boxes = segment_boxes(segments, self.max_tokens)  # [B, N, 4]
            z, mask = self._embed(x, segments, boxes)  # [B, N, D], [B, N]
            return SubobjectTokens(self._normalize(z, mask), mask, boxes, segments)

    def decode(self, tokens: SubobjectTokens | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """`SubobjectTokens` (or a dict with the same keys) -> images [B, C, H, W] (roughly in [-1, 1])."""
        if isinstance(tokens, Mapping):
            tokens = SubobjectTokens(**{f.name: tokens[f.name] for f in fields(SubobjectTokens)})
        self._check_tokens(tokens)
        self._warn_if_unfitted()
        z = tokens.embeddings / self.latent_scale + self.latent_shift  # [B, N, D]
        return self._render(z, tokens.mask.bool(), tokens.segments, tokens.boxes)

    def supervised_losses(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """Losses that need more than the images: the boundary BCE when the batch has "segments".

        For a training loop that passes whole batches (scripts/train_boundary.py trains the same loss).
        """
        weight = self.config["boundary_weight"]
        if weight == 0 or not isinstance(self.segmenter, BoundarySegmenter) or "segments" not in batch:
            return {}
        bce = self.segmenter.loss(batch["image"], batch["segments"])
        return {"boundary_bce": weight * bce}

    @torch.no_grad()
    def fit_statistics(self, batches: Iterable[torch.Tensor]) -> None:
        """Fit shift = mean and scale = 1 / std of the raw embeddings of the real tokens of `batches`."""
        was_training = self.training
        self.eval()
        per_channel = self.config["per_channel_scale"]
        count, total, total_sq = 0, 0.0, 0.0
        for x in batches:
            self.check_input(x)
            segments = self.segment(x)  # [B, H, W]
            z, mask = self._embed(x, segments, segment_boxes(segments, self.max_tokens))  # [B, N, D]
            real = z[mask].double()  # [M, D]
            count += real.shape[0] if per_channel else real.numel()
            total = total + (real.sum(0) if per_channel else real.sum())
            total_sq = total_sq + (real.square().sum(0) if per_channel else real.square().sum())
        self.train(was_training)
        if count == 0:
            raise ConfigError("fit_statistics got no batches; pass the training images (a non-empty loader)")
        mean = total / count
        std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
        self.set_statistics(mean, 1.0 / std)

    def _embed(
        self, x: torch.Tensor, segments: torch.Tensor, boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw embeddings [B, N, D] (zero at padding) and the padding mask [B, N]."""
        b, n = boxes.shape[:2]
        mask = torch.arange(n, device=x.device) <= segments.flatten(1).amax(1, keepdim=True)  # [B, N]
        crops, masks = extract_crops(x, segments, boxes, self.crop_size)  # [B, N, C, S, S], [B, N, S, S]
        inputs = torch.cat([crops * masks[:, :, None], masks[:, :, None]], dim=2)  # [B, N, C+1, S, S]
        z = x.new_zeros(b, n, self.latent_dim)  # [B, N, D]
        z[mask] = self.encoder(inputs[mask]).to(z.dtype)  # only real tokens go through the encoder
        return z, mask

    def _render(
        self, z: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor, boxes: torch.Tensor
    ) -> torch.Tensor:
        """Raw embeddings [B, N, D] of the real tokens (`mask`) -> decoded crops pasted [B, C, H, W]."""
        b, n = z.shape[:2]
        s = self.crop_size
        crops = z.new_zeros(b, n, self.in_channels, s, s)  # [B, N, C, S, S]
        crops[mask] = self.decoder(z[mask]).to(crops.dtype)  # padding has no pixels: never decoded
        return paste_crops(crops, segments, boxes)

    def _normalize(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Raw embeddings [B, N, D] -> (z - shift) * scale at real tokens, zero at padding."""
        return (z - self.latent_shift) * self.latent_scale * mask[..., None]

    def _load_boundary_once(self) -> None:
        """Load `boundary_path` into the boundary predictor on first use (not when weights were loaded)."""
        if bool(self.boundary_loaded):
            return
        self.segmenter.load_weights(self.config["boundary_path"])
        self.boundary_loaded.fill_(True)

    def _check_tokens(self, tokens: SubobjectTokens) -> None:
        """Raise ConfigError unless the tokens fit this tokenizer (shapes, D, N, ids)."""
        emb, mask, boxes, segments = tokens.embeddings, tokens.mask, tokens.boxes, tokens.segments
        b, n = mask.shape[:2] if mask.ndim == 2 else (None, None)
        ok = (
            emb.ndim == 3
            and emb.is_floating_point()
            and (b, n) == tuple(emb.shape[:2])
            and tuple(boxes.shape) == (b, n, 4)
            and segments.ndim == 3
            and segments.shape[0] == b
            and not segments.is_floating_point()
        )
        if not ok:
            raise ConfigError(
                "decode expects SubobjectTokens with embeddings [B, N, D] (float), mask [B, N], boxes "
                f"[B, N, 4] and segments [B, H, W] (integer), got {tuple(emb.shape)}, {tuple(mask.shape)}, "
                f"{tuple(boxes.shape)}, {tuple(segments.shape)} {segments.dtype}"
            )
        if emb.shape[-1] != self.latent_dim or n != self.max_tokens:
            raise ConfigError(
                f"tokens are [B, {n}, {emb.shape[-1]}] but the {self.name} tokenizer has max_tokens="
                f"{self.max_tokens} and latent_dim={self.latent_dim}; check that the generator matches it"
            )
        if segments.numel() and (int(segments.min()) < 0 or int(segments.max()) >= n):
            raise ConfigError(
                f"segment ids must lie in [0, {n}), got [{int(segments.min())}, {int(segments.max())}]"
            )


def _check_args(
    max_tokens: int,
    crop_size: int,
    segmenter: str,
    segmenter_args: dict[str, Any],
    boundary_path: str | None,
    boundary_weight: float,
) -> None:
    """Raise ConfigError naming the field for constructor arguments that cannot work."""
    if max_tokens < 1:
        raise ConfigError(f"max_tokens={max_tokens} must be >= 1")
    if boundary_weight < 0:
        raise ConfigError(f"boundary_weight={boundary_weight} must be >= 0 (0: boundary predictor frozen)")
    if crop_size < 4 or crop_size & (crop_size - 1):
        raise ConfigError(f"crop_size={crop_size} must be a power of two >= 4 (e.g. 16)")
    for field in ("max_tokens", "in_channels"):
        if field in segmenter_args:
            raise ConfigError(f"segmenter_args must not set {field}; the tokenizer's {field} is used")
    if boundary_path is not None and segmenter != "boundary":
        raise ConfigError(f"boundary_path is only used with segmenter: boundary (got segmenter: {segmenter})")
