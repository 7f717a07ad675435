"""Procedural shapes: determinism, captions that agree with the pixels, segment maps that tile the image."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from mmar.data import ShapesDataModule, ShapesDataset
from mmar.data.shapes import (
    COLORS,
    GAP,
    MARGIN,
    POSITIONS,
    SHAPES,
    ShapeSpec,
    caption_scene,
    format_caption,
    parse_caption,
    render_scene,
    shape_mask,
)
from mmar.errors import ConfigError
from mmar.eval.segmentation import boundary_map


def pixel_groups(image: torch.Tensor, segments: torch.Tensor) -> Counter:
    """(colour, shape, position) of every object, read back from the pixels alone (brute force)."""
    rgb = ((image + 1) * 127.5).round().long().permute(1, 2, 0)  # [H, W, 3]
    size = segments.shape[-1]
    found = Counter()
    for k in range(1, int(segments.max()) + 1):
        ys, xs = torch.nonzero(segments == k, as_tuple=True)
        colours = {tuple(c) for c in rgb[ys, xs].tolist()}
        assert len(colours) == 1  # one flat colour per segment
        colour = colours.pop()
        (color,) = [name for name, value in COLORS.items() if value == colour]
        top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        assert bottom - top == right - left  # square bounding box
        fill = len(ys) / float((bottom - top) * (right - left))
        shape = "square" if fill == 1.0 else "circle" if fill > 0.7 else "triangle"
        centre = (left + right) / 2.0
        position = "left" if centre < size / 3 else "right" if centre > 2 * size / 3 else "middle"
        found[(color, shape, position)] += 1
    return found


def test_items_are_deterministic_per_index_and_split():
    a, b = ShapesDataset(50, seed=3), ShapesDataset(50, seed=3)
    for i in (0, 7, 49):
        x, y = a[i], b[i]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["segments"], y["segments"])
        assert x["caption"] == y["caption"] and int(x["label"]) == int(y["label"])
    assert a[5]["caption"] == a[5]["caption"] and a.scene(5) == a.scene(5)
    images = torch.stack([a[i]["image"] for i in range(50)])
    assert len({tuple(im.flatten().tolist()) for im in images}) == 50  # scenes differ across indices
    val = ShapesDataset(50, seed=3, split="val")
    other_seed = ShapesDataset(50, seed=4)
    assert not torch.equal(images, torch.stack([val[i]["image"] for i in range(50)]))
    assert not torch.equal(images, torch.stack([other_seed[i]["image"] for i in range(50)]))


@pytest.mark.parametrize("image_size", [32, 48])
def test_captions_agree_with_the_pixels(image_size):
    dataset = ShapesDataset(120, image_size=image_size, seed=1)
    counts_seen = Counter()
    for i in range(len(dataset)):
        item = dataset[i]
        groups = parse_caption(item["caption"])
        from_caption = Counter({(c, s, p): n for n, c, s, p in groups})
        assert from_caption == pixel_groups(item["image"], item["segments"]), item["caption"]
        assert sum(n for n, *_ in groups) == int(item["segments"].max())  # count = number of shapes
        counts_seen.update(n for n, *_ in groups)
        # canonical order: column, then shape, then colour
        keys = [(POSITIONS.index(p), SHAPES.index(s), list(COLORS).index(c)) for _, c, s, p in groups]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)
        # the label is the shape of the leftmost object, segment 1
        first = pixel_groups(item["image"], (item["segments"] == 1).long())
        assert SHAPES[int(item["label"])] == next(iter(first))[1]
    assert counts_seen[2] > 0  # plural groups occur


def test_segments_tile_the_image_and_boundaries_match():
    dataset = ShapesDataset(60, seed=2)
    for i in range(len(dataset)):
        item, scene = dataset[i], dataset.scene(i)
        seg = item["segments"]
        assert seg.dtype == torch.long and seg.shape == (32, 32)
        assert torch.equal(seg.unique(), torch.arange(len(scene) + 1))  # ids 0..K, each present
        assert (item["image"][:, seg == 0] == -1).all()  # background is black
        areas = torch.bincount(seg.flatten())[1:]
        assert areas.tolist() == [int(shape_mask(s.shape, s.size).sum()) for s in scene]
        assert torch.equal(item["boundaries"], boundary_map(seg))
        # objects are numbered left to right by the centre of their bounding box
        centres = [2 * s.left + s.size for s in scene]
        assert centres == sorted(centres)
        # shapes keep MARGIN pixels from the border and GAP pixels from each other
        for k, spec in enumerate(scene):
            assert min(spec.top, spec.left) >= MARGIN and max(spec.top, spec.left) + spec.size <= 32 - MARGIN
            for other in scene[k + 1 :]:
                gap_y = max(other.top - spec.top - spec.size, spec.top - other.top - other.size)
                gap_x = max(other.left - spec.left - spec.size, spec.left - other.left - other.size)
                assert max(gap_x, gap_y) >= GAP


def test_shape_masks_fill_their_box():
    for size in range(4, 20):
        for shape in SHAPES:
            mask = shape_mask(shape, size)
            assert mask.any(0).all() and mask.any(1).all(), (shape, size)  # touches all four sides
    tri = shape_mask("triangle", 8)
    assert tri[0].sum() == 2 and tri[-1].sum() == 8 and (np.diff(tri.sum(1)) >= 0).all()
    assert shape_mask("square", 5).all()
    with pytest.raises(ConfigError, match="unknown shape 'star'"):
        shape_mask("star", 8)


def test_caption_grammar_round_trip():
    groups = [(2, "red", "circle", "left"), (1, "blue", "square", "middle")]
    assert format_caption(groups) == "two red circles on the left and a blue square in the middle"
    three = [
        (1, "green", "triangle", "left"),
        (3, "white", "square", "middle"),
        (1, "red", "circle", "right"),
    ]
    text = "a green triangle on the left, three white squares in the middle and a red circle on the right"
    assert format_caption(three) == text
    assert parse_caption(text) == three
    assert parse_caption("a yellow square on the right") == [(1, "yellow", "square", "right")]
    for bad in ["two red circle on the left", "a red circles on the left", "a pink circle on the left", ""]:
        with pytest.raises(ConfigError, match="shapes grammar"):
            parse_caption(bad)


def test_scene_caption_groups_same_colour_shape_and_column():
    scene = [
        ShapeSpec("circle", "red", 0, 0, 8),
        ShapeSpec("circle", "red", 20, 1, 8),
        ShapeSpec("circle", "red", 10, 22, 8),
    ]
    assert caption_scene(scene, 32) == "two red circles on the left and a red circle on the right"
    image, segments = render_scene(scene, 32)
    assert image.dtype == np.uint8 and segments.max() == 3
    # thirds are decided in integers: centre 16 of a 48-pixel image is exactly on the line -> middle
    assert ShapeSpec("square", "red", 0, 12, 8).position(48) == "middle"  # centre 16 = 48 / 3
    assert ShapeSpec("square", "red", 0, 11, 8).position(48) == "left"  # centre 15
    assert ShapeSpec("square", "red", 0, 29, 8).position(48) == "right"  # centre 33 > 32


def test_datamodule_batches():
    dm = ShapesDataModule(image_size=32, batch_size=8, num_train=24, num_val=10)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["label"].shape == (8,) and batch["label"].dtype == torch.long
    assert isinstance(batch["caption"], list) and len(batch["caption"]) == 8
    assert batch["segments"].shape == (8, 32, 32) and batch["segments"].dtype == torch.long
    assert batch["boundaries"].dtype == torch.bool
    assert sum(len(b["label"]) for b in dm.val_dataloader()) == 10
    assert dm.image_shape == (3, 32, 32) and dm.num_classes == 3
    assert ShapesDataModule(num_val=0, num_train=4).val_dataloader() == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"image_size": 8}, "image_size=8"),
        ({"max_objects": 4}, "max_objects=4"),
        ({"min_objects": 3, "max_objects": 2}, "min_objects=3"),
        ({"min_objects": 0}, "min_objects=0"),
        ({"num_train": 0}, "num_items=0"),
        ({"num_val": -1}, "num_val=-1"),
    ],
)
def test_bad_arguments_name_the_field(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ShapesDataModule(**kwargs)


def test_bad_split_and_index():
    with pytest.raises(ConfigError, match="split must be one of"):
        ShapesDataset(4, split="holdout")  # "test" is a split now
    with pytest.raises(IndexError):
        ShapesDataset(4).scene(4)
