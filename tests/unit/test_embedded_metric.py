"""Embedded digits metric: the classifier trains, is cached, and separates real digits from noise."""

import pytest
import torch

from mmar.data import digits_split
from mmar.errors import ConfigError
from mmar.eval import DigitsMetrics, embedded
from mmar.eval.embedded import classifier_cache_path, load_digits_classifier


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mmar_cache")


@pytest.fixture(scope="module")
def metrics(cache_dir):
    rng_state = torch.get_rng_state()
    metrics = DigitsMetrics(image_size=32, cache_dir=cache_dir)  # trains once (a few seconds)
    assert torch.equal(torch.get_rng_state(), rng_state)  # training leaves the global RNG alone
    return metrics


def test_classifier_trains_with_high_val_accuracy(metrics, cache_dir):
    assert metrics.classifier_info["loaded_from_cache"] is False
    assert metrics.classifier_val_accuracy > 0.9
    assert classifier_cache_path(32, 0.1, 0, cache_dir).is_file()


def test_cached_classifier_is_reused(metrics, cache_dir, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(embedded, "train_digits_classifier", no_training)
    model, info = load_digits_classifier(32, 0.1, 0, cache_dir=cache_dir)
    assert info["loaded_from_cache"] is True
    assert info["val_accuracy"] == pytest.approx(metrics.classifier_val_accuracy)
    for name, value in metrics.classifier.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MMAR_CACHE", str(tmp_path))
    path = classifier_cache_path(16, 0.1, 3)
    assert path.parent.parent == tmp_path and "s16" in path.name and "seed3" in path.name


def test_real_digits_score_well_and_noise_scores_badly(metrics):
    train_x, train_y, _, _ = digits_split(32, 0.1, 0)
    real_x, real_y = train_x[:180], train_y[:180]
    noise = torch.rand(180, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    labels = torch.arange(180) % 10

    assert metrics.digits_class_accuracy(metrics.val_images, metrics.val_labels) > 0.9
    assert metrics.digits_classifier_fd(metrics.val_images) == pytest.approx(0.0, abs=1e-6)
    real = metrics.compute(real_x, real_y)
    fake = metrics.compute(noise, labels)
    assert real["digits_class_accuracy"] > 0.9 and fake["digits_class_accuracy"] < 0.5
    assert real["digits_classifier_fd"] < 5.0 < 50.0 < fake["digits_classifier_fd"]
    assert 0 < metrics.train_val_fd < real["digits_classifier_fd_real_same_n"] < 5.0


def test_bad_inputs_give_config_errors(metrics):
    with pytest.raises(ConfigError, match="image_size"):
        metrics.features(torch.zeros(4, 1, 16, 16))
    with pytest.raises(ConfigError, match=r"\[-1, 1\]"):
        metrics.features(torch.full((4, 1, 32, 32), 255.0))
    with pytest.raises(ConfigError, match="one label per image"):
        metrics.digits_class_accuracy(torch.zeros(4, 1, 32, 32), torch.zeros(3, dtype=torch.long))
