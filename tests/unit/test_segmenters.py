"""Segmenters tile the image (watershed included), truncation keeps the largest segments, boundary P/R."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmar.data import ShapesDataset
from mmar.errors import ConfigError
from mmar.eval.segmentation import boundary_map, boundary_precision_recall, segment_boundary_scores
from tokenizers_visual.segmenters import (
    BoundarySegmenter,
    FelzenszwalbSegmenter,
    SLICSegmenter,
    build_segmenter,
    load_boundary_segmenter,
    relabel_by_area,
)


def shapes_batch(n: int = 6, size: int = 32, seed: int = 0) -> dict:
    dataset = ShapesDataset(n, image_size=size, seed=seed)
    items = [dataset[i] for i in range(n)]
    return {key: torch.stack([item[key] for item in items]) for key in ("image", "segments")}


def assert_tiles(ids: torch.Tensor, max_tokens: int | None = None) -> None:
    """Each image: ids contiguous 0..K-1 (every pixel in exactly one segment), areas non-increasing."""
    assert ids.dtype == torch.long and ids.ndim == 3
    for image_ids in ids:
        k = int(image_ids.max()) + 1
        assert int(image_ids.min()) == 0
        areas = torch.bincount(image_ids.flatten(), minlength=k)
        assert (areas > 0).all()  # contiguous: no id is skipped
        assert (areas[:-1] >= areas[1:]).all()  # sorted by area, largest first
        assert int(areas.sum()) == image_ids.numel()
        if max_tokens is not None:
            assert k <= max_tokens


# ---------------------------------------------------------------- relabelling and truncation


def test_relabel_sorts_by_area():
    labels = np.array([[7, 7, 3], [7, 3, 3], [9, 9, 3]])  # areas: 3 -> 4, 7 -> 3, 9 -> 2
    assert relabel_by_area(labels).tolist() == [[1, 1, 0], [1, 0, 0], [2, 2, 0]]


def test_truncation_merges_into_largest_kept_neighbour():
    a, b, c, d, e = 10, 20, 30, 40, 50
    labels = np.full((8, 8), a)  # A: left half, 32 pixels
    labels[0:4, 4:8] = b  # B: 16 pixels
    labels[4:6, 4:8] = c  # C: 8 pixels
    labels[6:8, 4:6] = d  # D: 4 pixels, touches A and C -> A (the larger)
    labels[6:8, 6:8] = e  # E: 4 pixels, touches C and D -> C (its only kept neighbour)
    expected = np.zeros((8, 8), dtype=np.int64)  # A + D = 36 pixels -> id 0
    expected[0:4, 4:8] = 1  # B = 16 -> id 1
    expected[4:6, 4:8] = 2  # C + E = 12 -> id 2
    expected[6:8, 6:8] = 2
    assert relabel_by_area(labels, max_tokens=3).tolist() == expected.tolist()
    assert relabel_by_area(labels, max_tokens=5).tolist() == relabel_by_area(labels).tolist()


def test_truncation_merges_nested_segments_in_rounds():
    labels = np.zeros((7, 7), dtype=np.int64)
    labels[2:5, 2:5] = 1  # a ring ...
    labels[3, 3] = 2  # ... around a pixel that touches only the ring
    assert (relabel_by_area(labels, max_tokens=1) == 0).all()
    two = relabel_by_area(labels, max_tokens=2)
    assert two[3, 3] == 1 and (two[2:5, 2:5] == 1).all() and int(two.max()) == 1


@pytest.mark.parametrize("max_tokens", [1, 2, 5, 9])
def test_truncation_keeps_the_largest_segments_and_tiles(max_tokens):
    from skimage.measure import label

    rng = np.random.default_rng(max_tokens)
    for _ in range(20):
        labels = label(rng.integers(0, 3, size=(12, 12)), connectivity=1, background=-1)
        ranked = relabel_by_area(labels)
        out = relabel_by_area(labels, max_tokens)
        k = min(int(ranked.max()) + 1, max_tokens)
        assert_tiles(torch.from_numpy(out[None]), max_tokens)
        assert int(out.max()) + 1 == k
        # each kept (top-k) segment lies inside one output segment, and no two share one
        targets = [np.unique(out[ranked == r]) for r in range(k)]
        assert all(len(t) == 1 for t in targets) and len({int(t[0]) for t in targets}) == k
        # dropped segments only ever grow kept ones: a kept segment's pixels never change hands
        for r in range(k):
            assert (out[ranked == r] == targets[r][0]).all()


# ---------------------------------------------------------------- the three segmenters


@pytest.mark.parametrize(
    "segmenter",
    [
        BoundarySegmenter(),
        BoundarySegmenter(threshold=0.52, compactness=0.01),
        SLICSegmenter(n_segments=12),
        FelzenszwalbSegmenter(scale=20, min_size=4),
    ],
    ids=["boundary", "boundary-compact", "slic", "felzenszwalb"],
)
@pytest.mark.parametrize("max_tokens", [None, 3])
def test_every_segmenter_tiles_the_image(segmenter, max_tokens):
    torch.manual_seed(0)
    segmenter.max_tokens = max_tokens
    x = shapes_batch()["image"] + 0.3 * torch.randn(6, 3, 32, 32)  # noise: many small segments
    ids = segmenter.segment(x.clamp(-1, 1))
    assert ids.shape == (6, 32, 32)
    assert_tiles(ids, max_tokens)


def test_baselines_take_grey_images():
    x = shapes_batch(2)["image"].mean(1, keepdim=True)  # [2, 1, 32, 32]
    assert_tiles(SLICSegmenter(n_segments=6).segment(x))
    assert_tiles(FelzenszwalbSegmenter().segment(x))


def oracle(segments: torch.Tensor) -> torch.Tensor:
    """Boundary logits that are +-10 on / off the true thick boundaries."""
    return boundary_map(segments).float() * 20 - 10  # [B, H, W]


@pytest.mark.parametrize("min_marker_area", [1, 8])
def test_watershed_of_a_perfect_boundary_map_has_one_segment_per_basin(monkeypatch, min_marker_area):
    from scipy import ndimage

    batch = shapes_batch(12, seed=3)
    truth = batch["segments"]
    segmenter = BoundarySegmenter(min_marker_area=min_marker_area)
    monkeypatch.setattr(segmenter, "boundary_logits", lambda images: oracle(truth))
    ids = segmenter.segment(batch["image"])
    assert_tiles(ids)
    for pred, true in zip(ids, truth):
        # basins (brute force, scipy): 4-connected interior pixels, big enough to be markers
        basins, count = ndimage.label((~boundary_map(true)).numpy())
        big = [k for k in range(1, count + 1) if (basins == k).sum() >= min_marker_area]
        assert int(pred.max()) + 1 == len(big)  # one segment per marker, boundary pixels all assigned
        owners = [pred[torch.from_numpy(basins == k)].unique() for k in big]
        assert all(len(o) == 1 for o in owners) and len({int(o) for o in owners}) == len(big)
    if min_marker_area == 8:  # specks dropped: exactly the objects + the background
        assert torch.equal(ids.flatten(1).amax(1), truth.flatten(1).amax(1))
    # the watershed only draws lines inside the true boundary band
    assert segment_boundary_scores(ids, truth, tolerance=0)["precision"] == 1.0
    assert segment_boundary_scores(ids, truth, tolerance=1)["recall"] == 1.0


def test_watershed_assigns_boundary_pixels_and_handles_degenerate_maps():
    segmenter = BoundarySegmenter(min_marker_area=3)
    prob = np.ones((6, 6))
    prob[1:3, 1:3] = 0  # a 4-pixel basin
    prob[4, 4] = 0  # a 1-pixel speck: below min_marker_area, not a marker
    labels = segmenter.watershed(prob)
    assert (labels == 1).all()  # one basin floods everything, boundary pixels included
    prob[1:3, 4:6] = 0  # a second basin
    labels = segmenter.watershed(prob)
    assert labels.min() >= 1 and set(np.unique(labels)) == {1, 2}  # nothing left at 0 (unassigned)
    assert (segmenter.watershed(np.ones((5, 5))) == 1).all()  # all boundary: one segment


def test_boundary_loss_is_bce_against_thick_boundaries():
    batch = shapes_batch(2)
    segmenter = BoundarySegmenter(width=4, depth=2)
    logits = segmenter.boundary_logits(batch["image"])
    target = boundary_map(batch["segments"]).float()
    expected = -(
        target * torch.log(torch.sigmoid(logits)) + (1 - target) * torch.log(1 - torch.sigmoid(logits))
    )
    torch.testing.assert_close(segmenter.loss(batch["image"], batch["segments"]), expected.mean())


def test_boundary_segmenter_save_load_bit_exact(tmp_path):
    torch.manual_seed(1)
    segmenter = BoundarySegmenter(width=8, depth=2, threshold=0.4, min_marker_area=2)
    segmenter.save_pretrained(tmp_path)
    loaded = load_boundary_segmenter(tmp_path)
    for key, value in segmenter.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    assert loaded.config == segmenter.config
    x = shapes_batch(3)["image"]
    assert torch.equal(segmenter.segment(x), loaded.segment(x))
    assert load_boundary_segmenter(tmp_path, max_tokens=2).segment(x).max() <= 1
    with pytest.raises(ConfigError, match=r"width=8 .* width=16"):
        BoundarySegmenter(width=16, depth=2).load_weights(tmp_path)
    with pytest.raises(ConfigError, match=r"no boundary predictor.*train_boundary\.py"):
        BoundarySegmenter().load_weights(tmp_path / "missing")


def test_segmenter_errors_name_the_field():
    with pytest.raises(ConfigError, match="unknown segmenter 'sam'"):
        build_segmenter("sam")
    with pytest.raises(ConfigError, match=r"unknown argument\(s\) \['n_segments'\].*'boundary'"):
        build_segmenter("boundary", n_segments=4)
    assert isinstance(build_segmenter("slic", n_segments=4), SLICSegmenter)
    with pytest.raises(ConfigError, match=r"threshold=1\.5"):
        BoundarySegmenter(threshold=1.5)
    with pytest.raises(ConfigError, match="compactness=-1"):
        BoundarySegmenter(compactness=-1)
    with pytest.raises(ConfigError, match="max_tokens=0"):
        SLICSegmenter(max_tokens=0)
    with pytest.raises(ConfigError, match="expects in_channels=3"):
        BoundarySegmenter().segment(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ConfigError, match=r"\[B, C, H, W\]"):
        SLICSegmenter().segment(torch.zeros(8, 8))


# ---------------------------------------------------------------- boundary precision / recall


def square_outline(top: int, left: int, size: int, shape=(10, 10)) -> torch.Tensor:
    edges = torch.zeros(shape, dtype=torch.bool)
    edges[top, left : left + size] = edges[top + size - 1, left : left + size] = True
    edges[top : top + size, left] = edges[top : top + size, left + size - 1] = True
    return edges


def test_boundary_pr_known_answers():
    truth = square_outline(2, 2, 6)  # 20 pixels
    same = boundary_precision_recall(truth, truth, tolerance=0)
    assert same == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    shifted = square_outline(2, 3, 6)  # one pixel to the right
    assert boundary_precision_recall(shifted, truth, tolerance=1) == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
    }
    # exact overlap: the 5 shared pixels of the top row and 5 of the bottom row, of 20 each
    assert boundary_precision_recall(shifted, truth, tolerance=0) == {
        "precision": 0.5,
        "recall": 0.5,
        "f1": 0.5,
    }
    # a diagonal shift by (1, 1) is sqrt(2) away: tolerance 1 still misses part of it, 2 does not
    diagonal = square_outline(3, 3, 6)
    assert boundary_precision_recall(diagonal, truth, tolerance=1)["precision"] < 1.0
    assert boundary_precision_recall(diagonal, truth, tolerance=2)["precision"] == 1.0
    # a prediction that covers everything: all truth found, precision = 20 / 100 at tolerance 0
    full = torch.ones(10, 10, dtype=torch.bool)
    scores = boundary_precision_recall(full, truth, tolerance=0)
    assert scores["recall"] == 1.0 and scores["precision"] == pytest.approx(0.2)
    empty = torch.zeros(10, 10, dtype=torch.bool)
    assert boundary_precision_recall(empty, truth) == {"precision": 1.0, "recall": 0.0, "f1": 0.0}


def test_boundary_pr_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    pred = torch.rand(3, 9, 11, generator=gen) < 0.15
    truth = torch.rand(3, 9, 11, generator=gen) < 0.15
    for tol in (0, 1, 2, 3):
        hits = {"p": 0, "r": 0}
        for p, t in zip(pred, truth):
            pp, tt = torch.nonzero(p).float(), torch.nonzero(t).float()
            dist = torch.cdist(pp, tt)  # [num_pred, num_true] Euclidean
            hits["p"] += int((dist.min(1).values <= tol).sum())
            hits["r"] += int((dist.min(0).values <= tol).sum())
        scores = boundary_precision_recall(pred, truth, tolerance=tol)
        assert scores["precision"] == pytest.approx(hits["p"] / int(pred.sum()))
        assert scores["recall"] == pytest.approx(hits["r"] / int(truth.sum()))


def test_boundary_map_of_two_regions():
    seg = torch.zeros(4, 6, dtype=torch.long)
    seg[:, 3:] = 1
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[:, 2:4] = True  # both sides of the edge
    assert torch.equal(boundary_map(seg), expected)
    assert not boundary_map(torch.zeros(2, 5, 5, dtype=torch.long)).any()


def test_boundary_pr_errors():
    a = torch.zeros(4, 4, dtype=torch.bool)
    with pytest.raises(ConfigError, match="tolerance must be an integer"):
        boundary_precision_recall(a, a, tolerance=-1)
    with pytest.raises(ConfigError, match="tolerance must be an integer"):
        boundary_precision_recall(a, a, tolerance=1.5)
    with pytest.raises(ConfigError, match="same shape"):
        boundary_precision_recall(a, torch.zeros(4, 5, dtype=torch.bool))


# ---------------------------------------------------------------- the training script


def test_train_boundary_script(tmp_path, capsys, load_script):
    module = load_script("train_boundary")
    args = ["--out", str(tmp_path), "--steps", "3", "--batch-size", "4", "--num-val", "8", "--num-png", "2"]
    result = module.main([*args, "--width", "4", "--depth", "2"])
    assert {"boundary", "slic", "felzenszwalb", "boundary_map", "truth"} <= set(result["val"])
    assert json.loads((tmp_path / "metrics.json").read_text())["val"] == result["val"]
    assert (tmp_path / "segments.png").is_file()
    assert load_boundary_segmenter(tmp_path).config["width"] == 4
    assert "boundary predictor saved" in capsys.readouterr().out
