"""`mmar test` on a generator also reports the embedded metric of its data, on samples drawn at test time
with the model's sampler settings: class accuracy and FD on the digits, the compositional score for
text-to-image on the shapes, losses only on a folder of images."""

import json
import re

import numpy as np
import pytest
from conftest import one_line_error
from PIL import Image

from mmar.cli import main as mmar_main

QUIET = ["--trainer.enable_progress_bar=false", "--trainer.logger=false", "--trainer.limit_test_batches=1"]
SAMPLER = {"cfg_scale": 2.0, "seed": 0}


def mmar_test(capsys, config: str, *args: str) -> dict[str, float]:
    """The test/ metrics of the results table `mmar test` prints."""
    capsys.readouterr()
    mmar_main(["test", "--config", config, f"--model.init_args.sampler={json.dumps(SAMPLER)}", *QUIET, *args])
    out = capsys.readouterr().out
    return {k: float(v) for k, v in re.findall(r"│\s+test/(\w+)\s+│\s+([-+.\deE]+|nan)\s", out)}


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_digits_generator_reports_class_accuracy_and_fd(debug_tokenizer, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MMAR_CACHE", str(tmp_path / "cache"))  # the classifier trains inside the test loop
    args = [f"--model.init_args.tokenizer={debug_tokenizer}", f"--trainer.default_root_dir={tmp_path}"]
    args.append("--model.init_args.test_samples_per_class=2")  # 20 samples
    first = mmar_test(capsys, "configs/debug/ar.yaml", *args)
    assert {"loss", "class_accuracy", "fd", "fd_real_same_n"} <= set(first)
    assert 0.0 <= first["class_accuracy"] <= 1.0
    assert first["fd"] > first["fd_real_same_n"] > 0.0  # an untrained generator is far from real digits
    assert mmar_test(capsys, "configs/debug/ar.yaml", *args) == first  # seeded: the same numbers again

    other = mmar_test(capsys, "configs/debug/ar.yaml", *args, '--model.init_args.sampler={"seed": 1}')
    assert other["fd"] != first["fd"] and other["loss"] == first["loss"]

    args.append("--model.init_args.test_samples_per_class=0")
    assert set(mmar_test(capsys, "configs/debug/ar.yaml", *args)) == {"loss"}


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_text_to_image_generator_reports_the_compositional_score(debug_rgb_tokenizer, tmp_path, capsys):
    args = [f"--model.init_args.tokenizer={debug_rgb_tokenizer}", f"--trainer.default_root_dir={tmp_path}"]
    args += ["--model.init_args.test_samples_per_class=1", "--data.init_args.num_train=8"]
    metrics = mmar_test(capsys, "configs/debug/t2i.yaml", *args)
    names = {"compositional_overall", "compositional_exact", "compositional_held_out", "compositional_seen"}
    assert names <= set(metrics) and "loss" in metrics and "fd" not in metrics
    assert all(0.0 <= metrics[name] <= 1.0 for name in names)


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
def test_folder_generator_reports_losses_only(debug_tokenizer, tmp_path, capsys):
    rng = np.random.default_rng(0)
    for i in range(4):  # two class folders of 32x32 grey images
        folder = tmp_path / "images" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / f"{i}.png")
    root = str(tmp_path / "images")
    data = {
        "class_path": "mmar.data.ImageFolderDataModule",
        "init_args": {"train_root": root, "val_root": root, "image_size": 32, "channels": 1, "batch_size": 2},
    }
    args = [f"--model.init_args.tokenizer={debug_tokenizer}", f"--trainer.default_root_dir={tmp_path}"]
    args += [f"--data={json.dumps(data)}", "--model.init_args.num_classes=2"]
    assert set(mmar_test(capsys, "configs/debug/ar.yaml", *args)) == {"loss"}


def test_negative_samples_per_class_is_one_line_error(debug_tokenizer, capsys):
    args = ["test", "--config", "configs/debug/ar.yaml", f"--model.init_args.tokenizer={debug_tokenizer}"]
    err = one_line_error(capsys, *args, "--model.init_args.test_samples_per_class=-1", *QUIET)
    assert err.startswith("error: model.test_samples_per_class=-1 must be >= 0")
