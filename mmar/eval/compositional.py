"""GenEval-style compositional scoring of text-to-image samples on the embedded shapes dataset.

Follows GenEval (Ghosh et al., 2023, "GenEval: An Object-Focused Framework for Evaluating Text-to-Image
Alignment"): detect the objects of each generated image, then judge the image against its prompt with
one boolean rule per task, and report per-task accuracies and their mean ("overall"). GenEval runs an
object detector (Mask2Former); the shapes renders (`mmar.data.shapes`) are flat colours on black without
anti-aliasing, so here palette-colour clusters and connected components replace the detector.

Detector (`detect_objects`), deterministic and tolerant of the blur and noise of a VQ decoder:
1. every pixel is assigned the palette colour whose ray from black (the colour at any brightness) is
   nearest; it is foreground when it carries at least half of that colour's brightness (`FOREGROUND`);
2. foreground pixels are grouped into 8-connected components; shapes never touch in the data (`GAP`),
   so a component is an object; components smaller than a quarter of the smallest shape are dropped;
3. colour: the majority palette label of the component's pixels; column: the horizontal third holding
   the centre of its bounding box (the rule of `ShapeSpec.position`); shape: the fill ratio of the
   component (holes filled) inside its bounding box: 1 for a square, 0.78-0.85 for a circle, 0.54-0.63
   for a triangle on every size of `size_range` at 32 and 64, split at `SQUARE_FILL` and `CIRCLE_FILL`.

Prompts (`benchmark_prompts`), in the dataset's caption grammar, split into "held_out" (some group's
(colour, shape, column) triple is `held_out`) and "seen":
- "single_object": all 54 triples, one object each (9 held out, 45 seen); the tasks "single_object",
  "colors" and "position" are all scored on them;
- "two_object": two different shapes in two different columns; "color_attribution": the same with two
  different colours; `num_prompts` of each per split, drawn without replacement by a seeded generator;
- "counting": N objects of one (colour, shape) in one column, for the counts N >= 2 whose vertical stack
  fits the image (`column_counts`). At 32 that is N = 2 only: three boxes need 3 * 8 + 2 * GAP +
  2 * MARGIN = 34 > 32 pixels, and two boxes of one column cannot sit side by side (box centres of a
  column lie within 32 / 3 < 8 + GAP pixels). At 64, N = 2 and 3. All candidates when there are at most
  `num_prompts` (the 9 held-out ones at 32), else `num_prompts` drawn as above.

Rules (`score_objects`), one boolean per (image, task):
- single_object: exactly one object is detected and it has the prompt's shape;
- colors: some object has the prompt's shape and colour;
- position: some object has the prompt's shape, colour and column;
- counting: exactly N objects of the prompt's shape, and all of them have the prompt's colour and column
  (GenEval counts objects of the class; the colour and column of the prompt are required too);
- two_object: both shapes are detected;
- color_attribution: an object with (shape 1, colour 1) and one with (shape 2, colour 2);
- exact (every prompt): the detected scene's groups (count, colour, shape, column) equal the prompt's.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from mmar.data.shapes import (
    COLORS,
    GAP,
    MARGIN,
    MAX_OBJECTS,
    POSITIONS,
    SHAPES,
    Group,
    Scene,
    ShapeSpec,
    _too_close,
    format_caption,
    held_out,
    parse_caption,
    render_scene,
    shape_mask,
    size_range,
)
from mmar.errors import ConfigError

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attribution")  # GenEval's
PROMPT_TASKS = {  # prompt list -> the tasks its images are scored on
    "single_object": ("single_object", "colors", "position"),
    "two_object": ("two_object",),
    "color_attribution": ("color_attribution",),
    "counting": ("counting",),
}
SPLITS = ("held_out", "seen")
FOREGROUND = 0.5  # a pixel is foreground when it has >= this fraction of its palette colour's brightness
SQUARE_FILL = 0.925  # fill ratio above which a component is a square (circles <= 0.852, squares 1.0)
CIRCLE_FILL = 0.70  # fill ratio above which a non-square is a circle (triangles <= 0.625, circles >= 0.778)
MIN_AREA_FRACTION = 0.25  # components smaller than this fraction of the smallest shape are ignored
NUM_PROMPTS = 24  # two-object, colour-attribution and counting prompts per split (at most)
RENDER_TRIES = 1000
_PALETTE = np.array(list(COLORS.values()), dtype=np.float64)  # [6, 3]
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class DetectedObject:
    """One detected object: names, column, bounding box (top, left, height, width) and pixel count."""

    color: str
    shape: str
    position: str
    top: int
    left: int
    height: int
    width: int
    area: int


@dataclass(frozen=True)
class Prompt:
    """A benchmark prompt: its caption (dataset grammar), prompt list (`PROMPT_TASKS`) and groups."""

    caption: str
    task: str
    groups: tuple[Group, ...]

    @property
    def tasks(self) -> tuple[str, ...]:
        """The tasks an image of this prompt is scored on (besides "exact")."""
        return PROMPT_TASKS[self.task]

    @property
    def held_out(self) -> bool:
        """Whether some group names a held-out (colour, shape, column) triple."""
        return any(held_out(color, shape, where) for _, color, shape, where in self.groups)


def to_rgb(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """One image as float64 [H, W, 3] in [0, 255].

    Args:
        image: a torch tensor [3, H, W] (float in [-1, 1], or uint8), or a numpy uint8 array [H, W, 3].
    """
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ConfigError(f"expected an image tensor [3, H, W], got shape {tuple(image.shape)}")
        pixels = image.detach().cpu().permute(1, 2, 0)  # [H, W, 3]
        if pixels.dtype == torch.uint8:
            return pixels.numpy().astype(np.float64)
        return ((pixels.double().numpy() + 1) * 127.5).clip(0, 255)
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ConfigError(
            f"expected a uint8 array [H, W, 3] or a tensor [3, H, W] in [-1, 1], got {array.dtype} "
            f"{array.shape}"
        )
    return array.astype(np.float64)


def min_area(image_size: int) -> int:
    """Fewest pixels of a detected object: a quarter of the smallest shape (a triangle) of the data."""
    return max(1, int(MIN_AREA_FRACTION * shape_mask("triangle", size_range(image_size)[0]).sum()))


def classify_shape(fill: float) -> str:
    """The shape whose fill ratio (object pixels / bounding-box pixels) `fill` matches."""
    if fill >= SQUARE_FILL:
        return "square"
    return "circle" if fill >= CIRCLE_FILL else "triangle"


def palette_labels(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest palette colour index [H, W], foreground mask [H, W]) of float RGB [H, W, 3] in [0, 255].

    The nearest colour is the one whose ray t * colour (t >= 0) passes closest to the pixel, so a dimmed
    edge keeps its hue; the pixel is foreground when its t on that ray is at least `FOREGROUND`.
    """
    pixels = rgb.reshape(-1, 3)  # [N, 3]
    scale = np.clip(pixels @ _PALETTE.T / (_PALETTE**2).sum(1), 0, None)  # [N, 6]
    distance = ((pixels[:, None, :] - scale[..., None] * _PALETTE[None]) ** 2).sum(-1)  # [N, 6]
    label = distance.argmin(1)  # [N]
    foreground = scale[np.arange(len(label)), label] >= FOREGROUND  # [N]
    return label.reshape(rgb.shape[:2]), foreground.reshape(rgb.shape[:2])


def detect_objects(image: torch.Tensor | np.ndarray) -> list[DetectedObject]:
    """The objects of one image, left to right (by bounding-box centre, then top to bottom).

    Args:
        image: a torch tensor [3, H, W] (float in [-1, 1], or uint8), or a numpy uint8 array [H, W, 3].
    """
    rgb = to_rgb(image)  # [H, W, 3]
    height, width = rgb.shape[:2]
    label, foreground = palette_labels(rgb)
    components, _ = ndimage.label(foreground, structure=_EIGHT_CONNECTED)  # [H, W]
    names = list(COLORS)
    objects = []
    for k, window in enumerate(ndimage.find_objects(components), start=1):
        mask = components[window] == k  # [h, w]
        if mask.sum() < min_area(min(height, width)):
            continue
        area = int(ndimage.binary_fill_holes(mask).sum())
        h, w = mask.shape
        color = names[int(np.bincount(label[window][mask], minlength=len(names)).argmax())]
        shape = classify_shape(area / (h * w))
        top, left = window[0].start, window[1].start
        position = ShapeSpec(shape, color, top, left, w).position(width)  # centre of the box's columns
        objects.append(DetectedObject(color, shape, position, top, left, h, w, area))
    return sorted(objects, key=lambda o: (2 * o.left + o.width, 2 * o.top + o.height))


def detected_groups(objects: Sequence[DetectedObject]) -> list[Group]:
    """The caption groups (count, colour, shape, column) of detected objects, in caption order (as
    `scene_groups` orders them)."""
    counts = Counter((o.position, o.shape, o.color) for o in objects)
    order = sorted(
        counts, key=lambda k: (POSITIONS.index(k[0]), SHAPES.index(k[1]), list(COLORS).index(k[2]))
    )
    return [(counts[k], k[2], k[1], k[0]) for k in order]


def score_objects(
    objects: Sequence[DetectedObject], groups: Sequence[Group], tasks: Sequence[str]
) -> dict[str, bool]:
    """Judge one image's detected objects against a prompt's groups: {task: correct} for `tasks` + "exact".

    Args:
        objects: the image's detections (`detect_objects`).
        groups: the prompt's groups (count, colour, shape, column); the single-group tasks read the first.
        tasks: tasks of `TASKS` to judge, by the rules of the module docstring.

    Raises:
        ConfigError: a task is not one of `TASKS`.
    """
    found = [(o.color, o.shape, o.position) for o in objects]
    result = {}
    for task in tasks:
        if task in ("single_object", "colors", "position", "counting"):
            count, color, shape, where = groups[0]
            same_shape = [f for f in found if f[1] == shape]
            result[task] = {
                "single_object": len(found) == 1 and found[0][1] == shape,
                "colors": any(f[0] == color for f in same_shape),
                "position": (color, shape, where) in same_shape,
                "counting": len(same_shape) == count and all(f == (color, shape, where) for f in same_shape),
            }[task]
        elif task == "two_object":
            result[task] = all(any(f[1] == g[2] for f in found) for g in groups)
        elif task == "color_attribution":
            result[task] = all(any(f[:2] == (g[1], g[2]) for f in found) for g in groups)
        else:
            raise ConfigError(f"unknown task '{task}'; known: {TASKS}")
    result["exact"] = detected_groups(objects) == list(groups)
    return result


def caption_tasks(groups: Sequence[Group]) -> tuple[str, ...]:
    """The GenEval tasks a caption's groups support (besides "exact", which every caption supports)."""
    if len(groups) == 1:
        return PROMPT_TASKS["single_object"] if groups[0][0] == 1 else PROMPT_TASKS["counting"]
    if len(groups) == 2 and all(g[0] == 1 for g in groups) and groups[0][2] != groups[1][2]:
        return ("two_object", "color_attribution") if groups[0][1] != groups[1][1] else ("two_object",)
    return ()


def _image_list(images: torch.Tensor | np.ndarray | Sequence) -> list:
    """A batch ([B, 3, H, W] tensor, [B, H, W, 3] uint8 array) or a sequence -> a list of single images."""
    if isinstance(images, torch.Tensor | np.ndarray) and images.ndim == 4:
        return list(images)
    if isinstance(images, torch.Tensor | np.ndarray):
        raise ConfigError(f"expected a batch of images with 4 dims, got shape {tuple(images.shape)}")
    return list(images)


def _aggregate(judgements: list[dict[str, bool]]) -> dict[str, float | int]:
    """Per-task accuracies (mean over the images scored on the task), their mean "overall", "exact" and
    the number of images per task ("num_<task>") and in all ("num_images")."""
    result: dict[str, float | int] = {}
    for task in TASKS:
        values = [j[task] for j in judgements if task in j]
        if values:
            result[task] = float(np.mean(values))
            result[f"num_{task}"] = len(values)
    present = [result[t] for t in TASKS if t in result]
    result["overall"] = float(np.mean(present)) if present else float("nan")
    result["exact"] = float(np.mean([j["exact"] for j in judgements])) if judgements else float("nan")
    result["num_images"] = len(judgements)
    return result


def _score(images, groups_and_tasks: list[tuple[Sequence[Group], Sequence[str]]]) -> dict[str, float | int]:
    """Detect and judge each image against its (groups, tasks), then aggregate."""
    images = _image_list(images)
    if len(images) != len(groups_and_tasks):
        raise ConfigError(
            f"got {len(images)} images for {len(groups_and_tasks)} prompts; pass one per prompt"
        )
    judgements = []
    for image, (groups, tasks) in zip(images, groups_and_tasks):
        judgements.append(score_objects(detect_objects(image), groups, tasks))
    return _aggregate(judgements)


def score_images(images: torch.Tensor | np.ndarray | Sequence, prompts: Sequence[Prompt]) -> dict:
    """GenEval-style scores of generated images, one image per prompt (repeat a prompt for more).

    Args:
        images: [B, 3, H, W] float in [-1, 1], or uint8 [B, H, W, 3], or a sequence of single images.
        prompts: the B prompts the images were generated from (`benchmark_prompts`).

    Returns:
        {task: accuracy} for the tasks present (see `TASKS`), "overall" (their mean, GenEval's overall
        score), "exact" (all groups recovered), "num_<task>" and "num_images" (image counts).
    """
    return _score(images, [(p.groups, p.tasks) for p in prompts])


def score_captions(images: torch.Tensor | np.ndarray | Sequence, captions: Sequence[str]) -> dict:
    """Like `score_images`, for arbitrary captions in the shapes grammar: each image is scored on the
    tasks its caption supports (`caption_tasks`) and on "exact".

    Raises:
        ConfigError: a caption does not follow the grammar, or the counts of images and captions differ.
    """
    parsed = [parse_caption(c) for c in captions]
    return _score(images, [(groups, caption_tasks(groups)) for groups in parsed])


def column_counts(image_size: int) -> tuple[int, ...]:
    """Counts N >= 2 for which N of the smallest shapes stacked in one column fit the image."""
    lo = size_range(image_size)[0]
    return tuple(n for n in range(2, MAX_OBJECTS + 1) if n * lo + (n - 1) * GAP + 2 * MARGIN <= image_size)


def _candidates(task: str, image_size: int) -> list[tuple[Group, ...]]:
    """Every prompt of a prompt list (both splits), in a fixed order."""
    triples = [(c, s, p) for c in COLORS for s in SHAPES for p in POSITIONS]
    if task == "single_object":
        return [((1, c, s, p),) for c, s, p in triples]
    if task == "counting":
        return [((n, c, s, p),) for n in column_counts(image_size) for c, s, p in triples]
    pairs = []
    for i, p1 in enumerate(POSITIONS):
        for p2 in POSITIONS[i + 1 :]:
            for s1 in SHAPES:
                for s2 in SHAPES:
                    for c1 in COLORS:
                        for c2 in COLORS:
                            if s1 != s2 and (task == "two_object" or c1 != c2):
                                pairs.append(((1, c1, s1, p1), (1, c2, s2, p2)))
    return pairs


def benchmark_prompts(
    split: str, image_size: int = 32, num_prompts: int = NUM_PROMPTS, seed: int = 0
) -> list[Prompt]:
    """The benchmark prompts of one split, grouped by prompt list (see the module docstring).

    Args:
        split: "held_out" (every prompt names a held-out triple) or "seen" (none does).
        image_size: image side; decides which counts fit in one column.
        num_prompts: prompts per split for the two-object, colour-attribution and counting lists.
        seed: seed of the draw of those lists.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got '{split}'")
    if num_prompts < 1:
        raise ConfigError(f"num_prompts={num_prompts} must be >= 1")
    prompts = []
    for index, task in enumerate(PROMPT_TASKS):
        chosen = [
            groups
            for groups in _candidates(task, image_size)
            if Prompt("", task, groups).held_out == (split == "held_out")
        ]
        if task != "single_object" and len(chosen) > num_prompts:
            rng = np.random.default_rng([seed, index, SPLITS.index(split)])
            chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), num_prompts, replace=False))]
        prompts += [Prompt(format_caption(list(groups)), task, groups) for groups in chosen]
    return prompts


def _column_stack(
    objects: list[tuple[str, str]], where: str, image_size: int, rng: np.random.Generator
) -> Scene | None:
    """(colour, shape) objects stacked top to bottom in column `where`, or None if the drawn sizes do
    not fit: random sizes, random vertical slack between them, a random left inside the column."""
    lo, hi = size_range(image_size)
    sizes = [int(s) for s in rng.integers(lo, hi + 1, size=len(objects))]
    slack = image_size - 2 * MARGIN - sum(sizes) - (len(objects) - 1) * GAP
    if slack < 0:
        return None
    cuts = np.sort(rng.integers(0, slack + 1, size=len(objects)))
    spare = np.diff([0, *cuts.tolist()])  # vertical slack above each object
    scene, top = [], MARGIN
    for (color, shape), size, extra in zip(objects, sizes, spare):
        top += int(extra)
        lefts = [
            left
            for left in range(MARGIN, image_size - size - MARGIN + 1)
            if ShapeSpec(shape, color, 0, left, size).position(image_size) == where
        ]
        if not lefts:
            return None
        scene.append(ShapeSpec(shape, color, top, int(rng.choice(lefts)), size))
        top += size + GAP
    return scene


def prompt_scene(prompt: Prompt | Sequence[Group], image_size: int, rng: np.random.Generator) -> Scene:
    """A scene whose caption is the prompt's, drawn under the dataset's geometry (sizes in
    `size_range`, `MARGIN` from the border, boxes `GAP` apart), left to right as in `sample_scene`.

    Raises:
        ConfigError: no placement found in `RENDER_TRIES` draws (the groups do not fit the image).
    """
    groups = prompt.groups if isinstance(prompt, Prompt) else prompt
    columns: dict[str, list[tuple[str, str]]] = {}
    for count, color, shape, where in groups:
        columns.setdefault(where, []).extend([(color, shape)] * count)
    for _ in range(RENDER_TRIES):
        scene: Scene = []
        for where, objects in columns.items():
            order = rng.permutation(len(objects))
            stack = _column_stack([objects[i] for i in order], where, image_size, rng)
            if stack is None:
                break
            scene += stack
        else:
            if not any(_too_close(a, b) for i, a in enumerate(scene) for b in scene[i + 1 :]):
                return sorted(scene, key=lambda s: (2 * s.left + s.size, 2 * s.top + s.size))
    raise ConfigError(f"could not place the groups {list(groups)} in a {image_size}x{image_size} image")


def render_prompt(prompt: Prompt | Sequence[Group], image_size: int, rng: np.random.Generator) -> np.ndarray:
    """A ground-truth uint8 image [S, S, 3] of the prompt (`prompt_scene` drawn by `render_scene`)."""
    return render_scene(prompt_scene(prompt, image_size, rng), image_size)[0]
