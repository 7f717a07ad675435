"""Exact resume: a real `mmar fit` interrupted by a real SIGINT (or SIGTERM under 2-process DDP) and
resumed with `--ckpt_path last` continues step for step as if it had never stopped."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mmar.cli import main as mmar_main

STEPS = 22  # two epochs of 11 batches (180 train digits, batch 16): the resume crosses an epoch boundary


def fit_args(tokenizer: str, root: Path, version: str, steps: int = STEPS) -> list[str]:
    """The debug next-token recipe with EMA and augmentations, its losses logged to CSV at every step."""
    return [
        "fit",
        "--config=configs/debug/ar.yaml",
        f"--model.init_args.tokenizer={tokenizer}",
        "--model.init_args.trunk_overrides={dropout: 0.1}",  # training steps draw from the RNG
        "--data.init_args.val_fraction=0.9",
        "--data.init_args.batch_size=16",
        "--data.init_args.augment=true",  # so does the data
        f"--trainer.max_steps={steps}",
        f"--trainer.default_root_dir={root}",
        "--trainer.enable_progress_bar=false",
        "--trainer.logger=lightning.pytorch.loggers.CSVLogger",
        f"--trainer.logger.save_dir={root}",
        f"--trainer.logger.version={version}",
        "--trainer.logger.flush_logs_every_n_steps=1",
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.save_top_k=-1",  # keep the end-of-epoch checkpoints too
    ]


def losses(root: Path, version: str) -> dict[int, float]:
    """{step: train loss} from a run's CSV log (a resumed run starts the file again)."""
    path = root / "lightning_logs" / version / "metrics.csv"
    if not path.exists():
        return {}
    rows = list(csv.DictReader(path.open()))
    return {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}


def start(args: list[str], stderr: Path) -> subprocess.Popen:
    """`mmar ...` as a separate process, the way a user runs it; its stderr goes to a file (a pipe left
    unread while the test waits could fill up and stall it)."""
    env = {**os.environ, "PYTHONPATH": str(Path.cwd())}
    with stderr.open("w") as err:
        return subprocess.Popen([sys.executable, "-m", "mmar.cli", *args], env=env, stderr=err)


def finish(process: subprocess.Popen, stderr: Path) -> str:
    """Wait for `process`; the stderr it wrote."""
    process.wait(timeout=300)
    return stderr.read_text()


def interrupt_after(process: subprocess.Popen, root: Path, version: str, steps: int, sig: int) -> None:
    """Send `sig` once the run has logged `steps` losses."""
    deadline = time.monotonic() + 300
    while len(losses(root, version)) < steps and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(sig)


@pytest.fixture(scope="module")
def interrupted_and_reference(debug_tokenizer, tmp_path_factory):
    """(root, last.ckpt of the interrupted run, its losses before and after the interruption) of a reference
    run, an interrupted one and its resume."""
    root = tmp_path_factory.mktemp("resume")
    mmar_main(fit_args(debug_tokenizer, root, "reference"))
    process = start(fit_args(debug_tokenizer, root, "interrupted"), root / "stderr.txt")
    interrupt_after(process, root, "interrupted", steps=3, sig=signal.SIGINT)
    err = finish(process, root / "stderr.txt")
    assert process.returncode == 128 + signal.SIGINT, err
    last = root / "lightning_logs" / "interrupted" / "checkpoints" / "last.ckpt"
    assert f"interrupted by SIGINT after step {torch.load(last)['global_step']}: saved {last}" in err
    before = losses(root, "interrupted")
    mmar_main([*fit_args(debug_tokenizer, root, "interrupted"), "--ckpt_path=last"])
    return root, last, before, losses(root, "interrupted")


def test_interrupted_run_resumes_with_the_same_losses(interrupted_and_reference):
    root, last, before, after = interrupted_and_reference
    stopped_at = torch.load(last)["global_step"]
    assert 3 <= stopped_at < STEPS  # it really stopped mid-way, after the steps it had logged
    reference = losses(root, "reference")
    assert sorted(reference) == list(range(STEPS)) and sorted(after) == list(range(stopped_at, STEPS))
    assert len(before) >= 3  # the step in flight at the signal finished and was saved, but is not logged
    logged = {**before, **after}
    assert logged == {step: reference[step] for step in logged}


def test_resumed_run_ends_with_the_same_ema_weights_and_optimizer(interrupted_and_reference):
    root = interrupted_and_reference[0]
    name = f"epoch=1-step={STEPS}.ckpt"
    reference = torch.load(root / "lightning_logs" / "reference" / "checkpoints" / name)
    resumed = torch.load(root / "lightning_logs" / "interrupted" / "checkpoints" / name)
    for key, value in reference["state_dict"].items():  # the EMA weights (EMAWeightAveraging swaps them in)
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0)
    ref_adam, res_adam = reference["optimizer_states"][0]["state"], resumed["optimizer_states"][0]["state"]
    for index, state in ref_adam.items():
        torch.testing.assert_close(res_adam[index]["exp_avg_sq"], state["exp_avg_sq"], rtol=0, atol=0)
    assert resumed["lr_schedulers"] == reference["lr_schedulers"]


def test_run_resumed_from_an_end_of_epoch_checkpoint_has_the_same_losses(
    interrupted_and_reference, debug_tokenizer
):
    root = interrupted_and_reference[0]
    epoch_end = root / "lightning_logs" / "reference" / "checkpoints" / "epoch=0-step=11.ckpt"
    mmar_main([*fit_args(debug_tokenizer, root, "from_epoch_end"), f"--ckpt_path={epoch_end}"])
    reference, resumed = losses(root, "reference"), losses(root, "from_epoch_end")
    # Lightning logs the steps after an end-of-epoch resume one step later (12.. for global steps 11..)
    assert [resumed[step] for step in sorted(resumed)] == [reference[step] for step in range(11, STEPS)]


def test_resume_with_another_max_steps_is_one_line_error(interrupted_and_reference, debug_tokenizer, capsys):
    root, last = interrupted_and_reference[:2]
    args = [*fit_args(debug_tokenizer, root, "longer", steps=40), f"--ckpt_path={last}"]
    with pytest.raises(SystemExit) as exit_info:
        mmar_main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: the checkpoint's lr schedule spans 22 steps but this run has 40")
    assert "--trainer.max_steps=22" in err


def test_two_process_ddp_fit_saves_on_sigterm_and_resumes(debug_tokenizer, tmp_path):
    """2 CPU processes (gloo): a SIGTERM to the launching process stops both after the same step, and
    `--ckpt_path last` finishes the run (5 batches per rank and epoch: the resume crosses an epoch)."""
    ddp = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    args = [*fit_args(debug_tokenizer, tmp_path, "ddp", steps=8), *ddp]
    process = start(args, tmp_path / "stderr.txt")
    interrupt_after(process, tmp_path, "ddp", steps=2, sig=signal.SIGTERM)
    err = finish(process, tmp_path / "stderr.txt")
    assert process.returncode == 128 + signal.SIGTERM, err
    last = tmp_path / "lightning_logs" / "ddp" / "checkpoints" / "last.ckpt"
    stopped_at = torch.load(last)["global_step"]
    assert f"interrupted by SIGTERM after step {stopped_at}" in err and 2 <= stopped_at < 8
    resumed = start([*args, "--ckpt_path=last"], tmp_path / "stderr.txt")
    err = finish(resumed, tmp_path / "stderr.txt")
    assert resumed.returncode == 0, err
    assert sorted(losses(tmp_path, "ddp")) == list(range(stopped_at, 8))
