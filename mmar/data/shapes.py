"""Procedurally rendered shapes with ground-truth captions and segment maps (embedded, no download).

Each image shows 1-3 flat-coloured shapes (circle, square, triangle) on a black background, rendered
without anti-aliasing, so the colours, the segment map and the caption are exact functions of the
scene. It serves two purposes: ground-truth segments and boundaries for segmenters (subobject-level
tokenization, Chen et al., 2024, "Subobject-level Image Tokenization"), and compositional captions for
text-to-image whose content can be checked objectively.

Scene (seeded per index): shapes are axis-aligned in a square bounding box of side `size` in
[image_size // 4, 3 * image_size // 8], placed so that bounding boxes stay at least `GAP` pixels apart
and `MARGIN` pixels from the image border (shapes never touch, every shape is one segment, and the
background keeps interior pixels between any two shapes and between a shape and the border, so it is one
basin for a boundary-based segmenter). Objects are numbered left to right (by the centre
of the bounding box, then top to bottom); segment k (k >= 1) is the k-th object, 0 the background.
The label is the shape class of object 1 (the leftmost): 0 circle, 1 square, 2 triangle.

Caption grammar (exactly derived from the scene; `parse_caption` inverts it):

    caption := group | group (", " group)* " and " group
    group   := count " " colour " " noun " " where
    count   := "a" (one object) | "two" | "three"
    colour  := "red" | "green" | "blue" | "yellow" | "purple" | "white"
    noun    := "circle" | "square" | "triangle", plus "s" when count > 1
    where   := "on the left" | "in the middle" | "on the right"

A group gathers the objects of one (colour, shape, column); the column is the horizontal third holding
the centre of the object's bounding box. Groups are ordered by column (left to right), then shape, then
colour, in the order listed above. Example: "two red circles on the left and a blue square in the middle".

Compositional split (text-to-image): `held_out(colour, shape, position)` names 9 of the 54 (colour, shape,
column) triples, one colour per (shape, column) pair, chosen so that every (colour, shape), (colour, column)
and (shape, column) pair still occurs in training. With `compositions="seen"` a dataset redraws every
scene that contains a held-out triple (in any count), so training captions never name one; the
compositional benchmark (`mmar.eval.compositional`) prompts them.

Batches: {"image": float32 [B, 3, H, W] in [-1, 1], "label": long [B], "caption": list[str],
"segments": long [B, H, W], "boundaries": bool [B, H, W]} (thick boundaries, `boundary_map`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from mmar.data.base import SplitDataModule
from mmar.data.segments import boundary_map
from mmar.errors import ConfigError

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
BACKGROUND = (0, 0, 0)
POSITIONS = ("left", "middle", "right")
POSITION_PHRASES = {"left": "on the left", "middle": "in the middle", "right": "on the right"}
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
MAX_OBJECTS = 3
GAP = 3  # pixels between bounding boxes: shapes never touch, and their thick boundaries never meet
MARGIN = 2  # pixels between a bounding box and the image border, for the same reason
REPEAT_PROB = 0.3  # chance that a new object copies the colour and shape of an earlier one (counts > 1)
PLACEMENT_TRIES = 100
SPLITS = {"train": 0, "val": 1, "test": 2}
COMPOSITIONS = ("all", "seen")


@dataclass(frozen=True)
class ShapeSpec:
    """One object: its shape and colour names and its square bounding box (top, left, side) in pixels."""

    shape: str
    color: str
    top: int
    left: int
    size: int

    def position(self, image_size: int) -> str:
        """The horizontal third ("left", "middle", "right") holding the centre of the bounding box."""
        twice_center = 2 * self.left + self.size  # 2 * centre, an integer: no rounding at the thirds
        if 3 * twice_center < 2 * image_size:
            return "left"
        return "right" if 3 * twice_center > 4 * image_size else "middle"


Scene = list[ShapeSpec]
Group = tuple[int, str, str, str]  # (count, colour, shape, position)


def size_range(image_size: int) -> tuple[int, int]:
    """(smallest, largest) side of a shape's bounding box for `image_size`."""
    return image_size // 4, 3 * image_size // 8


def sample_scene(rng: np.random.Generator, image_size: int, min_objects: int, max_objects: int) -> Scene:
    """A random scene of `min_objects`..`max_objects` non-touching shapes, sorted left to right."""
    lo, hi = size_range(image_size)
    scene: Scene = []
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        if scene and rng.random() < REPEAT_PROB:
            source = scene[int(rng.integers(len(scene)))]
            shape, color = source.shape, source.color
        else:
            shape, color = (
                SHAPES[int(rng.integers(len(SHAPES)))],
                list(COLORS)[int(rng.integers(len(COLORS)))],
            )
        for _ in range(PLACEMENT_TRIES):
            size = int(rng.integers(lo, hi + 1))
            top, left = (int(v) for v in rng.integers(MARGIN, image_size - size - MARGIN + 1, size=2))
            candidate = ShapeSpec(shape, color, top, left, size)
            if not any(too_close(candidate, other) for other in scene):
                scene.append(candidate)
                break
    return sorted(scene, key=lambda s: (2 * s.left + s.size, 2 * s.top + s.size))


def held_out(color: str, shape: str, position: str) -> bool:
    """Whether the (colour, shape, column) triple is held out of training (see the module docstring)."""
    return (list(COLORS).index(color) + SHAPES.index(shape) + POSITIONS.index(position)) % len(COLORS) == 0


def scene_is_seen(scene: Scene, image_size: int) -> bool:
    """Whether no object of the scene forms a held-out (colour, shape, column) triple."""
    return not any(held_out(s.color, s.shape, s.position(image_size)) for s in scene)


def too_close(a: ShapeSpec, b: ShapeSpec) -> bool:
    """Whether the bounding boxes of `a` and `b` are fewer than GAP pixels apart."""
    apart_y = a.top + a.size + GAP <= b.top or b.top + b.size + GAP <= a.top
    apart_x = a.left + a.size + GAP <= b.left or b.left + b.size + GAP <= a.left
    return not (apart_x or apart_y)


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Bool [size, size] mask of a shape filling its bounding box, tested at pixel centres.

    Circle: centre distance <= size / 2. Square: every pixel. Triangle: apex at the top centre, base on
    the bottom row, |x - size/2| <= (y + 1/2) / 2, which puts one or two pixels on the top row.
    """
    c = np.arange(size) + 0.5  # pixel centres
    y, x = c[:, None], c[None, :]
    if shape == "circle":
        return (y - size / 2) ** 2 + (x - size / 2) ** 2 <= (size / 2) ** 2
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":
        return np.abs(x - size / 2) <= (y + 0.5) / 2
    raise ConfigError(f"unknown shape '{shape}'; known: {SHAPES}")


def render_scene(scene: Scene, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw a scene: (uint8 image [S, S, 3], int64 segments [S, S]; 0 background, k the k-th object)."""
    image = np.empty((image_size, image_size, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    segments = np.zeros((image_size, image_size), dtype=np.int64)
    for k, spec in enumerate(scene, start=1):
        mask = shape_mask(spec.shape, spec.size)  # [s, s]
        window = (slice(spec.top, spec.top + spec.size), slice(spec.left, spec.left + spec.size))
        image[window][mask] = COLORS[spec.color]
        segments[window][mask] = k
    return image, segments


def scene_groups(scene: Scene, image_size: int) -> list[Group]:
    """The caption's groups (count, colour, shape, position) in caption order."""
    counts: dict[tuple[str, str, str], int] = {}
    for spec in scene:
        key = (spec.position(image_size), spec.shape, spec.color)
        counts[key] = counts.get(key, 0) + 1
    order = sorted(
        counts, key=lambda k: (POSITIONS.index(k[0]), SHAPES.index(k[1]), list(COLORS).index(k[2]))
    )
    return [(counts[k], k[2], k[1], k[0]) for k in order]


def format_caption(groups: list[Group]) -> str:
    """Groups (count, colour, shape, position) -> the caption (see the grammar in the module docstring)."""
    phrases = [
        f"{COUNT_WORDS[n]} {color} {shape}{'s' if n > 1 else ''} {POSITION_PHRASES[where]}"
        for n, color, shape, where in groups
    ]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def caption_scene(scene: Scene, image_size: int) -> str:
    """The ground-truth caption of a scene."""
    return format_caption(scene_groups(scene, image_size))


_GROUP = re.compile(
    rf"^({'|'.join(COUNT_WORDS.values())}) ({'|'.join(COLORS)}) ({'|'.join(SHAPES)})(s?) "
    rf"({'|'.join(POSITION_PHRASES.values())})$"
)


def parse_caption(caption: str) -> list[Group]:
    """Invert `format_caption`: the groups (count, colour, shape, position) of a caption.

    Raises:
        ConfigError: the caption does not follow the grammar.
    """
    head, _, last = caption.rpartition(" and ")
    parts = [*head.split(", "), last] if head else [last]
    words = {w: n for n, w in COUNT_WORDS.items()}
    phrases = {p: w for w, p in POSITION_PHRASES.items()}
    groups = []
    for part in parts:
        match = _GROUP.match(part)
        if match is None or (match[4] == "s") != (words[match[1]] > 1):
            raise ConfigError(
                f"'{part}' in caption '{caption}' does not follow the shapes grammar "
                "(e.g. 'two red circles on the left'); see mmar.data.shapes"
            )
        groups.append((words[match[1]], match[2], match[3], phrases[match[5]]))
    return groups


class ShapesDataset(Dataset):
    """`num_items` procedurally rendered scenes; item i is a pure function of (seed, split, i).

    Args:
        num_items: number of scenes.
        image_size: side of the square RGB images (>= 16).
        min_objects: fewest shapes per image (>= 1).
        max_objects: most shapes per image (<= 3, so counts stay in the caption grammar).
        seed: seed of the scene generator.
        split: "train", "val" or "test"; each draws scenes from its own random stream.
        compositions: "all" scenes, or only "seen" ones: scenes with a held-out (colour, shape, column)
            triple are redrawn from the same stream, so the caption never names one.
    """

    def __init__(
        self,
        num_items: int,
        image_size: int = 32,
        min_objects: int = 1,
        max_objects: int = 3,
        seed: int = 0,
        split: str = "train",
        compositions: str = "all",
    ):
        check_shapes_args(num_items, image_size, min_objects, max_objects)
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {sorted(SPLITS)}, got '{split}'")
        if compositions not in COMPOSITIONS:
            raise ConfigError(f"compositions must be one of {COMPOSITIONS}, got '{compositions}'")
        self.num_items = num_items
        self.image_size = image_size
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.seed = seed
        self.split = split
        self.compositions = compositions

    def __len__(self) -> int:
        return self.num_items

    def scene(self, index: int) -> Scene:
        """The objects of item `index`, left to right (object k is segment k + 1)."""
        if not 0 <= index < self.num_items:
            raise IndexError(f"index {index} out of range for {self.num_items} items")
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        while True:
            scene = sample_scene(rng, self.image_size, self.min_objects, self.max_objects)
            if self.compositions == "all" or scene_is_seen(scene, self.image_size):
                return scene

    def __getitem__(self, index: int) -> dict:
        scene = self.scene(index)
        image, segments = render_scene(scene, self.image_size)
        pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1  # [3, S, S] in [-1, 1]
        segments_t = torch.from_numpy(segments)  # [S, S]
        return {
            "image": pixels,
            "label": torch.tensor(SHAPES.index(scene[0].shape)),
            "caption": caption_scene(scene, self.image_size),
            "segments": segments_t,
            "boundaries": boundary_map(segments_t),
        }


def check_shapes_args(num_items: int, image_size: int, min_objects: int, max_objects: int) -> None:
    """Raise ConfigError naming the field when the shapes data cannot be generated as asked."""
    if num_items < 1:
        raise ConfigError(f"num_items={num_items} must be >= 1")
    if image_size < 16:
        raise ConfigError(f"image_size={image_size} is too small for the shapes data; use image_size >= 16")
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise ConfigError(
            f"need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, got min_objects={min_objects}, "
            f"max_objects={max_objects}"
        )


class ShapesDataModule(SplitDataModule):
    """The shapes dataset as a LightningDataModule; the test split is `num_val` scenes of a third random
    stream, held out from both train and val.

    Args:
        image_size: side of the square RGB images.
        batch_size: items per batch.
        num_train: scenes in the train split.
        num_val: scenes in the val split (0: no validation).
        min_objects: fewest shapes per image.
        max_objects: most shapes per image (<= 3).
        seed: seed of the scene generator (the splits use separate streams of it).
        compositions: "all", or "seen" to keep the held-out (colour, shape, column) triples out of both
            splits (text-to-image training; see `held_out`).
        num_workers: DataLoader worker processes.
    """

    num_classes: int = len(SHAPES)

    def __init__(
        self,
        image_size: int = 32,
        batch_size: int = 64,
        num_train: int = 20000,
        num_val: int = 512,
        min_objects: int = 1,
        max_objects: int = 3,
        seed: int = 0,
        compositions: str = "all",
        num_workers: int = 0,
    ):
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        check_shapes_args(num_train, image_size, min_objects, max_objects)
        if num_val < 0:
            raise ConfigError(f"num_val={num_val} must be >= 0")
        self.image_size = image_size
        self.num_train = num_train
        self.num_val = num_val
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.seed = seed
        self.compositions = compositions

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return (3, self.image_size, self.image_size)

    def embedded_metrics(self, condition: str):
        """Text-to-image: the compositional score of the benchmark prompts (class-conditional: None)."""
        if condition != "caption":
            return None
        from mmar.eval.sample_metrics import CompositionalMetrics

        return CompositionalMetrics(self.image_size)

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        common = {
            "image_size": self.image_size,
            "min_objects": self.min_objects,
            "max_objects": self.max_objects,
            "seed": self.seed,
            "compositions": self.compositions,
        }
        self.train_dataset = ShapesDataset(self.num_train, split="train", **common)
        self.val_dataset = ShapesDataset(self.num_val, split="val", **common) if self.num_val else None
        self.test_dataset = ShapesDataset(self.num_val, split="test", **common) if self.num_val else None
