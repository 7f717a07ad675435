"""Train text-to-image recipes on the shapes captions and score them on the compositional benchmark.

    python scripts/compare_t2i.py                     # train, sample, score, write docs/t2i.md
    python scripts/compare_t2i.py --skip-training     # re-score the checkpoints already trained

Each recipe (configs/t2i/shapes_*.yaml generators; train the tokenizer and the caption cache first, see
docs/t2i.md) trains for its max_steps (or --steps), the wall-clock budget (--budget-minutes, the
trainer's max_time) only a cap; a run the cap stopped early is marked `capped`, one slower than its
recipe's `# expected_seconds_per_step` `slow Nx` (`mmar.eval.step_budget`). Each then samples
--per-prompt images for every prompt of the benchmark's two splits (`held_out`: a (colour, shape,
column) triple never seen in training; `seen`) with `scripts/sample_t2i.py`, and
`mmar.eval.compositional` scores them per GenEval-style task. The sampler settings are the same for
every unit: constant guidance 2.0 and temperature 0.7, chosen on the `seen` split only (never on the
held-out prompts; see docs/t2i.md). The first row is the
ceiling the tokenizer allows: ground-truth renders of the same prompts, encoded and decoded by it.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch

from mmar.checkpoint_io import read_checkpoint
from mmar.eval.compositional import SPLITS, TASKS, benchmark_prompts, render_prompt, score_images
from mmar.eval.report import merge_rows, train_and_score, write_marked
from mmar.eval.step_budget import RUN_HEADER, cap_minutes, run_cells
from tokenizers_visual import load_tokenizer

TOKENIZER = "runs/t2i/vq/tokenizer"
RECIPES = [TOKENIZER, "configs/t2i/shapes_next_token.yaml", "configs/t2i/shapes_next_block.yaml"]
COLUMNS = [*TASKS, "overall"]


def sample_t2i():
    """scripts/sample_t2i.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("sample_t2i", Path(__file__).with_name("sample_t2i.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def score(ckpt: Path, out: Path, args: argparse.Namespace) -> dict:
    """Sample and score both benchmark splits; the row of the table."""
    sampler = sample_t2i()
    row = {"steps": read_checkpoint(ckpt, mmap=True)["global_step"]}
    for split in SPLITS:
        argv = ["--ckpt", str(ckpt), "--benchmark", split, "--score", "--per-prompt", str(args.per_prompt)]
        argv += ["--cfg-scale", str(args.cfg_scale), "--temperature", str(args.temperature)]
        argv += ["--seed", "0", "--out", str(out / split)]
        metrics = sampler.run(sampler.parse_args(argv))
        row.update(unit=metrics["unit"], passes=metrics["forward_passes_per_image"])
        row[split] = {k: metrics["compositional"][k] for k in [*COLUMNS, "exact", "num_images"]}
    return row


@torch.no_grad()
def tokenizer_ceiling(path: str, per_prompt: int) -> dict:
    """The row of ground-truth renders of every benchmark prompt through the tokenizer (encode, decode)."""
    tokenizer = load_tokenizer(path).eval()
    row = {"recipe": path, "unit": "renders through the tokenizer", "steps": "n/a", "passes": "n/a"}
    for split in SPLITS:
        prompts = [p for p in benchmark_prompts(split) for _ in range(per_prompt)]
        rng = np.random.default_rng(0)
        renders = torch.stack([torch.from_numpy(render_prompt(p, 32, rng)) for p in prompts])  # (N, H, W, 3)
        images = renders.permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, H, W) in [-1, 1]
        decoded = torch.cat([tokenizer.decode(tokenizer.encode(x)) for x in images.split(256)]).clamp(-1, 1)
        scores = score_images(decoded, prompts)
        row[split] = {k: scores[k] for k in [*COLUMNS, "exact", "num_images"]}
    return row


def markdown(rows: list[dict]) -> str:
    header = ["unit", *RUN_HEADER, "passes / image", "split", *COLUMNS, "exact"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        run = " | ".join(run_cells(r))
        for split in SPLITS:
            scores = " | ".join(f"{r[split][c]:.3f}" for c in [*COLUMNS, "exact"])
            name = split.replace("_", "-")
            lines.append(f"| {r['unit']} | {run} | {r['passes']} | {name} | {scores} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="*", default=RECIPES[1:])
    p.add_argument("--budget-minutes", type=cap_minutes, default=40.0, help="training time cap per run")
    p.add_argument("--steps", type=int, help="override every recipe's max_steps (default: the recipe's)")
    p.add_argument("--skip-training", action="store_true", help="score existing checkpoints only")
    p.add_argument("--per-prompt", type=int, default=8, help="images per benchmark prompt")
    p.add_argument("--cfg-scale", type=float, default=2.0, help="constant guidance, every unit")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature, every unit")
    p.add_argument("--tokenizer", default=TOKENIZER, help="the ceiling row's tokenizer (skipped if missing)")
    p.add_argument("--out", default="runs/t2i/eval", help="samples and metrics per recipe and split")
    p.add_argument("--docs", default="docs/t2i.md")
    args = p.parse_args(argv)
    rows = [tokenizer_ceiling(args.tokenizer, args.per_prompt)] if Path(args.tokenizer).is_dir() else []
    scorer = lambda config, ckpt: score(ckpt, Path(args.out) / Path(config).stem, args)
    rows += train_and_score(args.recipes, scorer, args.budget_minutes, args.steps, args.skip_training)
    rows = merge_rows(rows, Path(args.docs).with_suffix(".json"), "recipe", RECIPES, carry=["train_seconds"])
    table = markdown(rows)
    print(table)
    write_marked(Path(args.docs), "compare_t2i", table, "Text-to-image")


if __name__ == "__main__":
    main()
