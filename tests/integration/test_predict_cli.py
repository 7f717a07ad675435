"""`mmar predict` samples with the model's sampler settings and writes where it is told."""

import json

import numpy as np
from conftest import one_line_error
from PIL import Image

from mmar.cli import main as mmar_main

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.logger=false"]


def predict_pngs(tokenizer, out, sampler: dict) -> list[np.ndarray]:
    """Two batches of 2 samples of the (untrained, seeded) debug generator, as written PNGs."""
    mmar_main(
        [
            "predict",
            "--config",
            "configs/debug/ar.yaml",
            f"--model.init_args.tokenizer={tokenizer}",
            f"--model.init_args.sampler={json.dumps(sampler)}",
            "--data.init_args.batch_size=2",
            "--trainer.limit_predict_batches=2",
            f"--trainer.default_root_dir={out}",
            f"--prediction_writer.output_dir={out / 'samples'}",
            *QUIET,
        ]
    )
    files = sorted((out / "samples").glob("*.png"))
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(4)]
    assert not (out / "predictions").exists()  # output_dir replaces the default folder
    return [np.asarray(Image.open(f)) for f in files]


def test_seeded_sampler_reproduces_and_guidance_changes_the_samples(debug_tokenizer, tmp_path):
    seeded = predict_pngs(debug_tokenizer, tmp_path / "a", {"seed": 3, "cfg_scale": 3.0})
    again = predict_pngs(debug_tokenizer, tmp_path / "b", {"seed": 3, "cfg_scale": 3.0})
    unguided = predict_pngs(debug_tokenizer, tmp_path / "c", {"seed": 3})
    assert all(np.array_equal(x, y) for x, y in zip(seeded, again))
    assert not all(np.array_equal(x, y) for x, y in zip(seeded, unguided))
    assert not np.array_equal(seeded[0], seeded[2])  # batch 1 draws with seed + 1, not batch 0's noise


def test_unknown_sampler_field_is_one_line_error(debug_tokenizer, capsys):
    args = ["predict", "--config", "configs/debug/ar.yaml", f"--model.init_args.tokenizer={debug_tokenizer}"]
    err = one_line_error(capsys, *args, '--model.init_args.sampler={"cfg": 2}', *QUIET)
    assert err.startswith("error: model.sampler has unknown field(s) ['cfg']")
