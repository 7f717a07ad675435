"""Image metrics of the ADM evaluator (Dhariwal & Nichol, 2021): FID, sFID, Inception Score, precision
and recall, from the Inception features of `mmar.eval.inception`.

- FID: the Fréchet distance between Gaussians fitted to pool_3 features of the samples and of the
  reference batch; sFID the same on the spatial features (`mmar.eval.frechet`, float64).
- Inception Score: exp(E_x KL(p(y|x) || p(y))) on each split of 5,000 samples (ADM's split size, so a
  50k run has 10), averaged over the splits.
- Precision / recall (Kynkäänniemi et al., 2019, k = 3): a sample is precise when it lies within the
  k-th nearest-neighbour radius of some reference feature; recall swaps the roles.

Reference statistics are ADM-style `.npz` files: `mu`, `sigma` (pool_3), `mu_s`, `sigma_s` (spatial);
ADM's reference batches also hold the images as `arr_0`, from which the pool features for
precision/recall are computed; references computed here store them as `pool`. Images enter as uint8,
converted from [-1, 1] floats by rounding (`to_uint8`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from mmar.data.image_folder import _UNREADABLE, is_image_file
from mmar.errors import ConfigError
from mmar.eval.frechet import feature_statistics, frechet_distance
from mmar.eval.inception import InceptionFeatures
from mmar.io import load_uint8_npz, save_npz

log = logging.getLogger(__name__)

IS_SPLIT_SIZE = 5000  # ADM: the Inception Score of each 5,000 samples, averaged
PR_NEIGHBOURS = 3  # ADM / Kynkäänniemi et al.: the radius is the 3rd nearest neighbour's distance


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] [N, C, H, W] -> uint8 by rounding (ADM's convention, not truncation)."""
    return ((images.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def inception_score(logits: np.ndarray | torch.Tensor, split_size: int = IS_SPLIT_SIZE) -> float:
    """exp(mean_x KL(p(y|x) || p(y))) of each consecutive split of `split_size` rows of logits [N, K],
    averaged over the splits (float64)."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    scores = []
    for part in logits.split(split_size):
        log_p = part.log_softmax(dim=1)  # (n, K)
        log_marginal = log_p.exp().mean(0).log()  # (K,)
        kl = (log_p.exp() * (log_p - log_marginal)).sum(1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores))


def _pairwise_distances(a: torch.Tensor, b: torch.Tensor, chunk: int = 1024) -> Iterator[torch.Tensor]:
    """Rows of the Euclidean distance matrix between a [N, D] and b [M, D], `chunk` rows at a time."""
    for start in range(0, len(a), chunk):
        yield torch.cdist(a[start : start + chunk], b)  # (chunk, M)


def manifold_radii(features: torch.Tensor, k: int = PR_NEIGHBOURS) -> torch.Tensor:
    """[N] distance of each point to its k-th nearest neighbour in the set (itself excluded)."""
    if len(features) <= k:
        raise ConfigError(f"precision/recall needs more than k={k} points per set, got {len(features)}")
    # kth smallest including the point itself (distance 0) at position 0
    return torch.cat([d.kthvalue(k + 1, dim=1).values for d in _pairwise_distances(features, features)])


def coverage_of(manifold: torch.Tensor, radii: torch.Tensor, points: torch.Tensor) -> float:
    """Fraction of `points` inside the union of the balls around `manifold` with `radii`."""
    inside = [(d <= radii[None]).any(1) for d in _pairwise_distances(points, manifold)]
    return torch.cat(inside).double().mean().item()


def precision_recall(
    reference: np.ndarray | torch.Tensor, samples: np.ndarray | torch.Tensor, k: int = PR_NEIGHBOURS
) -> tuple[float, float]:
    """Improved precision and recall of `samples` [M, D] against `reference` [N, D] features."""
    reference = torch.as_tensor(np.asarray(reference), dtype=torch.float64)
    samples = torch.as_tensor(np.asarray(samples), dtype=torch.float64)
    precision = coverage_of(reference, manifold_radii(reference, k), samples)
    recall = coverage_of(samples, manifold_radii(samples, k), reference)
    return precision, recall


def image_batches(source: str | Path, batch_size: int = 100) -> tuple[int, Iterator[torch.Tensor]]:
    """(count, uint8 batches [B, 3, H, W]) of a folder of image files (sorted, recursive; unreadable ones
    skipped and counted) or of an `.npz` (ADM's `arr_0`, or `images` as scripts/sample.py writes:
    uint8 [N, H, W, C])."""
    source = Path(source)
    if source.suffix == ".npz":
        array = load_uint8_npz(source, ("arr_0", "images"), "N, H, W, C")
        tensor = torch.from_numpy(array).permute(0, 3, 1, 2)
        return len(tensor), iter(tensor.split(batch_size))
    if not source.is_dir():
        raise ConfigError(f"{source} is neither a folder of images nor an .npz of uint8 images")
    files = sorted(p for p in source.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise ConfigError(f"no image files under {source}")
    return len(files), _read_files(files, batch_size)


def _read_files(files: list[Path], batch_size: int) -> Iterator[torch.Tensor]:
    batch, skipped = [], 0
    for path in files:
        try:
            with Image.open(path) as image:
                batch.append(torch.from_numpy(np.asarray(image.convert("RGB"))).permute(2, 0, 1))
        except _UNREADABLE as err:
            skipped += 1
            log.warning("skipping unreadable image %s (%s)", path, err)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)
    if skipped:
        log.warning("skipped %d unreadable images of %d", skipped, len(files))


def extract_features(
    extractor: InceptionFeatures, batches: Iterable[torch.Tensor], total: int | None = None
) -> dict[str, np.ndarray]:
    """Concatenated {"pool", "logits", "spatial"} features of uint8 batches, with a progress bar."""
    parts: dict[str, list[torch.Tensor]] = {}
    with tqdm(total=total, desc="inception features", unit="img") as bar:
        for batch in batches:
            for name, value in extractor(batch).items():
                parts.setdefault(name, []).append(value.cpu())
            bar.update(len(batch))
    if not parts:
        raise ConfigError("no images to extract features from")
    return {name: torch.cat(values).double().numpy() for name, values in parts.items()}


def reference_from_features(features: dict[str, np.ndarray], keep_pool: bool = True) -> dict[str, np.ndarray]:
    """ADM's reference statistics (mu, sigma, mu_s, sigma_s) of features, with the pool features for
    precision/recall unless `keep_pool` is False."""
    mu, sigma = feature_statistics(features["pool"])
    mu_s, sigma_s = feature_statistics(features["spatial"])
    reference = {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}
    return {**reference, "pool": features["pool"].astype(np.float32)} if keep_pool else reference


def load_reference(
    source: str | Path, extractor: InceptionFeatures | None = None, batch_size: int = 100
) -> dict[str, np.ndarray]:
    """Reference statistics from an ADM-style `.npz` (mu, sigma, optionally mu_s, sigma_s, pool, arr_0),
    or computed from a folder of images. An `.npz` with images but no `pool` gets its pool features
    computed with `extractor` (for precision/recall); without an extractor they are left out."""
    source, stored = Path(source), {}
    if source.suffix == ".npz":
        if not source.is_file():
            raise ConfigError(f"reference batch {source} does not exist")
        with np.load(source) as data:
            stored = {k: data[k] for k in ("mu", "sigma", "mu_s", "sigma_s", "pool") if k in data}
            has_images = "arr_0" in data or "images" in data
        if "mu" in stored and ("pool" in stored or not has_images or extractor is None):
            return stored
        if not has_images:
            raise ConfigError(f"{source} has neither statistics (mu, sigma) nor images (arr_0)")
    if extractor is None:
        raise ConfigError(f"computing reference statistics from {source} needs an Inception extractor")
    total, batches = image_batches(source, batch_size)
    computed = reference_from_features(extract_features(extractor, batches, total))
    return {**computed, **stored}  # the batch's own statistics win: published numbers used them


def save_reference(path: str | Path, reference: dict[str, np.ndarray]) -> None:
    """Write reference statistics as an ADM-style `.npz` (atomically)."""
    save_npz(path, **reference)


def image_metrics(features: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, float]:
    """FID, sFID (when the reference has mu_s), IS, and precision/recall (when it has pool features) of
    sample features against reference statistics."""
    mu, sigma = feature_statistics(features["pool"])
    metrics = {
        "fid": frechet_distance(mu, sigma, reference["mu"], reference["sigma"]),
        "inception_score": inception_score(features["logits"]),
    }
    if "mu_s" in reference:
        mu_s, sigma_s = feature_statistics(features["spatial"])
        metrics["sfid"] = frechet_distance(mu_s, sigma_s, reference["mu_s"], reference["sigma_s"])
    if "pool" in reference:
        metrics["precision"], metrics["recall"] = precision_recall(reference["pool"], features["pool"])
    return metrics
