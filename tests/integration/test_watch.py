"""What `mmar fit` logs by default: TensorBoard event files with sample pictures and the learning rate,
CSV metrics beside them; a config's own logger and callbacks still win."""

import csv
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mmar.cli import MMARCLI
from mmar.cli import main as mmar_main
from mmar.lit.callbacks import SampleGrid

SHORT = ["--trainer.max_steps=2", "--trainer.val_check_interval=1", "--trainer.limit_val_batches=1"]
SHORT += ["--trainer.log_every_n_steps=1"]


def events(run: Path) -> EventAccumulator:
    (log_dir,) = run.glob("lightning_logs/version_*")
    accumulator = EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_quickstart_recipes_log_sample_pictures_lr_and_csv(tmp_path):
    """The quickstart's two recipes, a few steps each: reconstructions, then generated digits, every
    validation run, with the learning rate, and metrics.csv beside the event files."""
    tokenizer = tmp_path / "vq" / "tokenizer"
    vq = ["--config", "configs/quickstart/digits_vq.yaml", f"--trainer.default_root_dir={tmp_path / 'vq'}"]
    mmar_main(["fit", *vq, f"--model.init_args.export_dir={tokenizer}", *SHORT])
    ar = ["--config", "configs/quickstart/digits_ar.yaml", f"--trainer.default_root_dir={tmp_path / 'ar'}"]
    ar += [f"--model.init_args.tokenizer={tokenizer}", "--trainer.callbacks=[]"]  # no checkpoint folder
    mmar_main(["fit", *ar, *SHORT])

    for run, tag in [("vq", "samples/reconstructions"), ("ar", "samples/generated")]:
        logged = events(tmp_path / run)
        assert logged.Tags()["images"] == [tag]
        pictures = logged.Images(tag)
        assert [p.step for p in pictures] == [1, 2]  # one per validation run
        assert pictures[0].width > pictures[0].height > 0
        assert any(t.startswith("lr-AdamW") for t in logged.Tags()["scalars"])
        (metrics,) = (tmp_path / run).glob("lightning_logs/version_*/metrics.csv")
        assert any(row.get("train/loss") for row in csv.DictReader(metrics.open()))
    generated = events(tmp_path / "ar").Images("samples/generated")[0]
    assert generated.width > 4 * generated.height  # 10 classes side by side, 2 samples each


def test_sample_grids_leave_training_unchanged(debug_tokenizer, tmp_path):
    """Sampling between training steps draws from its own RNG: the losses equal a run without it."""
    losses = {}
    for every in (1, 0):
        root = tmp_path / f"every_{every}"
        grid = {"class_path": "mmar.lit.callbacks.SampleGrid", "init_args": {"every_n_val_epochs": every}}
        args = ["fit", "--config", "configs/debug/ar.yaml", f"--model.init_args.tokenizer={debug_tokenizer}"]
        args += [f"--trainer.default_root_dir={root}", "--trainer.enable_progress_bar=false"]
        args += [f"--trainer.callbacks=[{yaml.safe_dump(grid, default_flow_style=True).strip()}]"]
        mmar_main([*args, "--trainer.max_steps=3", "--trainer.val_check_interval=1"])
        (metrics,) = root.glob("lightning_logs/version_*/metrics.csv")
        losses[every] = [row["train/loss"] for row in csv.DictReader(metrics.open()) if row["train/loss"]]
        assert len(events(root).Tags()["images"]) == every  # the config's SampleGrid replaced the default
    assert len(losses[1]) == 3
    assert losses[1] == losses[0]


def test_config_with_its_own_logger_and_callbacks_keeps_them(tmp_path):
    config = yaml.safe_load(Path("configs/debug/vq.yaml").read_text())
    config["model"]["init_args"]["export_dir"] = str(tmp_path / "tokenizer")
    own_logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(tmp_path)},
    }
    own_monitor = {"logging_interval": "epoch"}
    config["trainer"].update(
        default_root_dir=str(tmp_path),
        max_steps=1,
        logger=own_logger,
        callbacks=[
            {"class_path": "lightning.pytorch.callbacks.TQDMProgressBar"},
            {"class_path": "lightning.pytorch.callbacks.LearningRateMonitor", "init_args": own_monitor},
        ],
    )
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(config))
    trainer = MMARCLI(args=["fit", "--config", str(path)]).trainer

    assert [type(lg) for lg in trainer.loggers] == [CSVLogger]
    assert isinstance(trainer.progress_bar_callback, TQDMProgressBar)
    monitors = [cb for cb in trainer.callbacks if isinstance(cb, LearningRateMonitor)]
    assert [m.logging_interval for m in monitors] == ["epoch"]
    assert (
        sum(isinstance(cb, SampleGrid) for cb in trainer.callbacks) == 1
    )  # the default, with nothing to show
    assert not list(tmp_path.rglob("events.out.tfevents*"))
    assert list(tmp_path.glob("lightning_logs/version_0/metrics.csv"))


def test_workflow_doc_snippets_configure_the_run(tmp_path):
    """docs/workflow.md's YAML: the SampleGrid settings reach the trainer; the W&B snippet (wandb is not a
    dependency, so it is only read) keeps CSV beside W&B."""
    text = Path("docs/workflow.md").read_text()
    blocks = [block.split("```")[0] for block in text.split("```yaml\n")[1:]]
    (grid,) = [yaml.safe_load(block) for block in blocks if "SampleGrid" in block]
    (wandb,) = [yaml.safe_load(block) for block in blocks if "WandbLogger" in block]
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    args = [
        "--config",
        "configs/debug/vq.yaml",
        "--config",
        str(path),
        f"--trainer.default_root_dir={tmp_path}",
    ]
    trainer = MMARCLI(args=args, run=False).trainer
    (chosen,) = [cb for cb in trainer.callbacks if isinstance(cb, SampleGrid)]
    assert (chosen.every_n_val_epochs, chosen.per_class, chosen.sampler.cfg_scale) == (5, 4, 3.0)
    assert [lg["class_path"].rsplit(".", 1)[1] for lg in wandb["trainer"]["logger"]] == [
        "WandbLogger",
        "CSVLogger",
    ]
