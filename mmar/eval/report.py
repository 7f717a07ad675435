"""Measured tables in the docs: recipes trained by steps with a wall-clock cap (`step_budget`), rows kept
in a JSON file next to a Markdown page, and the page's table between two markers rewritten from them, so
one recipe can be re-measured without redoing the rest."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from mmar.checkpoint_io import read_checkpoint
from mmar.eval.step_budget import max_time, run_plan, warn_if_marked


def recipe_checkpoint(recipe: dict) -> Path:
    """The `last.ckpt` that a recipe's ModelCheckpoint callback writes."""
    callbacks = recipe["trainer"].get("callbacks", [])
    dirpath = next(
        c["init_args"]["dirpath"] for c in callbacks if c["class_path"].endswith("ModelCheckpoint")
    )
    return Path(dirpath) / "last.ckpt"


def trainer_seconds(checkpoint: dict) -> float | None:
    """Training time the trainer measured (its Timer callback's state, saved when max_time is set)."""
    timer = checkpoint.get("callbacks", {}).get("Timer")
    return None if timer is None else timer["time_elapsed"]["train"]


def train_recipe(
    config: str, budget_minutes: float, steps: int | None, ckpt: Path | None, record: Path | None = None
) -> float:
    """`mmar fit --config config` for its max_steps (or `steps`), the budget only a cap (the trainer's
    max_time); its wall time in seconds. A stale `last.ckpt` beside `ckpt` is removed first; given
    `record`, a `mmar.lit.run_record.RunRecord` writes the steps reached and the trainer's time there."""
    for stale in ckpt.parent.glob("last*.ckpt") if ckpt else ():  # else Lightning writes last-v1.ckpt
        stale.unlink()
    start = time.perf_counter()
    command = ["mmar", "fit", "--config", config, "--trainer.enable_progress_bar=false"]
    command += [f"--trainer.max_time={max_time(budget_minutes)}"]
    command += [f"--trainer.max_steps={steps}"] if steps else []
    if record is not None:
        record.unlink(missing_ok=True)
        command += [
            "--trainer.callbacks+=mmar.lit.run_record.RunRecord",
            f"--trainer.callbacks.path={record}",
        ]
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def train_and_score(
    recipes: Sequence[str],
    score: Callable[[str, Path], dict],
    budget_minutes: float,
    steps: int | None = None,
    skip_training: bool = False,
) -> list[dict]:
    """Per recipe: train it (`train_recipe`, unless `skip_training`), then `score(recipe, checkpoint)`;
    rows {"recipe", **score, "train_seconds" (None when not trained now), "trainer_seconds", **run_plan},
    printed as JSON lines, with a warning for a row that `step_budget.run_mark` marks. A recipe without
    a checkpoint is reported and left out."""
    rows = []
    for config in recipes:
        ckpt = recipe_checkpoint(yaml.safe_load(Path(config).read_text()))
        seconds = None if skip_training else train_recipe(config, budget_minutes, steps, ckpt)
        if not ckpt.is_file():
            print(f"skipping {config}: no checkpoint at {ckpt} (train it first)", file=sys.stderr)
            continue
        clock = trainer_seconds(read_checkpoint(ckpt, mmap=True))
        row = {"recipe": config, **score(config, ckpt), "train_seconds": seconds, "trainer_seconds": clock}
        row.update(run_plan(config, steps))
        warn_if_marked(row, budget_minutes)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def merge_rows(
    rows: list[dict], results: Path, key: str, order: Sequence[str], carry: Sequence[str] = ()
) -> list[dict]:
    """`rows` measured now, plus the rows in `results` (JSON) for keys not measured now, sorted by
    `order` (keys not in it last, by name). A row measured now takes a `carry` field it lacks (e.g. a
    training time when only re-evaluated) from its earlier row; the merged rows are written back."""
    earlier = {r[key]: r for r in json.loads(results.read_text())} if results.exists() else {}
    for row in rows:
        for field in carry:
            if (
                row.get(field) is None
                and earlier.get(row[key], {}).get(field) is not None
                and "missing" not in row
            ):
                row[field] = earlier[row[key]][field]
    measured = {r[key] for r in rows}
    merged = rows + [r for k, r in earlier.items() if k not in measured]
    rank = {k: i for i, k in enumerate(order)}
    merged.sort(key=lambda r: (rank.get(r[key], len(rank)), r[key]))
    results.write_text(json.dumps(merged, indent=2))
    return merged


def write_marked(path: Path, name: str, table: str, title: str) -> None:
    """Put `table` between `<!-- name:begin -->` and `<!-- name:end -->` in the page at `path` (created
    with `title` when missing), keeping everything around the markers."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else f"# {title}\n\n{begin}\n{end}\n"
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    path.write_text(f"{head}{begin}\n{table}\n{end}{tail}")


def emit_table(table: str, path: Path | None) -> None:
    """Print a benchmark's Markdown table to stderr (stdout carries its JSON lines) and, given `path`,
    write it there too."""
    print(table, file=sys.stderr)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(table)
