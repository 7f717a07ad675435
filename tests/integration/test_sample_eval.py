"""scripts/sample_eval.py: a 2-process CPU DDP run (gloo) writes each of the N images once, a rerun
skips them all, and a lost image is re-sampled identically (per-batch seeds)."""

import json
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.timeout(600)


def sample_eval(ckpt, out, *extra):
    command = [sys.executable, "scripts/sample_eval.py", "--ckpt", str(ckpt), "--out", str(out)]
    command += ["--per-class", "3", "--batch-size", "4", "--accelerator", "cpu", *extra]
    subprocess.run(command, check=True, timeout=500, capture_output=True)
    return json.loads((out / "metrics.json").read_text())


def test_ddp_writes_each_image_once_and_a_rerun_skips_them(debug_generator, tmp_path):
    _, ckpt = debug_generator
    out = tmp_path / "eval"
    metrics = sample_eval(ckpt, out, "--devices", "2", "--strategy", "ddp")
    n = 10 * 3
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == [f"{i:06d}.png" for i in range(n)]  # nothing twice: a second write of an index fails
    assert metrics["processes"] == 2
    assert metrics["images_missing"] == n and metrics["batches_sampled"] == 8  # ceil(30 / 4)
    with np.load(out / "samples.npz") as data:
        assert data["arr_0"].shape == (n, 32, 32, 1) and data["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(data["arr_1"], np.repeat(np.arange(10), 3))
        packed = data["arr_0"]

    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    again = sample_eval(ckpt, out, "--devices", "2", "--strategy", "ddp")
    assert again["images_missing"] == 0 and again["batches_sampled"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == stamps

    (out / "images" / "000013.png").unlink()  # batch 3 (images 12..15) is sampled again, on one device
    resumed = sample_eval(ckpt, out, "--devices", "1")
    assert resumed["images_missing"] == 1 and resumed["batches_sampled"] == 1
    with np.load(out / "samples.npz") as data:
        np.testing.assert_array_equal(data["arr_0"], packed)  # the same image: its batch's seed
