"""Atomic writes (checkpoints, folders, a run's result files) and weights-only checkpoint reads."""

import argparse
import os

import lightning.fabric.plugins.io.torch_io as torch_io
import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mmar.checkpoint_io import SafeCheckpointIO, read_checkpoint, use_safe_checkpoint_io
from mmar.cli import MMARCLI
from mmar.errors import ConfigError
from mmar.io import atomic_dir, write_json, write_outputs


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def crash_midway(checkpoint, path):
    """A save killed half-way: some bytes reach the file, then the process dies."""
    with open(path, "wb") as f:
        f.write(b"PK\x03\x04 half a zip")
    raise KeyboardInterrupt


def test_a_crash_while_saving_a_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, tmp_path / "last.ckpt")
    monkeypatch.setattr(torch_io, "_atomic_save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "last.ckpt")
    assert torch.equal(io.load_checkpoint(tmp_path / "last.ckpt")["state_dict"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_checkpoint_io_never_unpickles_even_when_asked(tmp_path):
    torch.save({"state_dict": {}, "extra": argparse.Namespace(a=1)}, tmp_path / "pickled.ckpt")
    with pytest.raises(ConfigError, match="pickled Python objects") as err:
        SafeCheckpointIO().load_checkpoint(tmp_path / "pickled.ckpt", weights_only=False)
    assert "\n" not in str(err.value) and "pickled.ckpt" in str(err.value)


def test_read_checkpoint_names_a_file_that_is_not_a_checkpoint(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "weights.pt")
    with pytest.raises(ConfigError, match="not a Lightning checkpoint"):
        read_checkpoint(tmp_path / "weights.pt")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"empty\.ckpt' is truncated or corrupt"):
        read_checkpoint(tmp_path / "empty.ckpt")


def test_the_cli_trainer_uses_the_safe_checkpoint_io(tmp_path):
    args = [
        "--config",
        "configs/debug/vq.yaml",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.logger=false",
    ]
    cli = MMARCLI(args=args, run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is SafeCheckpointIO
    custom = type("OwnCheckpointIO", (TorchCheckpointIO,), {})()
    trainer = Trainer(accelerator="cpu", plugins=[custom], logger=False)
    use_safe_checkpoint_io(trainer)  # a checkpoint IO chosen in the config is kept
    assert trainer.strategy.checkpoint_io is custom


def test_result_files_are_replaced_all_or_nothing(tmp_path):
    with pytest.raises(OSError):
        write_outputs(
            tmp_path, {"metrics.json": lambda tmp: write_json(tmp, {"v": 1}), "a.txt": fail_after_write}
        )
    assert list(tmp_path.iterdir()) == []  # the failure came after metrics.json was written: nothing lands
    (tmp_path / "metrics.json").write_text("old")

    def broken(tmp):
        raise RuntimeError("sampling failed")

    with pytest.raises(RuntimeError):
        write_outputs(tmp_path, {"metrics.json": lambda tmp: write_json(tmp, {"v": 2}), "grid.png": broken})
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    assert (tmp_path / "metrics.json").read_text() == "old"
    write_outputs(tmp_path, {"metrics.json": lambda tmp: write_json(tmp, {"v": 3})})
    assert (tmp_path / "metrics.json").read_text() == '{\n  "v": 3\n}'
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~umask()  # not mkstemp's 0600


def fail_after_write(tmp):
    raise OSError("disk full")


def test_atomic_dir_keeps_the_old_folder_on_failure(tmp_path):
    atomic_dir(tmp_path / "out", lambda d: (d / "a").write_text("1"))

    def broken(folder):
        (folder / "a").write_text("2")
        raise RuntimeError("export failed")

    with pytest.raises(RuntimeError):
        atomic_dir(tmp_path / "out", broken)
    assert (tmp_path / "out" / "a").read_text() == "1"
    atomic_dir(tmp_path / "out", lambda d: (d / "b").write_text("3"))
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["b"]
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o777 & ~umask()  # not mkdtemp's 0700
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
