"""docs/workflow.md runs as written: every command of its ```bash blocks, in document order, in a fresh
working directory (configs/ and scripts/ linked in, so `runs/...` lands there), with the `mmar` console
script. Only the speed overrides of `SPEED_OVERRIDES` are appended. A command the doc gains must be added
to `SPEED_OVERRIDES`, `REFUSED` or `SKIPPED`, so the doc and this test cannot drift apart.

YAML blocks whose first line is `# NAME.yaml...` are files the doc asks the reader to save: they are
written into the working directory when the walk reaches them.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "workflow.md"

QUICKSTART_FIT = ("--trainer.max_steps=2", "--trainer.limit_val_batches=1")

# the doc's commands, as written (comments dropped, `\` lines joined, spaces collapsed)
FIT_VQ = "mmar fit --config configs/quickstart/digits_vq.yaml"
FIT_AR = "mmar fit --config configs/quickstart/digits_ar.yaml"
FIT_LONG = f"{FIT_AR} --config long_ar.yaml --model.init_args.lr=5e-4 --data.init_args.batch_size=32"
RESUME = f"{FIT_AR} --ckpt_path last"
RESUME_LONGER = f"{RESUME} --trainer.max_steps=1000"
FIT_DDP = f"{FIT_AR} --trainer.strategy=ddp --trainer.devices=2 --trainer.accelerator=cpu"
EXPORT = "mmar export --ckpt runs/quickstart/ar/checkpoints/last.ckpt --out runs/quickstart/ar/export"
SAMPLE = (
    "python scripts/sample.py --ckpt runs/quickstart/ar/export --out runs/quickstart/samples --per-class 50"
    " --cfg-scale 3.0 --embedded-metrics"
)
ON_LAST = "--config configs/quickstart/digits_ar.yaml --ckpt_path runs/quickstart/ar/checkpoints/last.ckpt"
SAMPLER = "--model.init_args.sampler='{cfg_scale: 2.0, seed: 0}'"
VALIDATE, TEST = f"mmar validate {ON_LAST}", f"mmar test {ON_LAST}"
PREDICT = f"mmar predict {ON_LAST} {SAMPLER} --trainer.limit_predict_batches=1"
PREDICT_LABELS = (
    f"mmar predict {ON_LAST} --data=mmar.data.ClassLabelsDataModule --data.per_class=4 --data.batch_size=40"
    f" {SAMPLER} --prediction_writer.output_dir=runs/quickstart/predict_labels"
)
SAMPLE_EVAL = (
    "python scripts/sample_eval.py --ckpt runs/quickstart/ar/export --out runs/quickstart/eval --per-class 50"
    " --cfg-scale 3.0"
)
FIT_NAN = f"{FIT_AR} --model.init_args.lr=1e6 --trainer.max_steps=20"
FIT_SKIP_NAN = f"{FIT_AR} --nonfinite.action=skip --nonfinite.max_skips=10"
L_FSDP = (
    "fit --config configs/image/imagenet_ar_L_fsdp.yaml --trainer.num_nodes 2 --trainer.devices 8"
    " --data.init_args.train_root /data/imagenet/train"
)

# commands that run -> arguments appended for speed, and nothing else
SPEED_OVERRIDES = {
    FIT_VQ: QUICKSTART_FIT,
    FIT_AR: QUICKSTART_FIT,
    FIT_LONG: QUICKSTART_FIT,
    RESUME: QUICKSTART_FIT,
    FIT_DDP: QUICKSTART_FIT,
    EXPORT: (),
    SAMPLE: ("--per-class", "2"),
    VALIDATE: ("--trainer.limit_val_batches=1",),
    TEST: ("--trainer.limit_test_batches=1",),
    PREDICT: ("--data.init_args.batch_size=4",),
    PREDICT_LABELS: ("--data.per_class=1",),
    SAMPLE_EVAL: ("--per-class", "1", "--batch-size", "10"),
    FIT_SKIP_NAN: QUICKSTART_FIT,
}

# commands the doc shows failing -> a fragment of their one `error:` line (exit status 2)
REFUSED = {
    RESUME_LONGER: "lr schedule spans 2 steps but this run has 1000",
    FIT_NAN: "became NaN/inf at step",
}

# commands a CPU test cannot run -> why
SKIPPED = {
    "tensorboard --logdir runs": "a server that runs until stopped",
    "tensorboard --logdir runs/quickstart": "a server that runs until stopped",
    "python scripts/sample_eval.py --ckpt runs/imagenet/ar_B/checkpoints/last.ckpt --out runs/eval/ar_B"
    " --per-class 50 --cfg-scale 2.0 --accelerator gpu --devices 8": "an ImageNet checkpoint on 8 GPUs",
    "python scripts/eval_fid.py --samples runs/eval/ar_B/samples.npz --ref VIRTUAL_imagenet256_labeled.npz": (
        "downloads the Inception weights and needs ADM's reference batch (tests/unit/test_fid.py covers it)"
    ),
    "torchrun --nnodes 2 --nproc_per_node 8 --node_rank $NODE_RANK --master_addr $MASTER_ADDR"
    f" --master_port 29500 -m mmar.cli {L_FSDP}": "two nodes of 8 GPUs",
    f"srun mmar {L_FSDP}": "a SLURM job on two nodes of 8 GPUs",
}

# files the doc promises after a command (globs under the working directory)
PROMISED = {
    FIT_VQ: [
        "runs/quickstart/vq/tokenizer/config.json",
        "runs/quickstart/vq/tokenizer/model.safetensors",
        "runs/quickstart/vq/lightning_logs/version_0/events.out.tfevents.*",
        "runs/quickstart/vq/lightning_logs/version_0/config.yaml",
    ],
    FIT_AR: [
        "runs/quickstart/ar/checkpoints/last.ckpt",
        "runs/quickstart/ar/lightning_logs/version_0/hparams.yaml",
    ],
    FIT_LONG: ["runs/long_ar/checkpoints/last.ckpt", "runs/long_ar/lightning_logs/version_0/config.yaml"],
    EXPORT: [
        "runs/quickstart/ar/export/config.json",
        "runs/quickstart/ar/export/model.safetensors",
        "runs/quickstart/ar/export/tokenizer/model.safetensors",
    ],
    SAMPLE: [f"runs/quickstart/samples/{name}" for name in ("grid.png", "samples.npz", "metrics.json")],
    PREDICT: ["runs/quickstart/ar/lightning_logs/version_*/predictions/000000.png"],
    PREDICT_LABELS: ["runs/quickstart/predict_labels/*.png"],
    SAMPLE_EVAL: ["runs/quickstart/eval/images/*.png", "runs/quickstart/eval/samples.npz"],
}


def doc_steps(text: str) -> list[tuple[str, str]]:
    """The doc's steps in order: ("command", line) for each command of a ```bash block, ("file", block)
    for each YAML block that names the file to save it as."""
    steps = []
    for match in re.finditer(r"```(bash|yaml)\n(.*?)```", text, re.S):
        kind, body = match.groups()
        if kind == "yaml":
            if re.match(r"# [\w./-]+\.yaml\b", body):
                steps.append(("file", body))
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())  # comments: `#` at a word's start
            if line:
                steps.append(("command", line))
    return steps


STEPS = doc_steps(DOC.read_text())
COMMAND_STEPS = [i for i, (kind, _) in enumerate(STEPS) if kind == "command"]
COMMANDS = [STEPS[i][1] for i in COMMAND_STEPS]


def test_every_command_is_run_refused_or_skipped():
    """A command the doc gains fails here until it is classified; a table entry the doc lost fails too."""
    tables = {**SPEED_OVERRIDES, **REFUSED}
    assert not set(SPEED_OVERRIDES) & set(REFUSED) and not set(tables) & set(SKIPPED)
    unclassified = [c for c in COMMANDS if c not in tables and c not in SKIPPED]
    assert not unclassified, f"add to SPEED_OVERRIDES, REFUSED or SKIPPED: {unclassified}"
    stale = [c for c in [*tables, *SKIPPED, *PROMISED] if c not in COMMANDS]
    assert not stale, f"no longer in docs/workflow.md: {stale}"
    assert all(c.startswith(("mmar ", "python scripts/")) for c in tables)


class Walk:
    """Runs the doc's steps in order, once, in one working directory; remembers how far it got."""

    def __init__(self, root: Path):
        self.root, self.done, self.failed = root, 0, None
        for name in ("configs", "scripts"):
            (root / name).symlink_to(REPO / name)
        bin_dir = str(Path(sys.executable).parent)  # the venv's `mmar` and `python`
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO),
            "PYTHONUNBUFFERED": "1",
        }

    def run_through(self, index: int) -> subprocess.CompletedProcess | None:
        """Run the steps not run yet up to and including `index`; the last one's result (None for a file
        or a skipped command). Stops at a failed step: the later ones depend on it."""
        result = None
        while self.done <= index:
            if self.failed is not None:
                pytest.fail(f"an earlier step failed: {STEPS[self.failed][1]}")
            result = self._step(*STEPS[self.done])
            self.done += 1
        return result

    def _step(self, kind: str, body: str) -> subprocess.CompletedProcess | None:
        if kind == "file":
            name = body.split()[1].rstrip(":")
            (self.root / name).write_text(body)
            return None
        if body in SKIPPED:
            return None
        argv = shlex.split(body) + list(SPEED_OVERRIDES.get(body, ()))
        result = subprocess.run(
            argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=600
        )
        expected = 2 if body in REFUSED else 0
        if result.returncode != expected:
            self.failed = self.done
        return result


@pytest.fixture(scope="module")
def walk(tmp_path_factory) -> Walk:
    return Walk(tmp_path_factory.mktemp("workflow"))


@pytest.mark.timeout(1800)  # a step alone first runs the steps before it
@pytest.mark.parametrize("index", COMMAND_STEPS, ids=lambda i: f"{i:02d}-{'-'.join(STEPS[i][1].split()[:2])}")
def test_command_runs_as_documented(walk, index):
    command = STEPS[index][1]
    if command in SKIPPED:
        walk.run_through(index)
        pytest.skip(SKIPPED[command])
    result = walk.run_through(index)
    tail = (result.stdout + result.stderr)[-3000:]
    if command in REFUSED:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2, tail
        assert len(errors) == 1 and REFUSED[command] in errors[0], tail
        assert "Traceback" not in result.stderr, tail
        return
    assert result.returncode == 0, f"{command}\n{tail}"
    for pattern in PROMISED.get(command, []):
        assert list(walk.root.glob(pattern)), f"{command} did not write {pattern}"
