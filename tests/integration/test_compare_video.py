"""scripts/compare_video.py trains a video recipe by steps under a time cap, samples and continues clips,
scores them with the moving-digits classifier and writes the table (marking a run the cap stopped early)
and an example GIF."""

import functools
import json
from pathlib import Path

import yaml


def test_compare_video_trains_scores_and_writes_the_table(
    debug_video_tokenizer, tmp_path, load_script, monkeypatch
):
    import mmar.eval.video as video_metrics

    small = {"num_clips": 1024, "num_val_clips": 128, "epochs": 4, "batch_size": 32}
    monkeypatch.setattr(
        video_metrics,
        "MovingDigitsMetrics",
        functools.partial(
            video_metrics.MovingDigitsMetrics, cache_dir=tmp_path, train_options=small, num_reference=64
        ),
    )
    recipe = yaml.safe_load(Path("configs/debug/video_generator.yaml").read_text())
    recipe["model"]["init_args"]["tokenizer"] = debug_video_tokenizer
    recipe["trainer"].update(default_root_dir=str(tmp_path), logger=False, max_steps=100_000)  # > 1 s
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint"}
    checkpoint["init_args"] = {"dirpath": str(tmp_path / "ckpt"), "save_last": True}
    recipe["trainer"]["callbacks"].append(checkpoint)
    path = tmp_path / "video.yaml"
    path.write_text(yaml.safe_dump(recipe) + "# expected_seconds_per_step: 100\n")  # capped, not slow
    docs = tmp_path / "video.md"

    script = load_script("compare_video")
    options = ["--budget-minutes", "0.02", "--per-class", "1", "--continued", "8", "--image-size", "16"]
    script.main(["--recipes", str(path), *options, "--docs", str(docs)])
    rows = {r["recipe"]: r for r in json.loads(docs.with_suffix(".json").read_text())}
    assert set(rows) == {str(path), "real held-out clips", "tokenizer reconstructions"}
    row = rows[str(path)]
    assert row["unit"] == "next_token" and 0 < row["steps"] < row["steps_asked"] == 100_000
    assert row["trainer_seconds"] > 0
    assert row["trunk_passes_per_clip"] == 48 and row["num_clips"] == 80 and row["num_continued"] == 8
    assert 0 <= row["class_accuracy"] <= 1 and 0 <= row["continued_motion_accuracy"] <= 1
    assert rows["real held-out clips"]["class_accuracy"] > 0.5  # real clips: the classifier's ceiling
    table = docs.read_text()
    assert f"| next_token | - | {row['steps']} / 100000 |" in table and "| capped |" in table
    assert (tmp_path / "video_next_token.gif").is_file()
