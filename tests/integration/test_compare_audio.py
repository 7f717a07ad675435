"""scripts/compare_audio.py trains an audio tokenizer and an audio generator by steps under time caps,
scores the tokenizer's reconstructions and the generator's samples and continuations with the embedded
pitch classifier, and writes both tables (marking a run the cap stopped early) and an example WAV."""

import functools
import json
from pathlib import Path

import yaml


def test_compare_audio_trains_scores_and_writes_both_tables(tmp_path, load_script, monkeypatch):
    import mmar.eval.audio as audio_metrics

    small = {"num_clips": 512, "num_val_clips": 64, "epochs": 12}
    monkeypatch.setattr(
        audio_metrics,
        "NotesMetrics",
        functools.partial(
            audio_metrics.NotesMetrics, cache_dir=tmp_path, train_options=small, num_reference=64
        ),
    )
    codec = yaml.safe_load(Path("configs/debug/audio_codec.yaml").read_text())
    codec["model"]["init_args"]["export_dir"] = str(tmp_path / "codec")
    # asks for far more steps than a 1-second cap allows: its row is marked `capped`
    codec["trainer"].update(
        default_root_dir=str(tmp_path / "codec_run"), max_steps=100_000, log_every_n_steps=1
    )
    codec_path = tmp_path / "codec.yaml"
    codec_path.write_text(yaml.safe_dump(codec))
    recipe = yaml.safe_load(Path("configs/debug/audio_generator.yaml").read_text())
    recipe["model"]["init_args"]["tokenizer"] = str(tmp_path / "codec")
    recipe["trainer"].update(default_root_dir=str(tmp_path), logger=False)
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint"}
    checkpoint["init_args"] = {"dirpath": str(tmp_path / "ckpt"), "save_last": True}
    recipe["trainer"]["callbacks"].append(checkpoint)
    path = tmp_path / "notes_delay.yaml"
    path.write_text(yaml.safe_dump(recipe) + "# expected_seconds_per_step: 100\n")  # never slow here
    docs = tmp_path / "audio.md"

    script = load_script("compare_audio")
    options = ["--budget-minutes", "1", "--tokenizer-minutes", "0.02", "--per-class", "1", "--num-clips", "8"]
    options += ["--sample-rate", "8000", "--duration", "0.25", "--docs", str(docs)]
    script.main(["--tokenizer-recipes", str(codec_path), "--recipes", str(path), *options])

    tokenizers = json.loads((tmp_path / "audio_tokenizers.json").read_text())
    assert len(tokenizers) == 1 and tokenizers[0]["tokenizer"] == "rvq_codec"
    assert 0 < tokenizers[0]["steps"] < tokenizers[0]["steps_asked"] == 100_000
    assert tokenizers[0]["train_seconds"] > 0
    assert [level["bitrate"] for level in tokenizers[0]["per_level"]] == [100.0 * q * 4 for q in (1, 2, 3, 4)]
    rows = {r["recipe"]: r for r in json.loads((tmp_path / "audio_generators.json").read_text())}
    assert set(rows) == {str(path), "real held-out notes", "rvq_codec reconstructions"}
    row = rows[str(path)]
    assert row["code_pattern"] == "delay" and row["steps"] == row["steps_asked"] == 2
    assert row["trunk_passes_per_clip"] == 28 and row["trainer_seconds"] > 0
    assert row["num_clips"] == 12 and row["num_continued"] == 8 and 0 <= row["class_accuracy"] <= 1
    assert rows["real held-out notes"]["class_accuracy"] > 0.5  # the classifier's ceiling on real notes
    text = docs.read_text()
    codec_steps = tokenizers[0]["steps"]
    assert f"| rvq_codec | codec | {codec_steps} / 100000 |" in text and "| capped |" in text
    assert "| next_token | rvq_codec, delay | 2 |" in text and "| ok |" in text
    assert (tmp_path / "audio_delay.wav").is_file() and (tmp_path / "audio_delay.png").is_file()
