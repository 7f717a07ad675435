"""Comparison runs trained by steps, with wall-clock time only a cap, and the mark of a row whose run
did not go as its recipe asks, so that a row of a measured table means the same on every machine.

A run asks for its recipe's `max_steps` (or the script's --steps). A recipe states what a step costs on
the 2-core CPU its docs table was measured on, in one comment line that `yaml` ignores:

    # expected_seconds_per_step: 0.8

A row is marked `capped` when its run reached fewer steps than asked (the time cap, or anything else,
stopped it first: the model saw less training than the recipe means), and `slow Nx` when its seconds
per step (the trainer's own clock, validation included; the process wall time when that is missing)
exceed SLOW_FACTOR times the recipe's expectation (a loaded or slower machine: the time columns are
not the reference machine's). A row without a mark reads `ok`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

from mmar.errors import ConfigError

SLOW_FACTOR = 1.5  # measured s/step above 1.5x the recipe's expectation marks the row `slow`
RUN_HEADER = ["steps", "train (s)", "s / step", "run"]
_EXPECTED = re.compile(r"^\s*#\s*expected_seconds_per_step:\s*(\d+(?:\.\d+)?)", re.MULTILINE)


def cap_minutes(text: str) -> float:
    """argparse type of a wall-clock cap in minutes: at least one second, so the trainer takes a step."""
    minutes = float(text)
    if minutes * 60 < 1:
        raise argparse.ArgumentTypeError(f"{text} is under one second; give at least 0.02 (1 s)")
    return minutes


def max_time(minutes: float) -> str:
    """A budget in minutes as the trainer's `max_time` (DD:HH:MM:SS, whole seconds)."""
    if minutes * 60 < 1:  # a zero cap stops the trainer before its first step: no checkpoint, no row
        raise ConfigError(f"--budget-minutes {minutes:g} is under one second; give at least 0.02 (1 s)")
    minutes_total, seconds = divmod(int(minutes * 60), 60)
    hours_total, minutes = divmod(minutes_total, 60)
    days, hours = divmod(hours_total, 24)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{seconds:02d}"


def expected_seconds_per_step(text: str) -> float | None:
    """The `# expected_seconds_per_step: S` line of a recipe's text, or None when it has none."""
    found = _EXPECTED.search(text)
    return float(found.group(1)) if found else None


def run_plan(config: str, steps: int | None = None) -> dict:
    """What a run of `config` asks for: its steps (`steps`, else the recipe's max_steps) and the
    recipe's expected seconds per step, as fields of a table row."""
    text = Path(config).read_text()
    asked = steps or yaml.safe_load(text).get("trainer", {}).get("max_steps")
    return {"steps_asked": asked, "expected_seconds_per_step": expected_seconds_per_step(text)}


def seconds_per_step(row: dict) -> float | None:
    """Training seconds per step reached: the trainer's clock (`trainer_seconds`), else the wall time."""
    seconds = row.get("trainer_seconds") or row.get("train_seconds")
    steps = row.get("steps")
    return seconds / steps if seconds and isinstance(steps, int) and steps > 0 else None


def run_mark(row: dict) -> str:
    """`ok`, `capped`, `slow Nx` or both for a trained row; `-` for a row that records no plan (a
    reference row, or one measured before plans were recorded)."""
    asked, steps = row.get("steps_asked"), row.get("steps")
    if not asked or not isinstance(steps, int):
        return "-"
    marks = ["capped"] if steps < asked else []
    expected, measured = row.get("expected_seconds_per_step"), seconds_per_step(row)
    if expected and measured and measured > SLOW_FACTOR * expected:
        marks.append(f"slow {measured / expected:.1f}x")
    return ", ".join(marks) or "ok"


def run_cells(row: dict) -> list[str]:
    """The cells under RUN_HEADER: steps reached (`reached / asked` when fewer), training seconds,
    seconds per step, and the run's mark."""
    steps, asked = row.get("steps"), row.get("steps_asked")
    reached = "n/a" if steps is None else str(steps)
    if isinstance(steps, int) and asked and steps < asked:
        reached = f"{steps} / {asked}"
    seconds = row.get("trainer_seconds") or row.get("train_seconds")
    per_step = seconds_per_step(row)
    return [
        reached,
        "n/a" if seconds is None else f"{seconds:.0f}",
        "n/a" if per_step is None else f"{per_step:.2f}",
        run_mark(row),
    ]


def warn_if_marked(row: dict, budget_minutes: float) -> None:
    """One stderr line when a row is marked, naming why and what to do about it."""
    mark = run_mark(row)
    if mark in ("ok", "-"):
        return
    per_step = seconds_per_step(row)
    speed = "" if per_step is None else f" at {per_step:.2f} s a step"
    expected = row.get("expected_seconds_per_step")
    speed += "" if expected is None else f" (its recipe expects {expected:g} s)"
    print(
        f"warning: {row['recipe']} reached {row['steps']} of {row['steps_asked']} steps{speed} under the "
        f"{budget_minutes:g}-minute cap; its row is marked '{mark}' (raise --budget-minutes, or rerun on "
        "an idle machine)",
        file=sys.stderr,
    )
