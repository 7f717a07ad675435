"""The Fréchet distance between two Gaussians fitted to feature sets (Heusel et al. 2017, "GANs Trained
by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium").

    d^2 = |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))

Feature-agnostic: FID applies it to Inception pool features, FVD to I3D features, the embedded digits
metric to a small classifier's features. Computed in float64 with `scipy.linalg.sqrtm`, with the usual
fallback of pytorch-fid / ADM's evaluator: when the product of the covariances is (near) singular, eps*I
is added to both; a negligible imaginary part from numerical error is dropped.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
from scipy import linalg

from mmar.errors import ConfigError

log = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor | float


def feature_statistics(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and unbiased covariance [D, D] (float64) of features [N, D], N >= 2."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    features = np.asarray(features, dtype=np.float64)
    if features.ndim == 1:
        features = features[:, None]  # [N] -> [N, 1]
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"feature_statistics needs features of shape [N >= 2, D], got {features.shape}")
    mu = features.mean(axis=0)  # [D]
    sigma = np.cov(features, rowvar=False).reshape(features.shape[1], features.shape[1])  # [D, D]
    return mu, sigma


def frechet_distance(
    mu1: ArrayLike,
    sigma1: ArrayLike,
    mu2: ArrayLike,
    sigma2: ArrayLike,
    eps: float = 1e-6,
    max_imag: float = 1e-3,
) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    Args:
        mu1, mu2: means [D] (a scalar for D = 1).
        sigma1, sigma2: covariances [D, D] (a scalar variance for D = 1).
        eps: diagonal offset added to both covariances when sqrtm of their product fails.
        max_imag: largest imaginary part on the diagonal of the matrix square root that is dropped as
            numerical error; a larger one raises ValueError.

    Returns:
        The distance as a Python float (float64 arithmetic).
    """
    mu1, mu2 = _as_vector(mu1), _as_vector(mu2)
    sigma1, sigma2 = _as_matrix(sigma1), _as_matrix(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(
            f"mismatched statistics: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, "
            f"sigma2 {sigma2.shape}; both sides need mu [D] and sigma [D, D] from the same feature extractor"
        )
    diff = mu1 - mu2  # [D]
    covmean = _sqrtm_product(sigma1, sigma2)
    if covmean is None:
        log.warning("Fréchet distance: singular covariance product; adding %g to the diagonals", eps)
        offset = np.eye(len(mu1)) * eps
        covmean = _sqrtm_product(sigma1 + offset, sigma2 + offset, check=False)
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        if imag > max_imag:
            raise ValueError(f"Fréchet distance: sqrtm has an imaginary component of {imag:.3g} > {max_imag}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def bootstrap_fd_se(
    features: np.ndarray | torch.Tensor,
    mu_ref: ArrayLike,
    sigma_ref: ArrayLike,
    resamples: int = 50,
    seed: int = 0,
) -> float:
    """Bootstrap standard error of the Fréchet distance of features [N, D] to a reference N(mu_ref,
    sigma_ref): the standard deviation (ddof 1) of the distance over `resamples` resamplings of the N
    feature rows with replacement, drawn from a generator seeded `seed`.

    Only the generated side is resampled: the reference statistics are fixed, as when two samplers are
    scored against the same reference. The distance of a resample is biased upwards (repeated rows shrink
    its spread), but its spread is what the standard error of the distance of N samples measures.
    """
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2 or resamples < 2:
        raise ConfigError(
            f"the bootstrap FD standard error needs features [N >= 2, D] and resamples >= 2, got "
            f"{features.shape} and {resamples}; pass more samples or resamples"
        )
    rng = np.random.default_rng(seed)
    n = len(features)
    distances = [
        frechet_distance(*feature_statistics(features[rng.integers(0, n, n)]), mu_ref, sigma_ref)
        for _ in range(resamples)
    ]
    return float(np.std(distances, ddof=1))


def _sqrtm_product(sigma1: np.ndarray, sigma2: np.ndarray, check: bool = True) -> np.ndarray | None:
    """sqrtm(sigma1 @ sigma2), or None (with `check`) when it is not finite or not a square root."""
    product = sigma1 @ sigma2  # [D, D]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on singular input; we check the result instead
        covmean = linalg.sqrtm(product)
    if not check:
        return covmean
    if not np.isfinite(covmean).all():
        return None
    residual = np.abs(covmean @ covmean - product).max()
    return covmean if residual <= 1e-6 * max(1.0, np.abs(product).max()) else None


def _as_vector(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.atleast_1d(np.asarray(x, dtype=np.float64))


def _as_matrix(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.atleast_2d(np.asarray(x, dtype=np.float64))


class ReferenceFD:
    """What the embedded clip metrics (moving digits, notes) share: the Fréchet distance of classifier
    features to the reference clips' statistics, and the real-data floor at a sample count.

    Subclasses set `batch_size`, `reference_mu`, `reference_sigma` and `_real_fd_at = {}`, and define
    `features(clips)`, `_train_dataset(num)` (a dataset of at least `num` real train clips) and
    `_clips(dataset, stop, start)` (its clips `start` to `stop` as one tensor).
    """

    def _fd(self, features: torch.Tensor) -> float:
        if len(features) < 2:
            raise ConfigError(
                f"the classifier FD needs at least 2 clips, got {len(features)}; pass more samples"
            )
        mu, sigma = feature_statistics(features)
        return frechet_distance(mu, sigma, self.reference_mu, self.reference_sigma)

    def real_fd_at(self, num_samples: int) -> float:
        """FD of the first `num_samples` real train clips vs the reference: the floor at that count.

        FD is biased upwards for small sample sets, so compare a generator's FD with this number at the
        same count. The train clips are the ones a generator trained on the same data module sees.
        """
        num = max(num_samples, 2)
        if num not in self._real_fd_at:
            dataset = self._train_dataset(num)
            features = [  # streamed: n real clips may not fit in memory
                self.features(self._clips(dataset, min(begin + self.batch_size, num), begin))
                for begin in range(0, num, self.batch_size)
            ]
            self._real_fd_at[num] = self._fd(torch.cat(features))
        return self._real_fd_at[num]
