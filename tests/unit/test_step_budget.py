"""mmar.eval.step_budget: comparison runs by steps with a time cap, and the mark of a row whose run was
capped or slower than its recipe expects; mmar.lit.run_record.RunRecord records how far a run got."""

import argparse
import json

import lightning.pytorch as pl
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel

from mmar.errors import ConfigError
from mmar.eval.step_budget import (
    SLOW_FACTOR,
    cap_minutes,
    max_time,
    run_cells,
    run_mark,
    run_plan,
    warn_if_marked,
)
from mmar.lit.run_record import RunRecord, read_run_record


def test_max_time_spells_minutes_as_days_hours_minutes_seconds():
    assert max_time(8) == "00:00:08:00"
    assert max_time(0.02) == "00:00:00:01"
    assert max_time(90.5) == "00:01:30:30"  # over an hour: the trainer's MM field holds two digits only
    assert max_time(60 * 24 + 1) == "01:00:01:00"
    with pytest.raises(ConfigError, match="--budget-minutes 0 is under one second"):
        max_time(0)  # a zero cap stops the trainer before its first step


def test_cap_minutes_refuses_a_cap_under_one_second():
    assert cap_minutes("2.5") == 2.5
    with pytest.raises(argparse.ArgumentTypeError, match="under one second"):
        cap_minutes("0.001")


def test_run_plan_reads_max_steps_and_the_expected_seconds_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "trainer:\n  max_steps: 700  # ~28 epochs\n  # expected_seconds_per_step: 0.8  # 2 CPU cores\n"
    )
    assert run_plan(str(recipe)) == {"steps_asked": 700, "expected_seconds_per_step": 0.8}
    assert run_plan(str(recipe), steps=50)["steps_asked"] == 50  # --steps overrides the recipe
    recipe.write_text("trainer:\n  max_steps: 5\n")
    assert run_plan(str(recipe)) == {"steps_asked": 5, "expected_seconds_per_step": None}


def row(steps=700, asked=700, trainer_seconds=560.0, train_seconds=600.0, expected=0.8) -> dict:
    return {
        "recipe": "configs/units/digits_next_block.yaml",
        "steps": steps,
        "steps_asked": asked,
        "trainer_seconds": trainer_seconds,
        "train_seconds": train_seconds,
        "expected_seconds_per_step": expected,
    }


def test_run_mark_is_ok_capped_slow_or_both():
    assert run_mark(row()) == "ok"  # 0.8 s a step: as expected
    assert run_mark(row(trainer_seconds=700 * 0.8 * SLOW_FACTOR)) == "ok"  # at the threshold, not above
    assert run_mark(row(trainer_seconds=700 * 2.4)) == "slow 3.0x"
    assert run_mark(row(steps=699, trainer_seconds=699 * 0.8)) == "capped"  # one step short is capped
    # the user's loaded machine: 107 of 700 steps in an 8-minute cap
    assert run_mark(row(steps=107, trainer_seconds=480)) == "capped, slow 5.6x"


def test_run_mark_prefers_the_trainers_clock_and_skips_rows_without_a_plan():
    assert run_mark(row(trainer_seconds=None, train_seconds=700 * 2.0)) == "slow 2.5x"  # wall time fallback
    assert run_mark(row(expected=None, trainer_seconds=10_000)) == "ok"  # no expectation: only the cap
    assert run_mark({"recipe": "real held-out clips", "unit": "real clips"}) == "-"
    assert run_mark({**row(), "steps_asked": None}) == "-"  # measured before plans were recorded
    assert run_mark({**row(), "steps": "n/a"}) == "-"


def test_run_cells_show_reached_of_asked_only_when_fewer():
    assert run_cells(row()) == ["700", "560", "0.80", "ok"]
    assert run_cells(row(steps=107, trainer_seconds=480)) == ["107 / 700", "480", "4.49", "capped, slow 5.6x"]
    assert run_cells({"steps": "n/a"}) == ["n/a", "n/a", "n/a", "-"]


def test_warn_if_marked_prints_one_line_for_a_marked_row_only(capsys):
    warn_if_marked(row(), 8)
    assert capsys.readouterr().err == ""
    warn_if_marked(row(steps=107, trainer_seconds=480), 8)
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("warning: configs/units/digits_next_block.yaml reached 107 of 700 steps")
    assert "8-minute cap" in line and "'capped, slow 5.6x'" in line and "--budget-minutes" in line


def test_run_record_writes_the_steps_reached_and_the_trainers_clock(tmp_path):
    path = tmp_path / "runs" / "run_record.json"
    assert read_run_record(path) == {}  # no run yet
    trainer = pl.Trainer(
        max_steps=3,
        max_time="00:00:10:00",  # adds the Timer whose training time is recorded
        callbacks=[RunRecord(str(path))],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(BoringModel())
    record = read_run_record(path)
    assert record["steps"] == 3 and 0 < record["trainer_seconds"] < 600
    assert json.loads(path.read_text()) == record
