"""GenEval-style compositional scorer on the shapes data: exact on ground truth, near chance on mismatched
captions, robust to noise and blur, and rules that follow their definitions."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from scipy import ndimage

from mmar.data.shapes import (
    COLORS,
    POSITIONS,
    SHAPES,
    ShapesDataset,
    held_out,
    parse_caption,
    render_scene,
    scene_groups,
    shape_mask,
    size_range,
)
from mmar.errors import ConfigError
from mmar.eval.compositional import (
    DECODED_COLORS,
    PROMPT_TASKS,
    TASKS,
    DetectedObject,
    Prompt,
    benchmark_prompts,
    caption_tasks,
    classify_moments,
    column_counts,
    detect_objects,
    detected_groups,
    min_area,
    object_color,
    prompt_scene,
    render_prompt,
    score_captions,
    score_images,
    score_objects,
    shape_moments,
)


def renders(prompts: list[Prompt], image_size: int, seed: int = 0) -> torch.Tensor:
    """Ground-truth renders of the prompts as float [B, 3, S, S] in [-1, 1]."""
    rng = np.random.default_rng(seed)
    images = np.stack([render_prompt(p, image_size, rng) for p in prompts])  # [B, S, S, 3]
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of range(n) without fixed points."""
    while True:
        order = rng.permutation(n)
        if not (order == np.arange(n)).any():
            return order


def obj(color: str, shape: str, position: str) -> DetectedObject:
    """A detected object with a placeholder box (the rules read only names and column)."""
    return DetectedObject(color, shape, position, 0, 0, 8, 8, 64)


@pytest.fixture(scope="module")
def prompts32() -> dict[str, list[Prompt]]:
    return {split: benchmark_prompts(split, 32) for split in ("held_out", "seen")}


def test_moments_classify_every_size_exactly_also_blurred():
    # the detector's shape rule: exact on every size of the data, and unchanged by a blur (sigma 1)
    for image_size in (32, 64):
        lo, hi = size_range(image_size)
        for size in range(lo, hi + 1):
            for shape in SHAPES:
                mask = np.pad(shape_mask(shape, size).astype(np.float64), 4)
                assert classify_moments(*shape_moments(mask)) == shape, (size, shape)
                blurred = ndimage.gaussian_filter(mask, sigma=1.0)
                assert classify_moments(*shape_moments(blurred)) == shape, (size, shape, "blurred")


def test_colours_are_named_as_palette_or_decoded_and_dimmed():
    for name in COLORS:
        for rgb in (COLORS[name], DECODED_COLORS[name]):
            for dim in (1.0, 0.85):
                pixels = np.tile(np.array(rgb, dtype=np.float64) * dim, (20, 1))  # [20, 3]
                assert object_color(pixels)[0] == name, (name, rgb, dim)


def test_robust_to_decoder_like_degradation():
    """What the VQ decoder does, in kind: blurred edges, dimmed edges and corners (blur, then a gamma),
    a slight colour shift, a dark-grey background and noise. The former fill-ratio detector recovered
    about 38% of these scenes (rounded squares and triangles read as circles)."""
    data = ShapesDataset(200, image_size=32, seed=3)
    images = torch.stack([data[i]["image"] for i in range(len(data))]).numpy()  # [B, 3, 32, 32]
    rng = np.random.default_rng(0)
    x = ndimage.gaussian_filter((images + 1) / 2, sigma=(0, 0, 0.9, 0.9)) ** 1.5  # in [0, 1]
    x = x * np.array([0.92, 0.88, 0.92]).reshape(1, 3, 1, 1) + 0.03 + 0.03 * rng.standard_normal(x.shape)
    degraded = torch.from_numpy(x * 2 - 1).float().clamp(-1, 1)
    recovered = sum(
        detected_groups(detect_objects(degraded[i])) == scene_groups(data.scene(i), 32)
        for i in range(len(data))
    )
    assert recovered >= 190, recovered


def test_prompts_follow_the_grammar_and_the_split(prompts32):
    for split, prompts in prompts32.items():
        assert len({(p.task, p.caption) for p in prompts}) == len(prompts)  # no duplicates in a list
        for p in prompts:
            assert tuple(parse_caption(p.caption)) == p.groups
            assert p.held_out == (split == "held_out")
            assert p.held_out == any(held_out(c, s, w) for _, c, s, w in p.groups)
        by_task = Counter(p.task for p in prompts)
        assert by_task["two_object"] == by_task["color_attribution"] == 24
        for p in prompts:
            if p.task in ("two_object", "color_attribution"):
                (_, c1, s1, w1), (_, c2, s2, w2) = p.groups
                assert s1 != s2 and POSITIONS.index(w1) < POSITIONS.index(w2)
                assert c1 != c2 or p.task == "two_object"
    held, seen = prompts32["held_out"], prompts32["seen"]
    singles = [p.groups[0][1:] for p in held + seen if p.task == "single_object"]
    assert len(singles) == len(set(singles)) == len(COLORS) * len(SHAPES) * len(POSITIONS)
    assert Counter(p.task for p in held) == {
        "single_object": 9,
        "counting": 9,
        "two_object": 24,
        "color_attribution": 24,
    }
    assert Counter(p.task for p in seen)["single_object"] == 45
    assert Counter(p.task for p in seen)["counting"] == 24
    assert benchmark_prompts("seen", 32) == seen  # deterministic
    assert benchmark_prompts("seen", 32, seed=1) != seen


def test_counts_that_fit_one_column():
    # 3 * 8 + 2 * GAP + 2 * MARGIN = 34 > 32: only pairs at 32; 3 * 16 + 10 = 58 <= 64: triples at 64
    assert column_counts(32) == (2,)
    assert column_counts(64) == (2, 3)
    counts64 = {p.groups[0][0] for p in benchmark_prompts("held_out", 64) if p.task == "counting"}
    assert counts64 == {2, 3}
    assert all(
        p.groups[0][0] == 2
        for s in ("held_out", "seen")
        for p in benchmark_prompts(s, 32)
        if p.task == "counting"
    )


def test_prompt_scenes_have_the_prompt_caption(prompts32):
    rng = np.random.default_rng(0)
    for image_size, prompts in (
        (32, prompts32["held_out"] + prompts32["seen"]),
        (64, benchmark_prompts("held_out", 64)),
    ):
        for p in prompts:
            assert scene_groups(prompt_scene(p, image_size, rng), image_size) == list(p.groups)


@pytest.mark.parametrize("image_size", [32, 64])
def test_ground_truth_renders_score_perfectly(image_size):
    for split in ("held_out", "seen"):
        prompts = benchmark_prompts(split, image_size)
        scores = score_images(renders(prompts, image_size), prompts)
        for task in (*TASKS, "overall", "exact"):
            assert scores[task] >= 0.99, (split, task, scores)
        assert scores["num_images"] == len(prompts)
        assert (
            scores["num_colors"]
            == scores["num_single_object"]
            == sum(p.task == "single_object" for p in prompts)
        )


def test_mismatched_captions_score_near_chance(prompts32):
    prompts = prompts32["held_out"] + prompts32["seen"]
    images = renders(prompts, 32)
    rng = np.random.default_rng(0)
    shuffled = list(prompts)
    for task in PROMPT_TASKS:
        index = [i for i, p in enumerate(prompts) if p.task == task]
        for i, j in zip(index, np.array(index)[derangement(len(index), rng)]):
            shuffled[i] = prompts[j]
    scores = score_images(images, shuffled)
    # chance: 1/3 for single_object (same shape) and two_object (same pair of shapes), low for the rest
    assert scores["single_object"] < 0.5 and scores["two_object"] < 0.5, scores
    for task in ("colors", "position", "counting", "color_attribution"):
        assert scores[task] < 0.2, (task, scores)
    assert scores["exact"] < 0.05 and scores["overall"] < 0.3, scores


@pytest.mark.parametrize("image_size", [32, 64])
def test_detection_recovers_dataset_scenes(image_size):
    data = ShapesDataset(200, image_size=image_size, seed=5)
    recovered = sum(
        detected_groups(detect_objects(data[i]["image"])) == scene_groups(data.scene(i), image_size)
        for i in range(len(data))
    )
    assert recovered >= 198


def test_robust_to_noise_and_blur(prompts32):
    prompts = prompts32["held_out"] + prompts32["seen"]
    images = renders(prompts, 32, seed=1)
    generator = torch.Generator().manual_seed(0)
    noisy = (images + 0.05 * torch.randn(images.shape, generator=generator)).clamp(-1, 1)
    blurred = torch.from_numpy(ndimage.gaussian_filter(images.numpy(), sigma=(0, 0, 0.7, 0.7)))
    blurred = (blurred + 0.05 * torch.randn(images.shape, generator=generator)).clamp(-1, 1)
    for corrupted in (noisy, blurred):
        scores = score_images(corrupted, prompts)
        for task in (*TASKS, "exact"):
            assert scores[task] >= 0.95, (task, scores)


def test_rules_follow_their_definitions():
    red_circle, blue_square = (1, "red", "circle", "left"), (1, "blue", "square", "right")
    single = PROMPT_TASKS["single_object"]
    assert score_objects([obj("red", "circle", "left")], [red_circle], single) == {
        "single_object": True,
        "colors": True,
        "position": True,
        "exact": True,
    }
    assert score_objects([obj("red", "circle", "middle")], [red_circle], single) == {
        "single_object": True,
        "colors": True,
        "position": False,
        "exact": False,
    }
    two = [obj("red", "circle", "left"), obj("green", "square", "right")]
    assert score_objects(two, [red_circle], single) == {
        "single_object": False,
        "colors": True,
        "position": True,
        "exact": False,
    }
    assert score_objects([obj("blue", "circle", "left")], [red_circle], single)["colors"] is False
    # colour attribution fails when the colours are swapped, while both shapes are still there
    swapped = [obj("blue", "circle", "left"), obj("red", "square", "right")]
    pair = [red_circle, blue_square]
    assert score_objects(swapped, pair, ("two_object", "color_attribution")) == {
        "two_object": True,
        "color_attribution": False,
        "exact": False,
    }
    right = [obj("red", "circle", "left"), obj("blue", "square", "right")]
    assert all(score_objects(right, pair, ("two_object", "color_attribution")).values())
    assert not score_objects(right[:1], pair, ("two_object",))["two_object"]
    # counting: exactly N of the shape, all of the prompt's colour and column
    two_green = [(2, "green", "square", "middle")]
    greens = [obj("green", "square", "middle")] * 2
    assert score_objects(greens, two_green, ("counting",)) == {"counting": True, "exact": True}
    assert not score_objects(greens[:1], two_green, ("counting",))["counting"]
    assert not score_objects([*greens, obj("red", "square", "left")], two_green, ("counting",))["counting"]
    assert not score_objects([greens[0], obj("green", "square", "left")], two_green, ("counting",))[
        "counting"
    ]
    assert score_objects([*greens, obj("red", "circle", "left")], two_green, ("counting",)) == {
        "counting": True,
        "exact": False,
    }


def test_score_captions_matches_score_images_and_infers_tasks(prompts32):
    prompts = prompts32["held_out"]
    images = renders(prompts, 32)
    by_caption = score_captions(images, [p.caption for p in prompts])
    by_prompt = score_images(images, prompts)
    assert by_caption["exact"] == by_prompt["exact"] == 1.0
    assert by_caption["num_single_object"] == by_prompt["num_single_object"]
    # every two-object caption with two colours also counts for colour attribution
    assert by_caption["num_color_attribution"] == sum(
        p.task != "single_object" and len(p.groups) == 2 and p.groups[0][1] != p.groups[1][1] for p in prompts
    )
    assert caption_tasks(parse_caption("two red circles on the left")) == ("counting",)
    assert caption_tasks(parse_caption("a red circle on the left and a red circle on the right")) == ()
    assert caption_tasks(parse_caption("a red circle on the left and a red square on the right")) == (
        "two_object",
    )
    wrong = score_captions(images[:1], ["a white triangle on the right"])
    assert wrong["position"] == 0.0 and wrong["exact"] == 0.0


def test_inputs_and_small_components():
    rng = np.random.default_rng(0)
    prompt = benchmark_prompts("seen", 32)[0]
    image = render_prompt(prompt, 32, rng)  # uint8 [32, 32, 3]
    as_float = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1
    assert (
        detect_objects(image)
        == detect_objects(as_float)
        == detect_objects(torch.from_numpy(image).permute(2, 0, 1))
    )
    speck = image.copy()
    speck[0, 0] = COLORS["white"]  # one stray pixel: below min_area, ignored
    assert min_area(32) == 10 and detect_objects(speck) == detect_objects(image)
    blank = render_scene([], 32)[0]
    assert detect_objects(blank) == []


def test_bad_input_raises_config_error():
    images = renders(benchmark_prompts("held_out", 32)[:2], 32)
    with pytest.raises(ConfigError, match="grammar"):
        score_captions(images, ["a red circle on the left", "a pink circle on the left"])
    with pytest.raises(ConfigError, match="one per prompt"):
        score_captions(images, ["a red circle on the left"])
    with pytest.raises(ConfigError, match="split"):
        benchmark_prompts("train")
    with pytest.raises(ConfigError, match="uint8 array"):
        detect_objects(np.zeros((32, 32, 3), dtype=np.float32))
    with pytest.raises(ConfigError, match="could not place"):
        prompt_scene([(3, "red", "circle", "left")], 32, np.random.default_rng(0))
