"""scripts/compare_units.py trains a recipe under a time budget, samples, scores and writes the table."""

import json
from pathlib import Path

import yaml


def test_compare_units_trains_scores_and_writes_the_table(debug_tokenizer, tmp_path, load_script):
    recipe = yaml.safe_load(Path("configs/debug/next_block.yaml").read_text())
    recipe["model"]["init_args"]["tokenizer"] = debug_tokenizer
    recipe["trainer"].update(default_root_dir=str(tmp_path), logger=False)
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint"}
    checkpoint["init_args"] = {"dirpath": str(tmp_path / "ckpt"), "save_last": True}
    recipe["trainer"]["callbacks"].append(checkpoint)
    path = tmp_path / "next_block.yaml"
    path.write_text(yaml.safe_dump(recipe))
    docs = tmp_path / "units.md"

    script = load_script("compare_units")

    def run(steps: int) -> dict:
        options = ["--budget-minutes", "1", "--steps", str(steps), "--per-class", "2", "--docs", str(docs)]
        script.main(["--recipes", str(path), *options])
        (row,) = json.loads(docs.with_suffix(".json").read_text())
        return row

    assert run(3)["steps"] == 3

    row = run(2)  # a rerun scores the new checkpoint, not the one left by the first run
    assert row["unit"] == "next_block" and row["forward_passes_per_image"] == 8  # one pass per row
    assert row["steps"] == 2
    assert row["num_samples"] == 20 and 0 <= row["digits_class_accuracy"] <= 1 and row["train_seconds"] > 0
    assert "| next_block | discrete |" in docs.read_text()
