"""scripts/compare_t2i.py trains a text-to-image recipe by steps, samples and scores both benchmark
splits, adds the tokenizer's ceiling row and writes the table, marking a run slower than its recipe
expects."""

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("transformers")


def test_compare_t2i_trains_scores_and_writes_the_table(debug_rgb_tokenizer, tmp_path, load_script):
    recipe = yaml.safe_load(Path("configs/debug/t2i.yaml").read_text())
    recipe["model"]["init_args"]["tokenizer"] = debug_rgb_tokenizer
    recipe["trainer"].update(default_root_dir=str(tmp_path), logger=False, enable_checkpointing=True)
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint"}
    checkpoint["init_args"] = {"dirpath": str(tmp_path / "ckpt"), "save_last": True}
    recipe["trainer"]["callbacks"] = [checkpoint]
    path = tmp_path / "t2i.yaml"
    path.write_text(yaml.safe_dump(recipe) + "# expected_seconds_per_step: 0.0001\n")  # always slower
    docs = tmp_path / "t2i.md"
    options = ["--budget-minutes", "1", "--steps", "2", "--per-prompt", "1", "--docs", str(docs)]
    options += ["--tokenizer", debug_rgb_tokenizer, "--out", str(tmp_path / "eval")]
    load_script("compare_t2i").main(["--recipes", str(path), *options])

    ceiling, row = json.loads(docs.with_suffix(".json").read_text())
    assert ceiling["unit"] == "renders through the tokenizer" and row["unit"] == "next_token"
    assert row["steps"] == row["steps_asked"] == 2 and row["passes"] == 64 and row["train_seconds"] > 0
    for split, prompts in (("held_out", 66), ("seen", 117)):
        assert row[split]["num_images"] == ceiling[split]["num_images"] == prompts
        assert 0 <= row[split]["overall"] <= 1
    table = docs.read_text()
    assert "| next_token | 2 |" in table and "| held-out |" in table and "| seen |" in table
    assert " | slow " in table and "| capped" not in table  # every step run, each slower than 0.0001 s
    assert "| renders through the tokenizer | n/a | n/a | n/a | - |" in table  # no run to mark
