"""Which embedded metric each data module names for `mmar test`, and how the wrappers of
`mmar.eval.sample_metrics` turn real data into the logged numbers."""

from functools import partial

import numpy as np
import torch

from mmar.data import (
    DigitsDataModule,
    EmbeddedNotesDataModule,
    ImageFolderDataModule,
    MovingDigitsDataModule,
    ShapesDataModule,
)
from mmar.eval.compositional import render_prompt
from mmar.eval.sample_metrics import ClassMetrics, CompositionalMetrics
from mmar.eval.video import MovingDigitsMetrics

SMALL_VIDEO = {"num_clips": 512, "num_val_clips": 64, "epochs": 4, "batch_size": 32}  # a few seconds


def test_embedded_data_modules_name_their_metric_and_folders_none(tmp_path):
    digits = DigitsDataModule().embedded_metrics("label")
    notes = EmbeddedNotesDataModule().embedded_metrics("label")
    video = MovingDigitsDataModule(labels="digit_direction").embedded_metrics("label")
    assert isinstance(digits, ClassMetrics) and (digits.prefix, digits.num_classes) == ("digits", 10)
    assert isinstance(notes, ClassMetrics) and (notes.prefix, notes.num_classes) == ("audio", 12)
    assert (video.prefix, video.num_classes, video.directions) == ("video", 80, True)
    assert not MovingDigitsDataModule().embedded_metrics("label").directions
    assert isinstance(ShapesDataModule().embedded_metrics("caption"), CompositionalMetrics)
    assert ShapesDataModule().embedded_metrics("label") is None  # no metric for shape classes
    assert DigitsDataModule().embedded_metrics("caption") is None
    assert ImageFolderDataModule(str(tmp_path)).embedded_metrics("label") is None
    assert torch.equal(digits.targets(2), torch.arange(10).repeat_interleave(2))


def test_class_metrics_read_digit_and_direction_of_moving_digits(tmp_path):
    build = partial(MovingDigitsMetrics, 16, cache_dir=tmp_path, num_reference=64, train_options=SMALL_VIDEO)
    metric = ClassMetrics(80, build, "video", directions=True)
    data = MovingDigitsDataModule(16, num_clips_train=200, num_clips_val=1, labels="digit_direction")
    data.setup()
    items = [data.train_dataset[i] for i in range(100, 200)]  # real clips, labels direction * 10 + digit
    clips, labels = torch.stack([it["video"] for it in items]), torch.stack([it["label"] for it in items])
    scores = metric.score(clips, labels)
    names = {"class_accuracy", "motion_accuracy", "temporal_consistency", "fd", "fd_real_same_n"}
    assert set(scores) == names
    assert scores["class_accuracy"] > 0.6 and scores["motion_accuracy"] > 0.8  # a quickly trained classifier
    assert 0.0 <= scores["fd"] < 5 * scores["fd_real_same_n"] + 1.0  # real clips score near the floor
    off_by_one = labels - labels % 10 + (labels + 1) % 10  # every digit off by one, directions kept
    wrong = metric.score(clips, off_by_one)
    assert wrong["class_accuracy"] < 0.2 and wrong["motion_accuracy"] == scores["motion_accuracy"]


def test_compositional_metrics_score_ground_truth_renders_of_the_prompts():
    metric = CompositionalMetrics(32, num_prompts=4)
    targets = metric.targets(1)
    captions = metric.conditions(targets[:3])
    assert captions == [metric.prompts[i].caption for i in range(3)]
    rng = np.random.default_rng(0)
    renders = np.stack([render_prompt(metric.prompts[i], 32, rng) for i in targets.tolist()])  # (N, H, W, 3)
    images = torch.from_numpy(renders).permute(0, 3, 1, 2).float() / 127.5 - 1
    scores = metric.score(images, targets)
    assert scores["compositional_overall"] == scores["compositional_held_out"] == 1.0
    assert scores["compositional_seen"] == scores["compositional_exact"] == 1.0
    blank = metric.score(torch.full_like(images, -1.0), targets)  # black images: nothing detected
    assert blank["compositional_overall"] == blank["compositional_exact"] == 0.0
