"""GeneratorModule end to end on the debug tokenizer: training, checkpoint round trip, sampling script."""

import json
from dataclasses import replace

import pytest
import torch
from conftest import one_line_error
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from mmar.data import DigitsDataModule
from mmar.errors import ConfigError
from mmar.lit import GeneratorModule
from mmar.lit.loading import load_generator
from mmar.sampling import Sampler


@pytest.fixture
def trained(debug_generator):
    return debug_generator


def test_checkpoint_from_before_pluggable_conditions_loads(trained, tmp_path):
    """Checkpoints written before `condition` existed (no such hyper-parameter) load as class-conditional,
    with the same class embedding and samples."""
    _, ckpt = trained
    old = torch.load(ckpt, weights_only=True)
    old["hyper_parameters"].pop("condition")
    torch.save(old, tmp_path / "old.ckpt")
    loaded = load_generator(tmp_path / "old.ckpt")
    assert type(loaded.conditioning).__name__ == "ClassCondition" and loaded.conditioning.num_classes == 10
    new = load_generator(ckpt)
    sampler = Sampler(seed=0, cfg_scale=2.0)
    assert torch.equal(
        loaded.generate(torch.tensor([3, 7]), sampler), new.generate(torch.tensor([3, 7]), sampler)
    )


def test_checkpoint_loads_weights_only_and_generates(trained):
    _, ckpt = trained
    loaded = load_generator(ckpt)
    assert loaded.grid == (8, 8)
    images = loaded.generate(torch.tensor([0, 5]), Sampler(seed=0, cfg_scale=2.0))
    assert images.shape == (2, 1, 32, 32)
    again = loaded.generate(torch.tensor([0, 5]), Sampler(seed=0, cfg_scale=2.0))
    assert torch.equal(images, again)  # per-call seed


def test_token_cache_batches_train_like_images(trained):
    model, _ = trained
    batch = {"image": torch.rand(4, 1, 32, 32) * 2 - 1, "label": torch.arange(4)}
    model.eval()
    tokens = model.tokens_of(batch)
    torch.manual_seed(0)
    from_images = model.step_losses(batch)["loss"]
    torch.manual_seed(0)
    from_tokens = model.step_losses({"tokens": tokens.int(), "label": batch["label"]})["loss"]
    torch.testing.assert_close(from_images, from_tokens)
    with pytest.raises(ConfigError, match="outside the tokenizer's vocabulary"):
        model.tokens_of({"tokens": tokens + 10_000, "label": batch["label"]})


def test_grid_mismatch_errors(debug_tokenizer, trained):
    with pytest.raises(ConfigError, match="not divisible by the tokenizer's downsampling factor 4"):
        GeneratorModule(tokenizer=debug_tokenizer, image_size=30)
    model, _ = trained
    with pytest.raises(ConfigError, match=r"do not match model\.image_size"):
        model.tokens_of({"image": torch.zeros(2, 1, 16, 16), "label": torch.zeros(2, dtype=torch.long)})


def test_sample_script_writes_grid_and_metrics(trained, tmp_path, load_script):
    _, ckpt = trained
    out = tmp_path / "samples"
    args = ["--ckpt", str(ckpt), "--out", str(out), "--per-class", "2", "--classes", "1", "2"]
    load_script("sample").main([*args, "--cfg-scale", "1.5", "--top-k", "5"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 4 and metrics["forward_passes_per_image"] == 64
    assert (out / "grid.png").stat().st_size > 0


def test_sample_script_decodes_speculatively_in_fewer_passes(trained, tmp_path, load_script, monkeypatch):
    model, ckpt = trained
    out = tmp_path / "samples"
    args = ["--ckpt", str(ckpt), "--out", str(out), "--per-class", "2", "--classes", "1", "2"]
    load_script("sample").main([*args, "--speculative", "lantern", "--window", "8", "--lantern-k", "4"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sampler"]["speculative"] == "lantern" and metrics["num_images"] == 4
    assert metrics["trunk_passes_per_batch"] <= 64  # one batch; plain decoding makes 64 passes
    assert model._code_neighbours(4).shape == (32, 4)  # LANTERN's neighbours: the VQ codes' latents
    greedy = Sampler(temperature=0, cfg_scale=1.5)
    plain = model.generate_tokens(torch.tensor([1, 2]), greedy)
    assert torch.equal(model.generate_tokens(torch.tensor([1, 2]), replace(greedy, speculative="sjd")), plain)
    monkeypatch.setattr(model.unit, "supports_speculative", False)  # as for units without it
    with pytest.raises(ConfigError, match="has no speculative decoding; units that have"):
        model.generate_tokens(torch.tensor([1]), Sampler(speculative="sjd"))


def test_sample_script_missing_checkpoint_is_one_line_error(tmp_path, capsys, load_script):
    err = one_line_error(capsys, "--ckpt", str(tmp_path / "missing.ckpt"), main=load_script("sample").main)
    assert err.startswith("error: checkpoint not found")


UNIT_CASES = {  # case -> (unit, tokenizer fixture, unit kwargs)
    "random_order": ("random_order", "debug_tokenizer", {}),
    "next_block": ("next_block", "debug_tokenizer", {"block": [2, 2]}),
    "next_neighbor": ("next_neighbor", "debug_tokenizer", {}),
    "masked_ar": (
        "masked_ar",
        "debug_kl_tokenizer",
        {"steps": 4, "head_width": 32, "head_depth": 1, "head_steps": 3},
    ),
    "masked_ar_skip_masked": (
        "masked_ar",
        "debug_kl_tokenizer",
        {"steps": 4, "head_width": 32, "head_depth": 1, "head_steps": 3, "skip_masked": True},
    ),
    "masked_ar_tokenbridge": (
        "masked_ar",
        "debug_tokenbridge_tokenizer",
        {
            "steps": 4,
            "head": "channel_ar",
            "head_kwargs": {"channels": 4, "width": 32, "depth": 1, "heads": 2},
        },
    ),
    "hi_mar": (
        "hi_mar",
        "debug_kl_tokenizer",
        {"pivots": 2, "pivot_steps": 2, "steps": 3, "head_width": 32, "head_steps": 2},
    ),
    "next_x": (
        "next_x",
        "debug_kl_tokenizer",
        {"entity": "cell", "size": 4, "flow_steps": 3, "head_width": 32},
    ),
}


@pytest.mark.parametrize("case", sorted(UNIT_CASES))
def test_every_unit_trains_checkpoints_and_samples_images(case, request, tmp_path):
    unit, fixture, unit_kwargs = UNIT_CASES[case]
    model = GeneratorModule(
        tokenizer=request.getfixturevalue(fixture),
        unit=unit,
        unit_kwargs=unit_kwargs,
        image_size=32,
        warmup_steps=1,
    )
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[ckpt],
    )
    trainer.fit(model, DigitsDataModule(image_size=32, batch_size=8))
    loaded = load_generator(tmp_path / "ckpt" / "last.ckpt")
    images = loaded.generate(torch.tensor([0, 5]), Sampler(seed=0, cfg_scale=2.0, top_k=5))
    assert images.shape == (2, 1, 32, 32) and torch.isfinite(images).all()
    assert loaded.unit.num_steps(loaded.grid) == model.unit.num_steps(model.grid)
