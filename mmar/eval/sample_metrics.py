"""Embedded metrics of samples generated at test time: what `mmar test` reports for a generator.

An embedded data module names the metric that fits its data through `embedded_metrics(condition)` (the
generator's condition: "label" or "caption"); folders, token caches and unmatched conditions give None.
Each metric here wraps an existing one and says three things:

- `targets(per_class)`: what to sample, long [N]: `per_class` labels of every class (`class_labels`), or
  for text-to-image `per_class` images of every compositional benchmark prompt (prompt indices);
- `conditions(targets)`: the generator's conditions of a batch of targets (labels, or captions);
- `score(samples, targets)`: {name: value}, logged as `test/<name>`.

Class metrics (embedded classifiers, not Inception FID; `mmar.eval.embedded`, `.audio`, `.video`) give
`class_accuracy`, `fd` (classifier-feature Fréchet distance to held-out real data) and `fd_real_same_n`
(the FD of as many real train items: the floor at this sample count, FD being biased upwards for few
samples); moving digits add `temporal_consistency` (and `motion_accuracy` for "digit_direction" labels).
Text-to-image on the shapes gives the GenEval-style `compositional_overall` over the benchmark prompts
(`mmar.eval.compositional`), per split (`compositional_held_out`, `compositional_seen`) and `exact`.
The underlying metric (a cached classifier, trained on first use) is built on the first `score`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cached_property

import torch

from mmar.sampling import class_labels

LOGGED = {  # a class metric's compute() keys (less its prefix) -> the logged names
    "class_accuracy": "class_accuracy",
    "classifier_fd": "fd",
    "classifier_fd_real_same_n": "fd_real_same_n",
    "motion_accuracy": "motion_accuracy",
    "temporal_consistency": "temporal_consistency",
}


class ClassMetrics:
    """Class-conditional samples scored by an embedded classifier metric.

    Args:
        num_classes: the generator's classes; `per_class` samples of each are drawn.
        build: makes the metric (DigitsMetrics, NotesMetrics, MovingDigitsMetrics), on first use.
        prefix: the prefix of its compute() keys ("digits", "audio", "video").
        directions: labels are direction * 10 + digit (moving digits' "digit_direction").
    """

    condition = "label"

    def __init__(self, num_classes: int, build: Callable, prefix: str, directions: bool = False):
        self.num_classes, self.build, self.prefix, self.directions = num_classes, build, prefix, directions

    @cached_property
    def metric(self):
        return self.build()

    def targets(self, per_class: int) -> torch.Tensor:
        return class_labels(None, self.num_classes, per_class)  # (N,) grouped by class

    def conditions(self, targets: torch.Tensor) -> torch.Tensor:
        return targets

    def score(self, samples: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        labels = (targets % 10, targets // 10) if self.directions else (targets,)  # (digit, direction)
        result = self.metric.compute(samples, *labels)
        named = {key.removeprefix(f"{self.prefix}_"): value for key, value in result.items()}
        return {LOGGED[key]: float(value) for key, value in named.items() if key in LOGGED}


class CompositionalMetrics:
    """Text-to-image samples of the shapes benchmark prompts (both splits), scored GenEval-style.

    Args:
        image_size: side of the generated images (decides the counting prompts).
        num_prompts: two-object, colour-attribution and counting prompts per split (`benchmark_prompts`).
    """

    condition = "caption"

    def __init__(self, image_size: int, num_prompts: int | None = None):
        from mmar.eval.compositional import NUM_PROMPTS, SPLITS, benchmark_prompts

        count = NUM_PROMPTS if num_prompts is None else num_prompts
        self.prompts = [p for split in SPLITS for p in benchmark_prompts(split, image_size, count)]

    def targets(self, per_class: int) -> torch.Tensor:
        return torch.arange(len(self.prompts)).repeat_interleave(per_class)  # (N,) prompt indices

    def conditions(self, targets: torch.Tensor) -> list[str]:
        return [self.prompts[i].caption for i in targets.tolist()]

    def score(self, samples: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        from mmar.eval.compositional import score_images

        prompts = [self.prompts[i] for i in targets.tolist()]
        held_out = torch.tensor([p.held_out for p in prompts])
        scores = score_images(samples, prompts)
        result = {"compositional_overall": scores["overall"], "compositional_exact": scores["exact"]}
        for name, rows in (("held_out", held_out), ("seen", ~held_out)):
            if rows.any():
                chosen = [p for p, keep in zip(prompts, rows.tolist()) if keep]
                result[f"compositional_{name}"] = score_images(samples[rows], chosen)["overall"]
        return result
