"""Fréchet distance: closed-form cases, singular covariances, the sqrtm fallback and the bootstrap standard
error."""

import numpy as np
import pytest
import torch

from mmar.errors import ConfigError
from mmar.eval import frechet
from mmar.eval.frechet import bootstrap_fd_se, feature_statistics, frechet_distance


def random_covariance(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_identical_statistics_give_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), random_covariance(rng, 16)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_diagonal_gaussians_match_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    s1, s2 = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)


def test_one_dimensional_case_with_scalars():
    # d^2 = (m1 - m2)^2 + (s1 - s2)^2 for standard deviations s1, s2
    assert frechet_distance(1.0, 4.0, -2.0, 9.0) == pytest.approx(9.0 + 1.0, rel=1e-12)


def test_rotation_invariance_and_symmetry():
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = random_covariance(rng, 6), random_covariance(rng, 6)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    d = frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(d, rel=1e-8)
    assert frechet_distance(q @ mu1, q @ s1 @ q.T, q @ mu2, q @ s2 @ q.T) == pytest.approx(d, rel=1e-8)


def test_singular_covariances_give_finite_answer():
    rng = np.random.default_rng(3)
    mu1, s1 = feature_statistics(rng.normal(size=(5, 32)))  # rank 4 of 32
    mu2, s2 = feature_statistics(rng.normal(size=(5, 32)) + 1.0)
    d = frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(d) and d > 0
    zero = np.zeros((3, 3))
    assert frechet_distance(np.zeros(3), zero, np.ones(3), np.eye(3)) == pytest.approx(6.0)


def test_fallback_adds_eps_when_sqrtm_fails(monkeypatch):
    calls = []
    real_sqrtm = frechet.linalg.sqrtm

    def flaky_sqrtm(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(frechet.linalg, "sqrtm", flaky_sqrtm)
    s1, s2 = np.diag([1.0, 2.0]), np.diag([3.0, 4.0])
    d = frechet_distance(np.zeros(2), s1, np.zeros(2), s2, eps=1e-6)
    expected = (1 - np.sqrt(3)) ** 2 + (np.sqrt(2) - 2) ** 2
    assert len(calls) == 2 and np.allclose(np.diag(calls[1]), [1 * 3, 2 * 4], atol=1e-5)
    assert d == pytest.approx(expected, abs=1e-5)


def test_large_imaginary_part_raises(monkeypatch):
    monkeypatch.setattr(frechet, "_sqrtm_product", lambda *a, **k: np.eye(2) * (1 + 1j))
    with pytest.raises(ValueError, match="imaginary"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2))


def test_feature_statistics_matches_numpy_and_accepts_torch():
    feats = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    mu, sigma = feature_statistics(feats)
    assert mu.dtype == np.float64 and sigma.shape == (4, 4)
    np.testing.assert_allclose(mu, feats.double().mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats.double().numpy(), rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(feats[:1])


def test_sample_statistics_approach_closed_form():
    rng = np.random.default_rng(4)
    a = rng.normal(0.0, 1.0, size=(20000, 3))
    b = rng.normal(1.0, 2.0, size=(20000, 3))
    d = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert d == pytest.approx(3 * 1.0 + 3 * 1.0, rel=0.05)  # |mu|^2 + sum (1 - 2)^2


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="mismatched"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_bootstrap_standard_error_matches_the_spread_over_independent_samples():
    """The bootstrap SE of one sample's FD is close to the standard deviation of the FD over independent
    samples of the same size, is reproducible by seed, and halves with four times the samples."""
    rng = np.random.default_rng(5)
    mu_ref, sigma_ref = np.zeros(3), np.eye(3)
    draw = lambda n: rng.normal(0.5, 1.5, size=(n, 3))
    fd = lambda x: frechet_distance(*feature_statistics(x), mu_ref, sigma_ref)
    spread = np.std([fd(draw(300)) for _ in range(200)], ddof=1)
    sample = draw(300)
    se = bootstrap_fd_se(sample, mu_ref, sigma_ref, resamples=200, seed=0)
    assert 0.6 < se / spread < 1.6
    assert bootstrap_fd_se(torch.from_numpy(sample), mu_ref, sigma_ref, resamples=200, seed=0) == se
    assert bootstrap_fd_se(sample, mu_ref, sigma_ref, resamples=200, seed=1) != se
    larger = bootstrap_fd_se(draw(1200), mu_ref, sigma_ref, resamples=200, seed=0)
    assert 0.3 < larger / se < 0.75  # 1/2 expected
    with pytest.raises(ConfigError, match="N >= 2"):
        bootstrap_fd_se(sample[:1], mu_ref, sigma_ref)
