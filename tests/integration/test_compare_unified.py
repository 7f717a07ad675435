"""scripts/compare_unified.py's table: both models' runs in the shared run columns, a capped unified run
marked and the prefix-conditioned run that reached its steps not; a cap under one second refused."""

import pytest

from mmar.eval.compositional import CAPTION_ATTRIBUTES, SPLITS, TASKS


def scores(value: float) -> dict:
    return {c: value for c in ["overall", *TASKS, "num_images"]}


def test_compare_unified_table_marks_the_capped_run_only(load_script):
    script = load_script("compare_unified")
    plan = {"expected_seconds_per_step": 0.5}
    prefix = {"recipe": script.PREFIX, "unit": "next_token", "steps": 2000, "steps_asked": 2000, **plan}
    prefix |= {"trainer_seconds": 1022.0, **{split: scores(0.5) for split in SPLITS}}
    unified = {"recipe": script.UNIFIED, "unit": "stream", "steps": 1500, "steps_asked": 2200, **plan}
    unified |= {"trainer_seconds": 600.0, **{split: scores(0.25) for split in SPLITS}}
    for split in SPLITS:
        unified[f"caption_{split}"] = {c: 0.75 for c in ["exact", *CAPTION_ATTRIBUTES]}
    lines = script.markdown([prefix, unified]).splitlines()
    assert lines[0].startswith("| model | steps | train (s) | s / step | run | split | t2i overall |")
    assert lines[2].startswith(
        "| prefix-conditioned next_token | 2000 | 1022 | 0.51 | ok | held-out | 0.500 |"
    )
    assert lines[4].startswith("| unified | 1500 / 2200 | 600 | 0.40 | capped | held-out | 0.250 |")
    assert lines[4].endswith("| 0.750 | 0.750 | 0.750 | 0.750 | 0.750 |") and lines[2].endswith("| n/a |")


def test_compare_unified_refuses_a_cap_under_one_second(load_script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("compare_unified").main(["--budget-minutes", "0"])
    assert exit_info.value.code == 2
    assert "argument --budget-minutes: 0 is under one second" in capsys.readouterr().err
