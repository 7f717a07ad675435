"""Embedded moving-digits metric: the two-headed classifier trains, is cached, and reads digit and motion.

A quick recipe (`SMALL`, 16 x 16 clips, a few seconds on one thread) stands in for the standard one; the
`slow` test trains the standard classifier and checks its val accuracies.
"""

import numpy as np
import pytest
import torch

from mmar.data.video import MovingDigitsDataModule, direction_of
from mmar.errors import ConfigError
from mmar.eval import video
from mmar.eval.video import (
    MovingDigitsClassifier,
    MovingDigitsMetrics,
    classifier_cache_path,
    load_video_classifier,
    temporal_consistency_of,
    train_video_classifier,
)

SIZE, FRAMES = 16, 9
SMALL = {"num_clips": 1024, "num_val_clips": 256, "epochs": 4, "batch_size": 32}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mmar_cache")


@pytest.fixture(scope="module")
def metrics(cache_dir):
    rng_state = torch.get_rng_state()
    metrics = MovingDigitsMetrics(  # trains once (a few seconds)
        image_size=SIZE, cache_dir=cache_dir, num_reference=256, train_options=SMALL
    )
    assert torch.equal(torch.get_rng_state(), rng_state)  # training leaves the global RNG alone
    return metrics


@pytest.fixture(scope="module")
def train_clips():
    """Train clips 256..511 (`real_fd_at` uses the first 256): videos, digits, directions, trajectories."""
    data = MovingDigitsDataModule(SIZE, FRAMES, num_clips_train=512, num_clips_val=1)
    data.setup()
    items = [data.train_dataset[i] for i in range(256, 512)]
    positions = np.stack([data.train_dataset.trajectory(i)[1] for i in range(256, 512)])  # [N, T, 2]
    return (
        torch.stack([item["video"] for item in items]),
        torch.stack([item["digit"] for item in items]),
        torch.stack([item["direction"] for item in items]),
        positions,
    )


def test_classifier_shapes():
    model = MovingDigitsClassifier(num_frames=5).eval()
    for size in (16, 32):
        clips = torch.rand(3, 1, 5, size, size) * 2 - 1
        digit_logits, direction_logits = model(clips)
        assert digit_logits.shape == (3, 10) and direction_logits.shape == (3, 8)
        assert model.frame_logits(clips).shape == (3, 5, 10)
        assert model.features(clips).shape == (3, 128)
        assert torch.allclose(model.frame_logits(clips).mean(dim=1), digit_logits, atol=1e-6)
    with pytest.raises(ConfigError, match="num_frames"):
        model(torch.zeros(3, 1, 9, 16, 16))
    with pytest.raises(ConfigError, match="num_frames"):
        MovingDigitsClassifier(num_frames=1)


def test_temporal_consistency_of_counts_the_most_common_digit():
    logits = torch.zeros(2, 4, 10)
    logits[0, :, 3] = 1  # always a 3
    logits[1, :, 5] = 1
    logits[1, 3, 7] = 2  # three 5s and a 7
    assert temporal_consistency_of(logits).tolist() == [1.0, 0.75]


def test_small_classifier_trains_and_is_cached(metrics, cache_dir):
    info = metrics.classifier_info
    assert info["loaded_from_cache"] is False
    assert metrics.classifier_val_digit_accuracy > 0.5 and metrics.classifier_val_direction_accuracy > 0.5
    path = classifier_cache_path(SIZE, FRAMES, 2, 0.1, 0, cache_dir, train_options=SMALL)
    assert path.is_file() and "_opts" in path.name


def test_cached_classifier_is_reused(metrics, cache_dir, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the cached classifier should have been loaded")

    monkeypatch.setattr(video, "train_video_classifier", no_training)
    model, info = load_video_classifier(SIZE, FRAMES, cache_dir=cache_dir, train_options=SMALL)
    assert info["loaded_from_cache"] is True
    assert info["val_digit_accuracy"] == pytest.approx(metrics.classifier_val_digit_accuracy)
    clips = metrics.val_videos[:32]
    with torch.no_grad():
        for ours, theirs in zip(model(clips), metrics.classifier(clips)):
            assert torch.equal(ours, theirs)
    with pytest.raises(ConfigError, match="unknown train_options"):
        load_video_classifier(SIZE, FRAMES, cache_dir=cache_dir, train_options={"epoch": 1})


def test_cache_path_names_the_distribution(tmp_path, monkeypatch):
    monkeypatch.setenv("MMAR_CACHE", str(tmp_path))
    path = classifier_cache_path()
    assert (
        path == tmp_path / "embedded" / "moving_digits_classifier_v1_s32_t9_speed2_val0.1_seed0.safetensors"
    )
    assert classifier_cache_path(digit_size=16) == path  # the default digit size adds nothing
    assert "_d12" in classifier_cache_path(digit_size=12).name
    assert classifier_cache_path(train_options={"epochs": 1}) != classifier_cache_path(
        train_options={"epochs": 2}
    )


def test_training_is_deterministic():
    tiny = {"image_size": SIZE, "num_clips": 128, "num_val_clips": 32, "epochs": 1, "batch_size": 32}
    first, _ = train_video_classifier(**tiny)
    second, _ = train_video_classifier(**tiny)
    for name, value in first.state_dict().items():
        assert torch.equal(second.state_dict()[name], value), name


def test_real_clips_score_well_and_noise_scores_badly(metrics, train_clips):
    held_out = metrics.compute(metrics.val_videos, metrics.val_digits)  # the reference clips themselves
    assert "video_motion_accuracy" not in held_out  # no directions asked for
    assert held_out["video_classifier_fd"] == pytest.approx(0.0, abs=1e-6)
    assert metrics.motion_accuracy(metrics.val_videos, metrics.val_directions) > 0.5
    videos, digits, directions, _ = train_clips
    real = metrics.compute(videos, digits, directions)
    noise = torch.rand(256, 1, FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fake = metrics.compute(noise, torch.arange(256) % 10, torch.arange(256) % 8)
    for result in (held_out, real):
        assert result["video_class_accuracy"] > 0.5 and result["video_temporal_consistency"] > 0.8
    assert real["video_motion_accuracy"] > 0.5
    assert fake["video_class_accuracy"] < 0.3 and fake["video_motion_accuracy"] < 0.3
    assert 0 < real["video_classifier_fd"] < 3 * real["video_classifier_fd_real_same_n"]
    assert fake["video_classifier_fd"] > 10 * real["video_classifier_fd"]
    assert real["video_temporal_consistency_real"] == pytest.approx(metrics.real_temporal_consistency)
    assert real["num_samples"] == 256


def test_spliced_digits_lower_temporal_consistency(metrics):
    videos, digits = metrics.val_videos, metrics.val_digits
    partner = torch.roll(torch.arange(len(digits)), 1)
    keep = digits != digits[partner]  # pairs of clips showing different digits
    first, second = videos[keep], videos[partner[keep]]
    spliced = torch.cat([first[:, :, : FRAMES // 2 + 1], second[:, :, FRAMES // 2 + 1 :]], dim=2)  # 5 + 4
    real = metrics.temporal_consistency(first)
    assert real > 0.8
    assert metrics.temporal_consistency(spliced) < real - 0.2  # a perfect classifier: 5 / 9


def test_motion_head_reads_motion_not_appearance(metrics, train_clips):
    videos, _, directions, positions = train_clips
    reversed_clips = videos.flip(2)  # same frames, played backwards
    reversed_directions = torch.tensor([direction_of(p[::-1]) for p in positions])
    changed = reversed_directions != directions  # most clips: a bounce can make them agree
    assert changed.float().mean() > 0.3
    assert metrics.motion_accuracy(reversed_clips, reversed_directions) > 0.5
    assert metrics.motion_accuracy(reversed_clips[changed], directions[changed]) < 0.3
    still = videos[:, :, :1].expand_as(videos).contiguous()  # frame 0 held: no motion to read
    assert metrics.motion_accuracy(still, directions) < 0.5


def test_bad_inputs_give_config_errors(metrics):
    clips = metrics.val_videos[:4]
    digits, directions = metrics.val_digits[:4], metrics.val_directions[:4]
    with pytest.raises(ConfigError, match="num_frames"):
        metrics.features(clips[:, :, :5])
    with pytest.raises(ConfigError, match="image_size"):
        metrics.features(torch.zeros(4, 1, FRAMES, 32, 32))
    with pytest.raises(ConfigError, match="image_size"):
        metrics.features(clips[:, 0])  # [N, T, S, S]: the channel axis is missing
    with pytest.raises(ConfigError, match=r"\[-1, 1\]"):
        metrics.features(torch.full((4, 1, FRAMES, SIZE, SIZE), 255.0))
    with pytest.raises(ConfigError, match="one per clip"):
        metrics.compute(clips, digits[:3])
    with pytest.raises(ConfigError, match="one per clip"):
        metrics.compute(clips, digits, directions[:3])
    with pytest.raises(ConfigError, match=r"directions must be integers in \[0, 8\)"):
        metrics.motion_accuracy(clips, directions + 8)
    with pytest.raises(ConfigError, match="at least 2 clips"):
        metrics.classifier_fd(clips[:1])
    with pytest.raises(ConfigError, match="val_fraction"):
        MovingDigitsMetrics(image_size=SIZE, val_fraction=0.0)


@pytest.mark.slow
def test_default_classifier_reaches_its_targets():
    model, info = train_video_classifier()
    assert info["val_digit_accuracy"] >= 0.95 and info["val_direction_accuracy"] >= 0.95
    assert not model.training
