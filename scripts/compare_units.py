"""Train every prediction unit the same way on the embedded digits and compare them in one table.

    python scripts/compare_units.py                       # train, sample, score, write docs/units.md
    python scripts/compare_units.py --skip-training       # re-score the checkpoints already trained

Each recipe (the quickstart next-token generator and every configs/units/*.yaml) uses the same trunk
(4 layers, width 128), data and optimiser, and trains for its own max_steps (or --steps for all); the
wall-clock budget (--budget-minutes, the trainer's max_time) is only a cap. The table reports the steps
each run reached, its training time and seconds per step, and marks a run that the cap stopped early
(`capped`) or that ran slower than its recipe's `# expected_seconds_per_step` (`slow Nx`; see
`mmar.eval.step_budget`), so a row means the same on every machine. Discrete units read the
quickstart VQ tokenizer, continuous ones the KL-VAE of configs/tokenizers/digits_kl.yaml; train those
first. Every unit then samples --per-class images per
class with guidance --cfg-scale (discrete units) or --cfg-scale-continuous with
--cfg-schedule-continuous (flow-head units; constant 4.0 by default: at these short trainings it beats
MAR's linear ramp on class accuracy), and the embedded digits metric scores them: class accuracy and
the classifier-feature Fréchet distance (not Inception FID). Forward passes per image is the unit's
`num_steps`; latency is the wall time of sampling divided by the number of images (batch 100, CPU).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from mmar.checkpoint_io import read_checkpoint
from mmar.eval.embedded import DigitsMetrics
from mmar.eval.report import merge_rows, train_and_score, write_marked
from mmar.eval.step_budget import RUN_HEADER, cap_minutes, run_cells
from mmar.lit.loading import load_generator
from mmar.sampling import Sampler

RECIPES = ["configs/quickstart/digits_ar.yaml", *sorted(map(str, Path("configs/units").glob("*.yaml")))]


@torch.no_grad()
def score(ckpt: Path, args: argparse.Namespace, metrics: DigitsMetrics) -> dict:
    model = load_generator(ckpt)
    steps = read_checkpoint(ckpt, mmap=True)["global_step"]
    continuous = model.tokenizer.kind == "continuous"
    scale = args.cfg_scale_continuous if continuous else args.cfg_scale
    schedule = args.cfg_schedule_continuous if continuous else "constant"
    labels = torch.arange(10).repeat_interleave(args.per_class)
    images, start = [], time.perf_counter()
    for i, batch in enumerate(labels.split(100)):
        sampler = Sampler(cfg_scale=scale, cfg_schedule=schedule, top_k=args.top_k, seed=i)
        images.append(model.generate(batch, sampler).clamp(-1, 1))
    seconds = time.perf_counter() - start
    trained = [model.trunk, model.unit, model.conditioning]
    return {
        "unit": model.hparams.unit + ("[skip_masked]" if getattr(model.unit, "skip_masked", False) else ""),
        "tokens": model.tokenizer.kind,
        "parameters": sum(p.numel() for m in trained for p in m.parameters()),
        "steps": steps,
        "forward_passes_per_image": model.unit.num_steps(model.grid),
        "guidance": f"{scale:g} {schedule}",
        "latency_ms_per_image": 1000 * seconds / len(labels),
        **metrics.compute(torch.cat(images), labels),
    }


def markdown(rows: list[dict]) -> str:
    header = ["unit", "tokens", "params", *RUN_HEADER, "passes / image", "latency (ms / image)"]
    header += ["class accuracy", "classifier FD"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append(
            f"| {r['unit']} | {r['tokens']} | {r['parameters'] / 1e6:.2f}M | {' | '.join(run_cells(r))} | "
            f"{r['forward_passes_per_image']} | {r['latency_ms_per_image']:.1f} | "
            f"{r['digits_class_accuracy']:.3f} | {r['digits_classifier_fd']:.3f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="*", default=RECIPES)
    p.add_argument("--budget-minutes", type=cap_minutes, default=25.0, help="training time cap per run")
    p.add_argument("--steps", type=int, help="override every recipe's max_steps (default: the recipe's)")
    p.add_argument("--skip-training", action="store_true", help="score existing checkpoints only")
    p.add_argument("--per-class", type=int, default=50)
    p.add_argument("--cfg-scale", type=float, default=2.0, help="discrete units (constant)")
    p.add_argument("--cfg-scale-continuous", type=float, default=4.0, help="flow-head units")
    p.add_argument("--cfg-schedule-continuous", default="constant", help="e.g. linear (MAR's and xAR's ramp)")
    p.add_argument("--top-k", type=int, default=0, help="discrete units only")
    p.add_argument("--docs", default="docs/units.md")
    args = p.parse_args(argv)
    metrics = DigitsMetrics(image_size=32)
    scorer = lambda config, ckpt: score(ckpt, args, metrics)
    rows = train_and_score(args.recipes, scorer, args.budget_minutes, args.steps, args.skip_training)
    rows = merge_rows(rows, Path(args.docs).with_suffix(".json"), "recipe", RECIPES, carry=["train_seconds"])
    table = markdown(rows)
    print(table)
    write_marked(Path(args.docs), "compare_units", table, "Prediction units")


if __name__ == "__main__":
    main()
