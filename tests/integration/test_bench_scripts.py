"""scripts/bench_sampling.py and scripts/bench_train.py on the debug trunk: the JSON rows, the bounds, the
passes each unit makes, the training FLOPs formula against torch's counter, and clear option errors."""

import argparse
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from mmar.units import UNITS
from mmar.units.masked_ar import MaskedAR

FEW_STEPS = {  # the flow-head units at a few steps: the rows still check passes == num_steps
    "masked_ar": {"steps": 4, "head_steps": 2},
    "hi_mar": {"steps": 4, "pivot_steps": 2, "head_steps": 2},
    "next_x": {"flow_steps": 2},
}
SAMPLING_FIELDS = {
    "unit", "passes_per_image", "num_steps", "seconds_per_image", "bound", "bound_seconds_per_image",
    "fraction_of_bound", "memory_bound_passes", "compute_bound_passes", "bandwidth_gb_s", "matmul_tflop_s",
}  # fmt: skip
TRAIN_FIELDS = {"unit", "preset", "tokens_per_s", "step_seconds", "tflops_per_step", "mfu", "peak_memory_mb"}


def json_rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.fixture(scope="module")
def sampling(load_script):
    return load_script("bench_sampling")


@pytest.fixture(scope="module")
def training(load_script):
    return load_script("bench_train")


def test_bench_sampling_rows_for_every_unit(sampling, tmp_path, capsys):
    table = tmp_path / "sampling.md"
    argv = ["--quick", "--compare-cache", "--copy-mb", "32", "--unit-kwargs", json.dumps(FEW_STEPS)]
    results = sampling.main([*argv, "--markdown", str(table)])
    rows = {row["unit"]: row for row in json_rows(capsys.readouterr().out)}
    assert rows == {row["unit"]: row for row in results}
    assert set(UNITS) | {"next_token[uncached]"} <= set(rows)
    for name, row in rows.items():
        assert set(row) >= SAMPLING_FIELDS, name
        assert row["passes_per_image"] == row["num_steps"], name
        assert row["memory_bound_passes"] + row["compute_bound_passes"] == row["passes_per_image"]
        assert 0 < row["fraction_of_bound"] <= 1.5, name
        assert row["bound"] in ("memory", "compute") and row["seconds_per_image"] > 0
    assert rows["masked_ar"]["passes_per_image"] == 4 and rows["next_x"]["passes_per_image"] == 16 * 2
    assert rows["next_token"]["memory_bound_passes"] > 0  # one-token decoding reads more than it computes
    for name in ("next_token", "random_order"):  # one token a pass: the matmuls' own time is a ceiling
        assert 0 < rows[name]["linear_seconds_per_image"] < rows[name]["seconds_per_image"], name
        assert rows[name]["linear_ceiling"] > 0
    assert "linear_ceiling" not in rows["masked_ar"]  # many tokens a pass: no one-token chain to time
    assert rows["next_token[uncached]"]["same_tokens"] and rows["next_token[uncached]"]["cache_speedup"] > 0
    assert "| masked_ar | 4 |" in table.read_text()


def test_bench_sampling_has_a_skip_masked_row_where_masked_ar_has_the_option(sampling, capsys):
    supported = sampling.accepts(UNITS["masked_ar"], "__init__", "skip_masked")
    assert ("masked_ar[skip_masked]" in sampling.all_rows()) == supported
    if not supported:
        with pytest.raises(SystemExit):
            sampling.main(["--quick", "--copy-mb", "8", "--units", "masked_ar[skip_masked]"])
        assert "has no 'skip_masked' option" in capsys.readouterr().err


def test_bench_sampling_runs_skip_masked_once_masked_ar_takes_it(sampling, monkeypatch):
    built = []

    class SkipMaskedAR(MaskedAR):  # stands in for MaskedAR(..., skip_masked=True) of the faster path
        def __init__(self, *args, skip_masked: bool = False, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(skip_masked)

    monkeypatch.setitem(UNITS, "masked_ar", SkipMaskedAR)
    assert "masked_ar[skip_masked]" in sampling.all_rows()
    argv = ["--quick", "--copy-mb", "8", "--units", "masked_ar", "masked_ar[skip_masked]"]
    rows = sampling.main([*argv, "--unit-kwargs", json.dumps(FEW_STEPS)])
    assert [row["unit"] for row in rows] == ["masked_ar", "masked_ar[skip_masked]"]
    assert all(row["passes_per_image"] == row["num_steps"] == 4 for row in rows)
    assert built == [False, True]


def test_bench_sampling_compiled_row_decodes_through_the_compiled_step(sampling, monkeypatch):
    steps = []
    original = sampling.Trunk.compile_decode

    def compile_decode(trunk, **kwargs):  # the real compiled step, counting the steps it runs
        original(trunk, **kwargs)
        compiled = trunk.decode_step.compiled
        trunk.decode_step.compiled = lambda *args: steps.append(1) or compiled(*args)
        return trunk

    monkeypatch.setattr(sampling.Trunk, "compile_decode", compile_decode)
    argv = ["--quick", "--copy-mb", "8", "--units", "next_token", "next_token[compiled]", "--repeats", "2"]
    rows = sampling.main([*argv, "--compile-kwargs", '{"backend": "eager"}'])  # no C++ build in a test
    assert [row["unit"] for row in rows] == ["next_token", "next_token[compiled]"]
    assert all(row["passes_per_image"] == row["num_steps"] == 64 and row["repeats"] == 2 for row in rows)
    assert len(steps) == 3 * 64  # the full-batch warm-up and both timed calls; the eager row none


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--units", "nope"], "unknown unit 'nope'"),
        (["--repeats", "0"], "--repeats >= 1"),
        (["--compile-kwargs", "[1]"], "--compile-kwargs must be a JSON object"),
        (["--units", "next_token[bogus]"], "unknown variant"),
        (["--units", "masked_ar[uncached]"], "has no 'use_cache' option"),
        (["--unit-kwargs", "{bad"], "--unit-kwargs is not valid JSON"),
        (["--units", "next_token", "--unit-kwargs", '{"steps": 3}'], "--unit-kwargs for next_token"),
        (["--units", "next_block", "--unit-kwargs", '{"next_block": {"block": [3, 3]}}'], "does not tile"),
        (["--batch", "0"], "need --batch"),
    ],
)
def test_bench_sampling_bad_options_fail_with_one_line(sampling, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        sampling.main(["--quick", "--copy-mb", "8", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_train_rows(training, tmp_path, capsys):
    table = tmp_path / "train.md"
    results = training.main(["--quick", "--steps", "1", "--markdown", str(table)])
    rows = json_rows(capsys.readouterr().out)
    assert rows == results and [(r["unit"], r["preset"]) for r in rows] == [
        ("next_token", "debug"),
        ("masked_ar", "debug"),
    ]
    for row in rows:
        assert set(row) >= TRAIN_FIELDS
        assert 0 < row["mfu"] <= 1.5 and row["tokens_per_s"] > 0 and row["peak_memory_mb"] > 0
        parts = row["flops_trunk_matmul"] + row["flops_attention"] + row["flops_head"]
        assert parts == pytest.approx(row["tflops_per_step"] * 1e12)
    assert rows[1]["masked_per_step"] >= 0.7 * 4 * 64  # MAR masks 70% to all of each image
    assert "| masked_ar | debug |" in table.read_text()


@pytest.mark.parametrize("unit", ["next_token", "masked_ar"])
def test_bench_train_flops_formula_equals_the_flop_counter(training, unit):
    """Model FLOPs: the attention backward counted as twice its forward (no recomputation)."""
    forward = lambda q, k, v, *a, **kw: sdpa_flop_count(q, k, v)
    backward = lambda g, q, k, v, *a, **kw: 2 * sdpa_flop_count(q, k, v)
    aten = torch.ops.aten
    mapping = {
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    }
    args = argparse.Namespace(grid=[4, 4], batch=2, vocab=64, latent_dim=8, seed=0)
    row = training.Row(unit, "debug", args, torch.device("cpu"))
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        masked = row.step()
    matmul, attention = training.trunk_flops(row.trunk, 2, row.seq)
    assert matmul + attention + training.head_flops(row.unit, 2, float(masked)) == counter.get_total_flops()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--units", "next_block"], "bench_train counts the FLOPs of"),
        (["--presets", "XL"], "unknown trunk preset 'XL'"),
        (["--steps", "0"], "need --warmup >= 0 and --steps >= 1"),
    ],
)
def test_bench_train_bad_options_fail_with_one_line(training, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        training.main(["--quick", *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
