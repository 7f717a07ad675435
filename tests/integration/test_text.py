"""Text end to end: a text LM and a unified model trained with `mmar fit`, their perplexity, the
sampling scripts, captioning scores, and the one-line errors of a mismatched tokenizer."""

from __future__ import annotations

import json
import math

import pytest
import torch
from lightning.pytorch import Trainer

from mmar.cli import main as mmar_main
from mmar.data import TextDataModule
from mmar.lit import StreamModule
from mmar.text_tokenizer import TextTokenizer

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.logger=false"]


def fit(config: str, root, *overrides: str) -> str:
    """`mmar fit` a debug recipe for 2 steps with a checkpoint; the checkpoint's path."""
    ckpt = root / "ckpt"
    callback = json.dumps(
        [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": str(ckpt)}}]
    )
    args = ["fit", "--config", config, f"--trainer.default_root_dir={root}"]
    mmar_main([*args, f"--trainer.callbacks={callback}", *overrides, *QUIET])
    return str(next(ckpt.glob("*.ckpt")))


@pytest.fixture(scope="module")
def text_lm(debug_text_tokenizer, tmp_path_factory) -> str:
    tok = debug_text_tokenizer
    overrides = [f"--model.init_args.text_tokenizer={tok}", f"--data.init_args.tokenizer={tok}"]
    return fit("configs/debug/text_lm.yaml", tmp_path_factory.mktemp("text_lm"), *overrides)


@pytest.fixture(scope="module")
def unified(debug_text_tokenizer, debug_rgb_tokenizer, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("unified")
    return fit(
        "configs/debug/unified.yaml",
        root,
        f"--model.init_args.text_tokenizer={debug_text_tokenizer}",
        f"--model.init_args.image_tokenizer={debug_rgb_tokenizer}",
    )


def test_validation_logs_exact_text_perplexity(debug_text_tokenizer, tmp_path):
    data = TextDataModule(debug_text_tokenizer, seq_len=32, batch_size=8, num_captions=100)
    model = StreamModule(debug_text_tokenizer, context_length=32, warmup_steps=1)
    trainer = Trainer(
        accelerator="cpu", max_steps=2, limit_val_batches=3, logger=False, enable_progress_bar=False,
        enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, data)
    trainer.validate(model, data, verbose=False)
    perplexity, loss = (trainer.callback_metrics[k].item() for k in ("val/perplexity", "val/text_loss"))
    assert math.isclose(perplexity, math.exp(loss), rel_tol=1e-5)


def test_text_lm_scripts(text_lm, load_script, tmp_path, capsys):
    out = tmp_path / "samples.json"
    sample = load_script("sample_text")
    args = ["--ckpt", text_lm, "--prompt", "The with", "--num-samples", "2", "--max-tokens", "5"]
    sample.main([*args, "--out", str(out)])
    results = json.loads(out.read_text())
    assert [r["sample"] for r in results] == [0, 1] and all(isinstance(r["text"], str) for r in results)
    again = sample.run(sample.parse_args(["--ckpt", text_lm, "--prompt", "The with", "--max-tokens", "5"]))
    assert again[0]["text"] == results[0]["text"]  # seeded
    result = load_script("eval_text_lm").run(
        load_script("eval_text_lm").parse_args(["--ckpt", text_lm, "--docs", str(tmp_path / "text.md")])
    )
    row = result["rows"][0]  # all val documents, then per source
    assert row["val_perplexity"] > 1 and row["unigram_perplexity"] > 1 and row["val_tokens"] > 0
    assert row["val_source"] == "all"
    assert {r["val_source"] for r in result["rows"]} >= {"pydoc_data", "shapes"}
    assert "unigram perplexity" in (tmp_path / "text.md").read_text()


def test_a_tokenizer_that_does_not_match_the_checkpoint_is_one_line(text_lm, load_script, tmp_path, capsys):
    other = tmp_path / "other"
    TextTokenizer.train(["a completely different corpus of words " * 20, "and more words"], 300).save(other)
    with pytest.raises(SystemExit) as exit_info:
        load_script("sample_text").main(["--ckpt", text_lm, "--prompt", "x", "--text-tokenizer", str(other)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "is not the one this model was trained with" in err and "\n" not in err


def test_data_tokenised_with_another_tokenizer_is_one_line(debug_text_tokenizer, tmp_path, capsys):
    other = tmp_path / "other"
    TextTokenizer.train(["a completely different corpus of words " * 20, "and more words"], 300).save(other)
    args = ["fit", "--config", "configs/debug/text_lm.yaml", f"--trainer.default_root_dir={tmp_path}"]
    args += [f"--model.init_args.text_tokenizer={debug_text_tokenizer}"]
    args += [f"--data.init_args.tokenizer={other}"]
    with pytest.raises(SystemExit) as exit_info:
        mmar_main([*args, *QUIET])
    assert exit_info.value.code == 2
    assert "point data and model at the same tokenizer" in capsys.readouterr().err


def test_unified_checkpoint_draws_captions_and_continues_text(unified, load_script, tmp_path):
    args = ["--ckpt", unified, "--prompt", "a red circle on the left", "--per-prompt", "2", "--cfg-scale=2"]
    sample_t2i = load_script("sample_t2i")
    metrics = sample_t2i.run(sample_t2i.parse_args([*args, "--score", "--out", str(tmp_path / "t2i")]))
    assert metrics["num_images"] == 2 and metrics["unit"].startswith("unified")
    assert metrics["forward_passes_per_image"] == 64 and "overall" in metrics["compositional"]
    scores = load_script("compare_unified").captioning(unified, "held_out", per_prompt=1)
    assert {"exact", "color", "shape", "count", "position", "parsed"} <= set(scores)
    assert scores["num_captions"] > 0 and len(scores["examples"]) > 0
    texts = load_script("sample_text").run(
        load_script("sample_text").parse_args(["--ckpt", unified, "--prompt", "two red", "--max-tokens", "4"])
    )
    assert isinstance(texts[0]["text"], str)


def test_text_lm_cannot_draw_images(text_lm, load_script, tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_script("sample_t2i").main(["--ckpt", text_lm, "--prompt", "a red", "--out", str(tmp_path)])
    assert "text-only language model" in capsys.readouterr().err


def test_the_cache_serves_caption_strings(debug_rgb_tokenizer, tmp_path):
    from mmar.data import TokenCacheDataModule, cache_tokens
    from mmar.data.shapes import ShapesDataset
    from tokenizers_visual import load_tokenizer

    data = torch.utils.data.DataLoader(ShapesDataset(12, image_size=32), batch_size=4)
    meta = cache_tokens(load_tokenizer(debug_rgb_tokenizer), data, tmp_path, progress=False)
    assert meta["num_captions"] > 0
    module = TokenCacheDataModule(str(tmp_path), batch_size=4)
    module.setup()
    batch = next(iter(module.train_dataloader()))
    assert len(batch["caption"]) == 4 and all(isinstance(c, str) for c in batch["caption"])
    assert batch["tokens"].shape == (4, 8, 8)
