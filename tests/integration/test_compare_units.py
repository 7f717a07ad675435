"""scripts/compare_units.py trains a recipe by steps under a time cap, samples, scores and writes the
table, marking a run that the cap stopped early or that ran slower than its recipe expects."""

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
    path.write_text(yaml.safe_dump(recipe) + "# expected_seconds_per_step: 100\n")  # never slow here
    docs = tmp_path / "units.md"

    script = load_script("compare_units")

    def run(steps: int, minutes: float) -> dict:
        options = ["--budget-minutes", str(minutes), "--steps", str(steps), "--per-class", "2"]
        script.main(["--recipes", str(path), *options, "--docs", str(docs)])
        (row,) = json.loads(docs.with_suffix(".json").read_text())
        return row

    row = run(3, minutes=1)  # the cap is far away: the run reaches its 3 steps, unmarked
    assert row["steps"] == row["steps_asked"] == 3 and row["expected_seconds_per_step"] == 100
    assert row["trainer_seconds"] > 0 and "| 3 |" in docs.read_text() and "| ok |" in docs.read_text()

    row = run(100_000, minutes=0.02)  # a 1-second cap stops it early; a rerun scores its new checkpoint
    assert 3 != row["steps"] < row["steps_asked"] == 100_000
    assert row["unit"] == "next_block" and row["forward_passes_per_image"] == 8  # one pass per row
    assert row["num_samples"] == 20 and 0 <= row["digits_class_accuracy"] <= 1 and row["train_seconds"] > 0
    table = docs.read_text()
    assert (
        "| next_block | discrete |" in table
        and f"| {row['steps']} / 100000 |" in table
        and "| capped |" in table
    )
