"""scripts/eval_tokenizers.py scores an exported tokenizer on its recipe's data and writes the table."""

import json
from pathlib import Path

import yaml


def test_eval_tokenizers_writes_table(debug_tokenizer, tmp_path, load_script):
    config = yaml.safe_load(Path("configs/debug/vq.yaml").read_text())
    config["model"]["init_args"]["export_dir"] = debug_tokenizer
    recipe = tmp_path / "debug_vq.yaml"
    recipe.write_text(yaml.safe_dump(config))
    docs = tmp_path / "tokenizers.md"
    docs.write_text(
        "# T\n\nintro\n<!-- eval_tokenizers:begin -->\nold\n<!-- eval_tokenizers:end -->\nafter\n"
    )
    other = {"config": "other.yaml", "missing": "not trained"}  # measured earlier: kept in the table
    stale = {"config": str(recipe), "stale": True, "train_seconds": 12.0}
    docs.with_suffix(".json").write_text(json.dumps([other, stale]))

    script = load_script("eval_tokenizers")
    args = ["--configs", str(recipe), "--max-batches", "2", "--docs", str(docs), "--grids", str(tmp_path)]
    args += ["--exported", f"made_by_script={debug_tokenizer}", f"absent={tmp_path / 'none'}"]
    script.main(args)

    rows = {r["config"]: r for r in json.loads(docs.with_suffix(".json").read_text())}
    assert (
        rows.keys() == {"other.yaml", str(recipe), "made_by_script", "absent"} and rows["other.yaml"] == other
    )
    assert rows["made_by_script"]["grid"] == [8, 8] and "no tokenizer at" in rows["absent"]["missing"]
    row = rows[str(recipe)]
    assert "stale" not in row and row["train_seconds"] == 12.0  # re-evaluated: keeps its training time
    assert row["embedded_pfd"] >= 0 and row["pfd_setting"] == {"alpha": 0.25, "delta": 8}
    assert row["kind"] == "discrete" and row["grid"] == [8, 8] and row["num_items"] == 16
    assert 0 < row["usage"] <= 1 and row["psnr"] > 0 and 0 < row["ssim"] <= 1 and row["embedded_rfd"] >= 0
    text = docs.read_text()
    assert "old" not in text and text.startswith("# T\n\nintro\n") and text.endswith("after\n")
    assert "| debug_vq | vq | discrete | 8x8 | 32 |" in text and "| other.yaml | not trained |" in text
    assert (tmp_path / "debug_vq.png").is_file()
