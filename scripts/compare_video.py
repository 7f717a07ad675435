"""Train the moving-digits video generators of configs/video/ and compare them in one table (docs/video.md).

    python scripts/compare_video.py                    # train, sample, score, write docs/video.md
    python scripts/compare_video.py --skip-training    # re-score the checkpoints already trained

Every recipe uses the same trunk (4 layers, width 128), token cache and optimiser and trains for its
max_steps, the wall-clock budget (--budget-minutes, the trainer's max_time) only a cap; the table marks a
run the cap stopped early (`capped`) or slower than its recipe's `# expected_seconds_per_step` (`slow Nx`;
`mmar.eval.step_budget`). The recipes run over the causal video tokenizer's 3 x 8 x 8 grid, conditioned on
80 classes (10 digits x 8 directions of motion) or on the same in words ("a 3 moving left"). Each unit then
samples --per-class clips of every class (guidance --cfg-scale, constant; temperature 1; batch 80; seed =
batch index) and continues --continued held-out clips from their first latent frame (the first video frame);
the moving-digits classifier (`mmar.eval.video`) scores both: class accuracy (the digit asked for), motion
accuracy (the direction asked for, or the continued clip's own), temporal consistency and the classifier-
feature Fréchet distance against held-out clips (not FVD). Trunk passes per clip are counted during sampling;
seconds per clip is the wall time of class-conditional sampling divided by the clips (CPU). One example GIF
per unit goes to docs/video_<unit>.gif.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np
import torch
import yaml

from mmar.checkpoint_io import read_checkpoint
from mmar.data.video import DIRECTIONS, NUM_CLASSES, MovingDigitsDataModule, captions_of
from mmar.eval.fid import to_uint8
from mmar.eval.report import merge_rows, train_and_score, write_marked
from mmar.eval.step_budget import RUN_HEADER, cap_minutes, run_cells
from mmar.eval.video import MovingDigitsMetrics
from mmar.lit.loading import load_generator
from mmar.sampling import Sampler, sample_in_batches
from mmar.video_io import write_gif
from tokenizers_visual import load_tokenizer

RECIPES = [
    f"configs/video/moving_digits_{unit}.yaml" for unit in ("next_token", "next_block", "next_neighbor")
]
NUM_LABELS = NUM_CLASSES * len(DIRECTIONS)


def conditions_of(model, labels: torch.Tensor):
    """Labels for a class condition; their captions ("a 3 moving left") for a text condition."""
    return captions_of(labels) if hasattr(model.conditioning, "encoder_name") else labels


def held_out_clips(n: int, image_size: int) -> dict[str, torch.Tensor]:
    """The first n clips of the moving-digits val split (held-out digit images), with their labels."""
    data = MovingDigitsDataModule(image_size=image_size, num_clips_val=n, labels="digit_direction")
    data.setup()
    items = [data.val_dataset[i] for i in range(n)]
    return {key: torch.stack([item[key] for item in items]) for key in ("video", "label", "direction")}


def prefixed(metrics: dict, prefix: str) -> dict:
    keys = ("class_accuracy", "motion_accuracy", "temporal_consistency", "classifier_fd")
    return {f"{prefix}{k}": metrics[f"video_{k}"] for k in keys}


@torch.no_grad()
def score(ckpt: Path, args: argparse.Namespace, metrics: MovingDigitsMetrics, held_out: dict) -> dict:
    model = load_generator(ckpt)
    checkpoint = read_checkpoint(ckpt, mmap=True)
    labels = torch.arange(NUM_LABELS).repeat_interleave(args.per_class)  # grouped by class
    sampler = Sampler(cfg_scale=args.cfg_scale, seed=0)  # batch i seeded i
    conditions = partial(conditions_of, model)
    clips, seconds, passes = sample_in_batches(model, labels, sampler, 80, conditions=conditions)
    write_example(clips, args.per_class, Path(args.docs).parent / f"video_{model.unit.name}.gif")

    given = held_out["video"]
    continued, _, _ = sample_in_batches(model, held_out["label"], sampler, 80, given, 1, conditions)
    scored = metrics.compute(clips, labels % NUM_CLASSES, labels // NUM_CLASSES)
    scored_continued = metrics.compute(continued, held_out["label"] % NUM_CLASSES, held_out["direction"])
    trained = [model.trunk, model.unit, model.conditioning]
    return {
        "unit": model.unit.name,
        "block": str(model.hparams.unit_kwargs.get("block", "")) if model.hparams.unit_kwargs else "",
        "parameters": sum(p.numel() for m in trained for p in m.parameters()),
        "steps": checkpoint["global_step"],
        "trunk_passes_per_clip": passes,
        "seconds_per_clip": seconds / len(clips),
        "num_clips": len(clips),
        **prefixed(scored, ""),
        "classifier_fd_real_same_n": scored["video_classifier_fd_real_same_n"],
        **prefixed(scored_continued, "continued_"),
        "num_continued": len(continued),
    }


def write_example(clips: torch.Tensor, per_class: int, path: Path) -> None:
    """One GIF of 2 x 8 clips: the first sample of digits 0-7 moving right (top) and left (bottom)."""
    rows = []
    for direction in ("right", "left"):
        d = DIRECTIONS.index(direction)
        picks = [clips[(d * NUM_CLASSES + digit) * per_class] for digit in range(8)]
        rows.append(torch.cat(picks, dim=-1))  # (C, T, H, 8 W)
    video = to_uint8(torch.cat(rows, dim=-2)).permute(1, 2, 3, 0)  # (T, 2 H, 8 W, C)
    video = video.repeat_interleave(2, 1).repeat_interleave(2, 2)  # twice the size, for the page
    write_gif(path, video.numpy(), fps=6)


def reference_rows(metrics: MovingDigitsMetrics, held_out: dict, tokenizer: str) -> list[dict]:
    """The classifier on real held-out clips, and on their reconstructions by the recipes' tokenizer:
    the ceilings of every column, for any model and for a model over this tokenizer."""
    digits, directions = held_out["label"] % NUM_CLASSES, held_out["direction"]
    real = metrics.compute(held_out["video"], digits, directions)
    with torch.no_grad():
        video = load_tokenizer(tokenizer).eval()
        recon = torch.cat([video.decode(video.encode(x)).clamp(-1, 1) for x in held_out["video"].split(80)])
    return [
        {"recipe": "real held-out clips", "unit": "real clips", **prefixed(real, "")},
        {
            "recipe": "tokenizer reconstructions",
            "unit": "reconstructions",
            **prefixed(metrics.compute(recon, digits, directions), ""),
        },
    ]


def markdown(rows: list[dict]) -> str:
    header = ["unit", "block", *RUN_HEADER, "passes / clip", "s / clip", "class acc.", "motion acc."]
    header += ["temporal consistency", "classifier FD", "continued: class acc.", "continued: motion acc."]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    fmt = lambda row, key, spec: "n/a" if row.get(key) is None else format(row[key], spec)
    for r in rows:
        lines.append(
            f"| {r['unit']} | {r.get('block', '') or '-'} | {' | '.join(run_cells(r))} | "
            f"{fmt(r, 'trunk_passes_per_clip', '.0f')} | "
            f"{fmt(r, 'seconds_per_clip', '.3f')} | {r['class_accuracy']:.3f} | {r['motion_accuracy']:.3f} | "
            f"{r['temporal_consistency']:.3f} | {r['classifier_fd']:.2f} | "
            f"{fmt(r, 'continued_class_accuracy', '.3f')} | {fmt(r, 'continued_motion_accuracy', '.3f')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="*", default=RECIPES)
    p.add_argument("--budget-minutes", type=cap_minutes, default=40.0, help="training time cap per run")
    p.add_argument("--skip-training", action="store_true", help="score existing checkpoints only")
    p.add_argument("--per-class", type=int, default=4, help="clips per class (80 classes)")
    p.add_argument("--continued", type=int, default=320, help="held-out clips to continue")
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--image-size", type=int, default=32, help="the clips' side (the recipes': 32)")
    p.add_argument("--docs", default="docs/video.md")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    np.random.seed(0)
    metrics = MovingDigitsMetrics(image_size=args.image_size)
    held_out = held_out_clips(args.continued, args.image_size)
    scorer = lambda config, ckpt: score(ckpt, args, metrics, held_out)
    rows = train_and_score(args.recipes, scorer, args.budget_minutes, None, args.skip_training)
    tokenizer = yaml.safe_load(Path(args.recipes[0]).read_text())["model"]["init_args"]["tokenizer"]
    rows += reference_rows(metrics, held_out, tokenizer)
    order = [*RECIPES, "real held-out clips", "tokenizer reconstructions"]
    rows = merge_rows(rows, Path(args.docs).with_suffix(".json"), "recipe", order, carry=["train_seconds"])
    table = markdown(rows)
    print(table)
    write_marked(Path(args.docs), "compare_video", table, "Video generation")


if __name__ == "__main__":
    main()
