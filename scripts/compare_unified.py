"""The unified text + image model beside the prefix-conditioned text-to-image model, on held-out shapes
compositions: text-to-image with the compositional scorer, and captioning accuracy.

    python scripts/compare_unified.py                  # train the unified recipe, score both models
    python scripts/compare_unified.py --skip-training  # re-score the checkpoints already trained

Text-to-image: `scripts/sample_t2i.py` on both benchmark splits with the settings of docs/t2i.md for
every model (constant guidance 2.0, temperature 0.7, 8 images a prompt, seed 0), scored per GenEval-style
task by `mmar.eval.compositional`. Captioning (the unified model only; the prefix model cannot read
images): --per-prompt ground-truth renders of every benchmark prompt (seed 0), encoded by the model's
image tokenizer, captioned greedily (temperature 0, at most 32 tokens) and parsed with `parse_caption`
against the prompt's objects (`score_generated_captions`: exact, and per attribute). The prefix model
(configs/t2i/shapes_next_token.yaml, trained by scripts/compare_t2i.py) is not retrained here; the
unified recipe trains for its max_steps, the wall-clock budget (--budget-minutes, the trainer's max_time)
only a cap. "train (s)" is the time the trainer itself measured (Lightning's Timer state in the
checkpoint), the same clock for both; a run the cap stopped early is marked `capped`, one slower than its
recipe's `# expected_seconds_per_step` `slow Nx` (`mmar.eval.step_budget`).
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import torch

from mmar.checkpoint_io import read_checkpoint
from mmar.eval.compositional import (
    CAPTION_ATTRIBUTES,
    SPLITS,
    TASKS,
    benchmark_prompts,
    render_prompt,
    score_generated_captions,
)
from mmar.eval.report import merge_rows, train_and_score, write_marked
from mmar.eval.step_budget import RUN_HEADER, cap_minutes, run_cells
from mmar.lit.loading import is_stream_checkpoint, load_stream

PREFIX, UNIFIED = "configs/t2i/shapes_next_token.yaml", "configs/unified/shapes.yaml"
CAPTION_COLUMNS = ["exact", *CAPTION_ATTRIBUTES]


def sample_t2i():
    """scripts/sample_t2i.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("sample_t2i", Path(__file__).with_name("sample_t2i.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@torch.no_grad()
def captioning(ckpt: Path, split: str, per_prompt: int, batch_size: int = 64) -> dict:
    """Captioning scores of a unified model on renders of a benchmark split's prompts."""
    model = load_stream(ckpt)
    prompts = [p for p in benchmark_prompts(split) for _ in range(per_prompt)]
    rng = np.random.default_rng(0)
    renders = torch.stack([torch.from_numpy(render_prompt(p, 32, rng)) for p in prompts])  # (N, H, W, 3)
    images = renders.permute(0, 3, 1, 2).float() / 127.5 - 1  # (N, 3, H, W) in [-1, 1]
    captions = []
    for batch in images.split(batch_size):
        captions += model.caption(batch, max_tokens=32)  # default Sampler at temperature 0: greedy
    scores = score_generated_captions(captions, [p.groups for p in prompts])
    pairs = list(zip(prompts, captions))[::per_prompt][:8]  # the first render of the first prompts
    scores["examples"] = [{"truth": p.caption, "caption": c} for p, c in pairs]
    return scores


def score(ckpt: Path, out: Path, args: argparse.Namespace) -> dict:
    """Sample and score both benchmark splits (and caption them, for a unified model); the table's row."""
    sampler = sample_t2i()
    checkpoint = read_checkpoint(ckpt, mmap=True)
    row = {"steps": checkpoint["global_step"]}
    for split in SPLITS:
        argv = ["--ckpt", str(ckpt), "--benchmark", split, "--score", "--per-prompt", str(args.per_prompt)]
        argv += ["--cfg-scale", "2.0", "--temperature", "0.7", "--seed", "0", "--out", str(out / split)]
        metrics = sampler.run(sampler.parse_args(argv))
        row.update(unit=metrics["unit"], passes=metrics["forward_passes_per_image"])
        row[split] = {k: metrics["compositional"][k] for k in [*TASKS, "overall", "num_images"]}
        if is_stream_checkpoint(ckpt):
            row[f"caption_{split}"] = captioning(ckpt, split, args.per_prompt)
    return row


def markdown(rows: list[dict]) -> str:
    header = ["model", *RUN_HEADER, "split", "t2i overall", *TASKS]
    header += [f"caption {c}" for c in CAPTION_COLUMNS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        run = " | ".join(run_cells(r))
        for split in SPLITS:
            t2i = " | ".join(f"{r[split][c]:.3f}" for c in ["overall", *TASKS])
            caption = r.get(f"caption_{split}")
            caps = " | ".join(f"{caption[c]:.3f}" if caption else "n/a" for c in CAPTION_COLUMNS)
            name = "unified" if r["recipe"] == UNIFIED else f"prefix-conditioned {r['unit']}"
            where = split.replace("_", "-")
            lines.append(f"| {name} | {run} | {where} | {t2i} | {caps} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget-minutes", type=cap_minutes, default=35.0, help="training time cap per run")
    p.add_argument("--skip-training", action="store_true", help="score existing checkpoints only")
    p.add_argument("--per-prompt", type=int, default=8, help="images (and renders to caption) per prompt")
    p.add_argument("--out", default="runs/unified/eval", help="samples and metrics per model and split")
    p.add_argument("--docs", default="docs/text.md")
    args = p.parse_args(argv)
    scorer = lambda config, ckpt: score(ckpt, Path(args.out) / Path(config).parent.name, args)
    rows = train_and_score([PREFIX], scorer, args.budget_minutes, skip_training=True)
    rows += train_and_score([UNIFIED], scorer, args.budget_minutes, skip_training=args.skip_training)
    rows = merge_rows(rows, Path(args.docs).with_suffix(".json"), "recipe", [PREFIX, UNIFIED])
    table = markdown(rows)
    print(table)
    write_marked(Path(args.docs), "compare_unified", table, "Text")


if __name__ == "__main__":
    main()
