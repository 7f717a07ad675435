"""Segmenters for subobject-level tokenization: images -> variable-shape segments that tile the image.

The interface is one method, `segment(images [B, C, H, W] in [-1, 1]) -> ids long [B, H, W]`: every
pixel gets a segment id, the ids of each image are contiguous 0..K-1 and sorted by area (0 = largest),
and K <= `max_tokens` when it is set.

- `BoundarySegmenter` follows EPOC, the subobject tokenizer of Chen et al. (2024, "Subobject-level Image
  Tokenization", ICML 2025): a small learnable conv net predicts a boundary probability per pixel
  (trained with BCE on ground-truth boundary maps, `loss`); pixels below `threshold` are split into
  connected components (`skimage.measure.label`), which seed a watershed
  (`skimage.segmentation.watershed`) on the probability map, so the boundary pixels are flooded from
  the nearest basins too and no pixel is left unassigned.
- `SLICSegmenter` (Achanta et al., 2012) and `FelzenszwalbSegmenter` (Felzenszwalb & Huttenlocher,
  2004) wrap scikit-image's superpixel baselines.

Truncation to `max_tokens` (`relabel_by_area`): segments are ranked by area; the `max_tokens` largest are
kept and every dropped segment is merged into the *largest kept segment it touches* (4-neighbourhood).
A dropped segment that touches no kept one waits until a neighbour has been merged, so the merge runs in
rounds and always ends (the pixel grid is connected). The kept segments are then re-ranked by their final
area, so ids stay sorted by area. The result tiles the image with exactly `max_tokens` segments.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from mmar.errors import ConfigError
from mmar.eval.segmentation import boundary_map
from mmar.io import atomic_write

SEGMENTER_CONFIG = "segmenter.json"
SEGMENTER_WEIGHTS = "segmenter.safetensors"


def relabel_by_area(labels: np.ndarray, max_tokens: int | None = None) -> np.ndarray:
    """Integer labels [H, W] (any values) -> ids 0..K-1 sorted by area, largest first (ties: lower label).

    With `max_tokens`, only the `max_tokens` largest segments are kept and the others are merged into
    the largest kept segment they touch (see the module docstring); K = min(K, max_tokens).
    """
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    rank = np.empty(len(counts), dtype=np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(len(counts))
    ids = rank[inverse.reshape(labels.shape)]  # [H, W]
    if max_tokens is None or len(counts) <= max_tokens:
        return ids
    return relabel_by_area(merge_dropped(ids, max_tokens))


def merge_dropped(ids: np.ndarray, keep: int) -> np.ndarray:
    """Merge every segment with id >= `keep` into the lowest-id (largest) kept segment it touches.

    Args:
        ids: segment ids [H, W] ranked by area (0 = largest).
        keep: number of segments kept (ids 0..keep-1).

    Returns:
        ids [H, W] with values in 0..keep-1.
    """
    ids = ids.copy()
    while (ids >= keep).any():
        a = np.concatenate([ids[:, :-1].ravel(), ids[:-1, :].ravel()])  # left / top of each pixel pair
        b = np.concatenate([ids[:, 1:].ravel(), ids[1:, :].ravel()])  # right / bottom
        src, dst = np.concatenate([a, b]), np.concatenate([b, a])  # both directions
        touch = (src >= keep) & (dst < keep)
        target = np.full(int(ids.max()) + 1, keep, dtype=np.int64)  # `keep` = no kept neighbour yet
        np.minimum.at(target, src[touch], dst[touch])
        merged = (ids >= keep) & (target[ids] < keep)
        ids[merged] = target[ids[merged]]
    return ids


def images_to_numpy(images: torch.Tensor) -> np.ndarray:
    """Images [B, C, H, W] in [-1, 1] -> float64 [B, H, W, C] in [0, 1] (scikit-image's convention)."""
    return ((images.detach().float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().double().numpy()


class Segmenter(nn.Module):
    """Base class: `segment(images)` -> ids long [B, H, W], contiguous, sorted by area, tiling each image.

    Subclasses implement `_segment_one(image [H, W, C] float64 in [0, 1]) -> integer labels [H, W]`
    (any values) or override `segment`. Constructor kwargs are primitives stored in `self.config`.

    Args:
        max_tokens: most segments per image (None: no limit); extra segments are merged (module docstring).
    """

    name: ClassVar[str]
    config: dict[str, Any]

    def __init__(self, max_tokens: int | None = None):
        super().__init__()
        if max_tokens is not None and max_tokens < 1:
            raise ConfigError(f"max_tokens={max_tokens} must be >= 1 (or None for no limit)")
        self.max_tokens = max_tokens

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> segment ids long [B, H, W] on the images' device."""
        check_images(images)
        labels = [self._segment_one(image) for image in images_to_numpy(images)]
        return self._finish(labels, images.device)

    def _segment_one(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _finish(self, labels: list[np.ndarray], device: torch.device) -> torch.Tensor:
        """Per-image labels -> ids long [B, H, W]: ranked by area and truncated to `max_tokens`."""
        ids = np.stack([relabel_by_area(np.asarray(lab), self.max_tokens) for lab in labels])
        return torch.from_numpy(ids).to(device)


def check_images(images: torch.Tensor) -> None:
    """Raise ConfigError unless `images` is a float batch [B, C, H, W]."""
    if images.ndim != 4 or not images.is_floating_point():
        raise ConfigError(
            f"segment expects float images [B, C, H, W] in [-1, 1], got {tuple(images.shape)} {images.dtype}"
        )


class BoundaryNet(nn.Module):
    """Small fully convolutional boundary predictor: images [B, C, H, W] -> logits [B, H, W].

    `depth` 3x3 convs (the receptive field is 2 * depth + 1 pixels) of `width` channels with SiLU, then
    a 1x1 conv to one logit per pixel.
    """

    def __init__(self, in_channels: int = 3, width: int = 16, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Conv2d(in_channels if i == 0 else width, width, 3, padding=1), nn.SiLU()]
        layers.append(nn.Conv2d(width, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)[:, 0]  # [B, C, H, W] -> [B, H, W]


class BoundarySegmenter(Segmenter):
    """Learnt boundary map -> connected components of non-boundary pixels -> watershed (Chen et al., 2024).

    Args:
        in_channels: image channels.
        width: channels of the boundary net.
        depth: 3x3 conv layers of the boundary net.
        threshold: pixels with boundary probability < threshold are interior pixels (the markers).
        min_marker_area: connected components of interior pixels smaller than this are not markers (their
            pixels are flooded from neighbouring basins), which drops specks from a noisy boundary map.
        compactness: > 0 runs the compact watershed (Neubert & Protzel, 2014), which adds this times the
            distance from the flooding marker to the probability, so a boundary band of near-equal
            probability is split half-way between the basins on its two sides.
        max_tokens: most segments per image (None: no limit).
    """

    name = "boundary"

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 16,
        depth: int = 3,
        threshold: float = 0.5,
        min_marker_area: int = 1,
        compactness: float = 0.0,
        max_tokens: int | None = None,
    ):
        super().__init__(max_tokens)
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"threshold={threshold} must be a probability in (0, 1), e.g. 0.5")
        if compactness < 0:
            raise ConfigError(f"compactness={compactness} must be >= 0 (0: plain watershed)")
        if depth < 1 or width < 1 or min_marker_area < 1:
            raise ConfigError(
                f"depth={depth}, width={width} and min_marker_area={min_marker_area} must all be >= 1"
            )
        self.config = {
            "in_channels": in_channels,
            "width": width,
            "depth": depth,
            "threshold": threshold,
            "min_marker_area": min_marker_area,
            "compactness": compactness,
            "max_tokens": max_tokens,
        }
        self.in_channels = in_channels
        self.threshold = threshold
        self.min_marker_area = min_marker_area
        self.net = BoundaryNet(in_channels, width, depth)

    def boundary_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> boundary logits [B, H, W] (differentiable)."""
        check_images(images)
        if images.shape[1] != self.in_channels:
            raise ConfigError(
                f"images have {images.shape[1]} channels but the boundary predictor expects "
                f"in_channels={self.in_channels}"
            )
        return self.net(images)

    def loss(self, images: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """BCE between the predicted boundary map and the thick boundaries of `segments` [B, H, W]."""
        target = boundary_map(segments).float()  # [B, H, W]
        return F.binary_cross_entropy_with_logits(self.boundary_logits(images).float(), target)

    @torch.no_grad()
    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B, C, H, W] in [-1, 1] -> segment ids long [B, H, W] (watershed of the boundary map)."""
        probs = torch.sigmoid(self.boundary_logits(images).float()).cpu().numpy()  # [B, H, W]
        return self._finish([self.watershed(p) for p in probs], images.device)

    def watershed(self, prob: np.ndarray) -> np.ndarray:
        """Boundary probabilities [H, W] -> labels [H, W] (>= 1) covering every pixel.

        Markers are the 4-connected components of pixels with prob < threshold (at least
        `min_marker_area` pixels); the watershed floods the probability map from them, so boundary
        pixels join the basin they are reached from first. No marker (all boundary) -> one segment.
        """
        from skimage.measure import label  # imported lazily: scikit-image is slow to import
        from skimage.segmentation import watershed

        markers = label(prob < self.threshold, connectivity=1)  # [H, W], 0 = boundary
        if self.min_marker_area > 1:
            areas = np.bincount(markers.ravel())
            small = areas < self.min_marker_area
            small[0] = True  # label 0 is not a marker either way
            markers[small[markers]] = 0
        if not markers.any():
            return np.ones(prob.shape, dtype=np.int64)
        return watershed(prob, markers, connectivity=1, compactness=self.config["compactness"])

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write `segmenter.json` and `segmenter.safetensors` into the folder `path`."""
        path = Path(path)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(path / SEGMENTER_WEIGHTS, lambda tmp: save_file(state, tmp))
        config = json.dumps({"name": self.name, **self.config}, indent=2)
        atomic_write(path / SEGMENTER_CONFIG, lambda tmp: Path(tmp).write_text(config))

    def load_weights(self, path: str | os.PathLike) -> None:
        """Load a boundary predictor saved with `save_pretrained` into this one (same architecture)."""
        config_file = Path(path) / SEGMENTER_CONFIG
        if not config_file.is_file():
            raise ConfigError(
                f"no boundary predictor at '{path}' (missing {SEGMENTER_CONFIG}); train one first with "
                f"`python scripts/train_boundary.py --out {path}`, or fix boundary_path"
            )
        saved = json.loads(config_file.read_text())
        for key in ("in_channels", "width", "depth"):
            if saved.get(key) != self.config[key]:
                raise ConfigError(
                    f"the boundary predictor at '{path}' has {key}={saved.get(key)} but this segmenter has "
                    f"{key}={self.config[key]}; set segmenter_args.{key}={saved.get(key)} to match"
                )
        state = load_file(str(Path(path) / SEGMENTER_WEIGHTS))
        self.load_state_dict(state)


def load_boundary_segmenter(path: str | os.PathLike, **overrides: Any) -> BoundarySegmenter:
    """A `BoundarySegmenter` rebuilt from a folder written by `save_pretrained` (kwargs override config)."""
    config_file = Path(path) / SEGMENTER_CONFIG
    if not config_file.is_file():
        raise ConfigError(f"no boundary predictor at '{path}' (missing {SEGMENTER_CONFIG})")
    config = json.loads(config_file.read_text())
    config.pop("name", None)
    segmenter = BoundarySegmenter(**{**config, **overrides})
    segmenter.load_weights(path)
    return segmenter.eval()


class SLICSegmenter(Segmenter):
    """SLIC superpixels (Achanta et al., 2012) via `skimage.segmentation.slic`.

    Args:
        n_segments: approximate number of superpixels.
        compactness: colour vs space trade-off (higher: squarer superpixels); RGB is compared in Lab.
        sigma: Gaussian pre-smoothing width in pixels.
        max_tokens: most segments per image (None: no limit).
    """

    name = "slic"

    def __init__(
        self,
        n_segments: int = 16,
        compactness: float = 10.0,
        sigma: float = 0.0,
        max_tokens: int | None = None,
    ):
        super().__init__(max_tokens)
        if n_segments < 1:
            raise ConfigError(f"n_segments={n_segments} must be >= 1")
        self.config = {
            "n_segments": n_segments,
            "compactness": compactness,
            "sigma": sigma,
            "max_tokens": max_tokens,
        }

    def _segment_one(self, image: np.ndarray) -> np.ndarray:
        from skimage.segmentation import slic

        grey = image.shape[-1] == 1
        return slic(
            image[..., 0] if grey else image,
            n_segments=self.config["n_segments"],
            compactness=self.config["compactness"],
            sigma=self.config["sigma"],
            channel_axis=None if grey else -1,
            start_label=0,
        )


class FelzenszwalbSegmenter(Segmenter):
    """Graph-based segmentation (Felzenszwalb & Huttenlocher, 2004) via `skimage.segmentation.felzenszwalb`.

    Args:
        scale: higher means larger segments.
        sigma: Gaussian pre-smoothing width in pixels.
        min_size: smallest segment in pixels (enforced in post-processing).
        max_tokens: most segments per image (None: no limit).
    """

    name = "felzenszwalb"

    def __init__(
        self, scale: float = 100.0, sigma: float = 0.5, min_size: int = 8, max_tokens: int | None = None
    ):
        super().__init__(max_tokens)
        self.config = {"scale": scale, "sigma": sigma, "min_size": min_size, "max_tokens": max_tokens}

    def _segment_one(self, image: np.ndarray) -> np.ndarray:
        from skimage.segmentation import felzenszwalb

        return felzenszwalb(
            image,
            scale=self.config["scale"],
            sigma=self.config["sigma"],
            min_size=self.config["min_size"],
            channel_axis=-1,
        )


SEGMENTERS: dict[str, type[Segmenter]] = {
    cls.name: cls for cls in (BoundarySegmenter, SLICSegmenter, FelzenszwalbSegmenter)
}
"""Registry: segmenter name -> class."""


def build_segmenter(name: str, **kwargs: Any) -> Segmenter:
    """Instantiate `SEGMENTERS[name]` with `kwargs`; ConfigError naming the field for unknown ones."""
    if name not in SEGMENTERS:
        raise ConfigError(f"unknown segmenter '{name}'; known: {sorted(SEGMENTERS)}")
    params = set(inspect.signature(SEGMENTERS[name]).parameters)
    unknown = sorted(set(kwargs) - params)
    if unknown:
        raise ConfigError(
            f"unknown argument(s) {unknown} in segmenter_args for the '{name}' segmenter; "
            f"valid: {sorted(params)}"
        )
    return SEGMENTERS[name](**kwargs)
