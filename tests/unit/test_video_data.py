"""Moving digits: determinism, value range, bouncing motion frame by frame, disjoint splits, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmar.data import MovingDigitsDataModule, digits_split, load_digits_images
from mmar.data.video import bounce_trajectory
from mmar.errors import ConfigError

SMALL = {"image_size": 24, "num_frames": 9, "batch_size": 4, "num_clips_train": 32, "num_clips_val": 16}


def small_data(**overrides) -> MovingDigitsDataModule:
    data = MovingDigitsDataModule(**{**SMALL, **overrides})
    data.setup()
    return data


def shift(frame: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """frame [H, W] moved by (dy, dx) pixels, filling uncovered pixels with the background -1."""
    h, w = frame.shape
    out = torch.full_like(frame, -1.0)
    out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = frame[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return out


def test_bounce_trajectory_by_hand():
    positions = bounce_trajectory(np.array([0, 5]), np.array([-2, 3]), limit=10, num_frames=6)
    # row: 0 would go to -2, so it bounces to +2 per frame; col: 8 + 3 > 10 and 2 - 3 < 0 bounce
    expected = [[0, 5], [2, 8], [4, 5], [6, 2], [8, 5], [10, 8]]
    assert positions.tolist() == expected


def test_items_are_deterministic_per_index():
    a, b = small_data(), small_data()
    for i in (0, 5, 31):
        first = a.train_dataset[i]
        assert torch.equal(first["video"], a.train_dataset[i]["video"])  # same object, twice
        assert torch.equal(first["video"], b.train_dataset[i]["video"])  # a fresh DataModule
        assert torch.equal(first["label"], b.train_dataset[i]["label"])
    assert not torch.equal(a.train_dataset[0]["video"], a.train_dataset[1]["video"])
    assert not torch.equal(a.train_dataset[0]["video"], small_data(seed=1).train_dataset[0]["video"])


def test_shapes_range_and_batches():
    data = small_data()
    assert data.video_shape == (1, 9, 24, 24)
    batch = next(iter(data.train_dataloader()))
    assert batch["video"].shape == (4, 1, 9, 24, 24) and batch["video"].dtype == torch.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == torch.long
    val = torch.stack([data.val_dataset[i]["video"] for i in range(len(data.val_dataset))])
    assert val.min() == -1 and val.max() <= 1 and val.max() > 0.9  # black canvas, inked digit
    assert len(data.train_dataset) == 32 and len(data.val_dataset) == 16


def test_each_frame_is_the_previous_one_shifted_by_the_bouncing_velocity():
    data = small_data(max_speed=3)
    ds = data.train_dataset
    sprites, _ = load_digits_images(ds.sprites.shape[-1])
    limit, speed = 24 - 12, 3
    bounces = 0
    for i in range(len(ds)):
        item, (digit, positions) = ds[i], ds.trajectory(i)
        video = item["video"][0]  # [T, H, W]
        source = int(ds.source_indices[digit])
        assert int(item["label"]) == int(digits_split(12, 0.1, 0)[1][digit])
        # brute force: frame 0 is the source digit pasted at the first position
        row, col = positions[0]
        assert torch.equal(video[0], shift(_pad(sprites[source, 0], 24), int(row), int(col)))
        steps = np.diff(positions, axis=0)  # [T-1, 2] velocity of each step
        assert (np.abs(steps) == np.abs(steps[0])).all() and np.abs(steps[0]).max() <= speed
        assert np.abs(steps[0]).sum() > 0  # the digit moves
        for t in range(len(steps)):
            matches = [
                (dy, dx)
                for dy in range(-speed, speed + 1)
                for dx in range(-speed, speed + 1)
                if torch.equal(shift(video[t], dy, dx), video[t + 1])
            ]
            assert matches == [tuple(steps[t])]  # frame t+1 = frame t moved by exactly this velocity
            if t > 0:  # the velocity flips on an axis only when the straight move would leave the canvas
                straight = positions[t] + steps[t - 1]
                out = (straight < 0) | (straight > limit)
                assert (steps[t] == np.where(out, -steps[t - 1], steps[t - 1])).all()
                bounces += int(out.any())
        assert ((positions >= 0) & (positions <= limit)).all()
    assert bounces > 0  # the check above did see bounces


def _pad(sprite: torch.Tensor, size: int) -> torch.Tensor:
    """A sprite [d, d] at the top-left corner of a black canvas [size, size]."""
    canvas = torch.full((size, size), -1.0)
    canvas[: sprite.shape[0], : sprite.shape[1]] = sprite
    return canvas


def test_train_and_val_clips_use_disjoint_digit_images():
    data = small_data(num_clips_train=200, num_clips_val=100)
    train_x, _, val_x, _ = digits_split(12, 0.1, 0)
    assert torch.equal(data.train_dataset.sprites, train_x) and torch.equal(data.val_dataset.sprites, val_x)
    used = {}
    for split in ("train", "val"):
        ds = getattr(data, f"{split}_dataset")
        used[split] = {int(ds.source_indices[ds.trajectory(i)[0]]) for i in range(len(ds))}
    assert used["train"] and used["val"] and not used["train"] & used["val"]
    assert not set(data.train_dataset.source_indices.tolist()) & set(data.val_dataset.source_indices.tolist())


def test_no_val_split_gives_no_val_loader():
    data = small_data(val_fraction=0.0)
    assert data.val_dataset is None and data.val_dataloader() == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_speed": 7}, r"max_speed=7 .*2 \* max_speed <= image_size - digit_size"),
        ({"digit_size": 24}, "0px to move"),
        ({"num_frames": 0}, "num_frames=0 must be >= 1"),
        ({"max_speed": 0}, "max_speed=0 must be >= 1"),
        ({"num_clips_train": 0}, "num_clips_train=0"),
        ({"batch_size": 0}, "batch_size=0"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MovingDigitsDataModule(**{**SMALL, **kwargs})


def test_too_small_digits_name_the_fix():
    with pytest.raises(ConfigError, match="image_size >= 8"):
        small_data(image_size=12, digit_size=6, max_speed=1)


def test_direction_is_the_first_step_and_labels_combine_digit_and_direction():
    from mmar.data.video import DIRECTIONS, STEPS

    plain, both = small_data(), small_data(labels="digit_direction")
    assert plain.num_classes == 10 and both.num_classes == 80
    for i in range(16):
        item, combined = plain.train_dataset[i], both.train_dataset[i]
        _, positions = plain.train_dataset.trajectory(i)
        step = tuple(int(v) for v in np.sign(positions[1] - positions[0]))
        assert STEPS[int(item["direction"])] == step  # (row, col) signs of frame 0 -> 1
        assert item["label"] == item["digit"] and combined["label"] == item["direction"] * 10 + item["digit"]
        assert item["caption"] == f"a {int(item['digit'])} moving {DIRECTIONS[int(item['direction'])]}"
    first = plain.train_dataset[0]["video"][0]  # the direction is what the pixels do: centre of mass
    rows, cols = torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij")
    mass = (first + 1).flatten(1).sum(1)
    centre = lambda t: torch.stack([(rows * (first[t] + 1)).sum(), (cols * (first[t] + 1)).sum()]) / mass[t]
    moved = tuple(int(v) for v in torch.sign(centre(1) - centre(0)))
    assert moved == STEPS[int(plain.train_dataset[0]["direction"])]
    with pytest.raises(ConfigError, match="labels"):
        MovingDigitsDataModule(**{**SMALL, "labels": "motion"})
