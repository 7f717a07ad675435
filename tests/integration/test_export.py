"""`mmar export` and loading: self-contained folders that survive moving the run, weights-only loading of
every checkpoint, one-line errors on corrupt files, and the tokenizer's training image size."""

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import fit_three_steps, one_line_error
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from mmar import checkpoint_io
from mmar.checkpoint_io import read_checkpoint as read
from mmar.cli import main as mmar_main
from mmar.data import DigitsDataModule
from mmar.errors import ConfigError
from mmar.export import ExportedModel, export_checkpoint
from mmar.lit import GeneratorModule, TokenizerModule
from mmar.lit.loading import is_stream_checkpoint, load_generator, load_stream
from mmar.sampling import Sampler
from mmar.tokenizer import load_tokenizer

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.logger=false"]


def samples(model) -> torch.Tensor:
    return model.generate(torch.tensor([1, 7]), Sampler(seed=0, cfg_scale=2.0))


@pytest.fixture(scope="module")
def run(debug_tokenizer, tmp_path_factory):
    """A generator run whose tokenizer lives inside the run folder: (run folder, last.ckpt)."""
    root = tmp_path_factory.mktemp("run")
    shutil.copytree(debug_tokenizer, root / "tokenizer")
    model = GeneratorModule(tokenizer=str(root / "tokenizer"), image_size=32, warmup_steps=1)
    _, ckpt = fit_three_steps(model, DigitsDataModule(image_size=32, batch_size=8), root)
    return root, ckpt


def test_export_loads_after_the_run_folder_is_deleted(run, tmp_path, load_script, capsys):
    root, _ = run
    moved = tmp_path / "moved_run"
    shutil.copytree(root, moved)
    expected = samples(load_generator(moved / "ckpt" / "last.ckpt"))
    mmar_main(["export", "--ckpt", str(moved / "ckpt" / "last.ckpt"), "--out", str(tmp_path / "export")])
    shutil.rmtree(moved)  # neither the checkpoint nor the tokenizer folder it was trained with remain
    files = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert files == ["README.md", "config.json", "model.safetensors", "tokenizer"]
    loaded = load_generator(tmp_path / "export")
    assert torch.equal(samples(loaded), expected) and not is_stream_checkpoint(tmp_path / "export")
    out = tmp_path / "samples"
    load_script("sample").main(["--ckpt", str(tmp_path / "export"), "--out", str(out), "--per-class", "1"])
    assert {"grid.png", "samples.npz", "metrics.json"} <= {p.name for p in out.iterdir()}


def test_exported_weights_are_the_ema_weights(run, tmp_path):
    _, ckpt = run
    saved = torch.load(ckpt, weights_only=True)
    assert "current_model_state" in saved  # EMAWeightAveraging: state_dict holds the average
    loaded = load_generator(export_checkpoint(ckpt, tmp_path / "export"))
    name = "trunk.blocks.0.attn.qkv.weight"
    name = (
        name if name in saved["state_dict"] else next(k for k in saved["state_dict"] if k.startswith("trunk"))
    )
    assert torch.equal(loaded.state_dict()[name], saved["state_dict"][name])
    assert not torch.equal(saved["state_dict"][name], saved["current_model_state"][name])


def test_a_checkpoint_loads_after_the_tokenizer_folder_moves(run, tmp_path):
    root, ckpt = run
    moved = tmp_path / "run"
    shutil.copytree(root, moved)
    shutil.rmtree(moved / "tokenizer")  # the path in the hyper-parameters no longer exists
    loaded = load_generator(moved / "ckpt" / "last.ckpt")
    assert torch.equal(samples(loaded), samples(load_generator(ckpt)))


def test_a_generator_takes_an_exported_folder_as_its_tokenizer(run, tmp_path):
    _, ckpt = run
    folder = export_checkpoint(ckpt, tmp_path / "export")
    model = GeneratorModule(tokenizer=str(folder), image_size=32)
    assert model.tokenizer.vocab_size == load_generator(folder).tokenizer.vocab_size


def test_hub_mixin_round_trip(run, tmp_path):
    _, ckpt = run
    model = load_generator(ckpt)
    ExportedModel(model).save_pretrained(tmp_path / "hub")
    again = ExportedModel.from_pretrained(str(tmp_path / "hub")).module
    assert torch.equal(samples(again), samples(model))


def test_a_failed_export_leaves_the_previous_folder(run, tmp_path):
    _, ckpt = run
    folder = export_checkpoint(ckpt, tmp_path / "export")
    before = (folder / "model.safetensors").read_bytes()
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(ConfigError):
        export_checkpoint(broken, folder)
    assert (folder / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.ckpt", "export"]  # no temporary left


def test_stream_export_carries_its_text_and_image_tokenizers(debug_stream, debug_text_tokenizer, tmp_path):
    ExportedModel(debug_stream).save_pretrained(tmp_path / "stream")
    assert (tmp_path / "stream" / "text_tokenizer" / "tokenizer.json").is_file()
    loaded = load_stream(tmp_path / "stream")
    assert is_stream_checkpoint(tmp_path / "stream")  # how sample_t2i tells the two kinds apart
    given = load_stream(tmp_path / "stream", text_tokenizer=debug_text_tokenizer)  # sample_text's override
    assert given.text_tokenizer.digest == debug_stream.text_tokenizer.digest
    assert loaded.text_tokenizer.digest == debug_stream.text_tokenizer.digest
    for name, value in debug_stream.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    (tmp_path / "stream" / "text_tokenizer" / "tokenizer.json").write_text('{"model": ')  # truncated
    with pytest.raises(ConfigError, match=r"text_tokenizer/tokenizer\.json' is not a tokenizers JSON") as err:
        load_stream(tmp_path / "stream")
    assert "\n" not in str(err.value)


def test_text_lm_export_from_checkpoint(debug_text_tokenizer, tmp_path, load_script):
    tok, ckpt_dir = debug_text_tokenizer, tmp_path / "ckpt"
    callback = json.dumps(
        [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {"dirpath": str(ckpt_dir)},
            }
        ]
    )
    args = ["fit", "--config", "configs/debug/text_lm.yaml", f"--trainer.default_root_dir={tmp_path}"]
    tokenizer_args = [f"--model.init_args.text_tokenizer={tok}", f"--data.init_args.tokenizer={tok}"]
    mmar_main([*args, *tokenizer_args, f"--trainer.callbacks={callback}", "--trainer.max_steps=1", *QUIET])
    ckpt = next(ckpt_dir.glob("*.ckpt"))
    sample, evaluate = load_script("sample_text"), load_script("eval_text_lm")
    args = ["--prompt", "The", "--max-tokens", "3"]
    expected = sample.run(sample.parse_args(["--ckpt", str(ckpt), *args]))
    score = evaluate.run(evaluate.parse_args(["--ckpt", str(ckpt)]))
    mmar_main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "lm")])
    shutil.rmtree(ckpt_dir)
    assert sample.run(sample.parse_args(["--ckpt", str(tmp_path / "lm"), *args])) == expected
    exported = evaluate.run(evaluate.parse_args(["--ckpt", str(tmp_path / "lm")]))
    assert exported["rows"] == score["rows"] and exported["steps"] == score["steps"] == 1


def tokenizer_checkpoint(tmp_path, image_size: int = 16):
    """A TokenizerModule checkpoint after one step on `image_size` digits (an intermediate checkpoint)."""
    tiny = {
        "name": "vq",
        "in_channels": 1,
        "ch": 8,
        "ch_mult": [1, 2],
        "num_res_blocks": 1,
        "codebook_size": 16,
    }
    module = TokenizerModule(tokenizer=tiny)
    Trainer(
        accelerator="cpu",
        max_steps=1,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        default_root_dir=tmp_path,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt")],
    ).fit(module, DigitsDataModule(image_size=image_size, batch_size=4))
    return module, next((tmp_path / "ckpt").glob("*.ckpt"))


def test_tokenizer_export_records_its_image_size_and_guards_generators(tmp_path, capsys):
    module, ckpt = tokenizer_checkpoint(tmp_path)
    mmar_main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "tok")])
    tokenizer = load_tokenizer(tmp_path / "tok")
    assert tokenizer.trained_image_size == 16
    assert json.loads((tmp_path / "tok" / "config.json").read_text())["trained_image_size"] == 16
    for name, value in module.tokenizer.state_dict().items():
        assert torch.equal(tokenizer.state_dict()[name], value)
    GeneratorModule(tokenizer=str(tmp_path / "tok"), image_size=16)
    with pytest.raises(ConfigError, match=r"image_size=32 but .* trained on 16px") as err:
        GeneratorModule(tokenizer=str(tmp_path / "tok"), image_size=32)
    assert "\n" not in str(err.value)


def test_tokenizers_saved_without_an_image_size_still_load(debug_rgb_tokenizer):
    config = json.loads((Path(debug_rgb_tokenizer) / "config.json").read_text())
    assert "trained_image_size" not in config
    assert GeneratorModule(tokenizer=debug_rgb_tokenizer, image_size=64).grid == (16, 16)


def test_a_checkpoint_with_a_pickled_object_is_refused(run, tmp_path, capsys):
    _, ckpt = run
    saved = torch.load(ckpt, weights_only=True)
    saved["extra"] = argparse.Namespace(payload="not weights")
    torch.save(saved, tmp_path / "pickled.ckpt")
    with pytest.raises(ConfigError, match="pickled Python objects"):
        load_generator(tmp_path / "pickled.ckpt")
    err = one_line_error(
        capsys, "export", "--ckpt", str(tmp_path / "pickled.ckpt"), "--out", str(tmp_path / "x")
    )
    assert "pickled" in err and "pickled.ckpt" in err
    config = ["--config", "configs/debug/vq.yaml", f"--trainer.default_root_dir={tmp_path}", *QUIET]
    err = one_line_error(capsys, "validate", *config, f"--ckpt_path={tmp_path / 'pickled.ckpt'}")
    assert "pickled" in err and "pickled.ckpt" in err


def test_a_truncated_checkpoint_is_one_line_naming_the_file(run, tmp_path, capsys):
    _, ckpt = run
    (tmp_path / "last.ckpt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(ConfigError, match=r"last\.ckpt' is truncated or corrupt"):
        load_generator(tmp_path / "last.ckpt")
    config = ["--config", "configs/debug/vq.yaml", f"--trainer.default_root_dir={tmp_path}", *QUIET]
    err = one_line_error(capsys, "fit", *config, f"--ckpt_path={tmp_path / 'last.ckpt'}")
    assert "last.ckpt' is truncated or corrupt" in err


@pytest.mark.parametrize(
    "damage, message",
    [
        ("model.safetensors", "model.safetensors' is truncated or corrupt"),
        ("tokenizer/model.safetensors", "tokenizer/model.safetensors' is truncated or corrupt"),
        ("tokenizer/config.json", "tokenizer/config.json' is truncated or corrupt"),
        ("config.json", "config.json' is truncated or corrupt"),
    ],
)
def test_a_truncated_exported_file_is_one_line_naming_it(run, tmp_path, damage, message):
    _, ckpt = run
    folder = export_checkpoint(ckpt, tmp_path / "export")
    data = (folder / damage).read_bytes()
    (folder / damage).write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=message) as err:
        load_generator(folder)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "drop, message",
    [
        (("mmar_module",), "config.json' has no field 'mmar_module'"),
        (("init_args", "tokenizer"), r"config.json \(init_args\)' has no field 'tokenizer'"),
        (("tokenizer/name",), "has no 'name'"),
    ],
)
def test_a_config_missing_a_field_is_one_line_naming_it(run, tmp_path, drop, message):
    _, ckpt = run
    folder = export_checkpoint(ckpt, tmp_path / "export")
    file = (
        folder / "tokenizer" / "config.json" if drop[0].startswith("tokenizer/") else folder / "config.json"
    )
    config = json.loads(file.read_text())
    inner = config[drop[0]] if len(drop) == 2 else config
    inner.pop(drop[-1].split("/")[-1])
    file.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message):
        load_generator(folder)


def test_a_failed_sampling_run_leaves_the_previous_results(run, tmp_path, load_script, monkeypatch):
    _, ckpt = run
    sample, out = load_script("sample"), tmp_path / "samples"
    args = ["--ckpt", str(ckpt), "--out", str(out), "--per-class", "1", "--classes", "3"]
    sample.main(args)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["grid.png", "metrics.json", "samples.npz"]

    def broken_grid(*args, **kwargs):
        raise RuntimeError("the grid could not be drawn")

    monkeypatch.setattr(sample, "save_image", broken_grid)
    with pytest.raises(RuntimeError, match="grid could not be drawn"):
        sample.main([*args, "--seed", "1"])  # samples.npz would be written before grid.png
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_the_cli_saves_and_resumes_through_the_safe_checkpoint_io(tmp_path, monkeypatch):
    callback = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": str(tmp_path)},
    }
    args = ["fit", "--config", "configs/debug/vq.yaml", f"--trainer.default_root_dir={tmp_path}", *QUIET]
    args += ["--trainer.enable_checkpointing=true", f"--trainer.callbacks={json.dumps([callback])}"]
    mmar_main([*args, "--trainer.max_steps=1"])
    first = next(tmp_path.glob("*.ckpt"))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left
    reads = []
    monkeypatch.setattr(
        checkpoint_io, "read_checkpoint", lambda path, **kw: reads.append(path) or read(path, **kw)
    )
    mmar_main([*args, "--trainer.max_steps=2", f"--ckpt_path={first}"])
    assert reads == [str(first)]  # the trainer's load went through SafeCheckpointIO
    assert torch.load(tmp_path / "epoch=0-step=2.ckpt", weights_only=True)["global_step"] == 2
