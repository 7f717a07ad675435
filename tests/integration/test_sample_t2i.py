"""scripts/sample_t2i.py end to end on a tiny text-conditional generator (shapes captions, packaged MiniLM
encoder, an untrained 3-channel VQ): files, seeds, reproducibility, --score, and one-line errors."""

import json

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.timeout(300)

PROMPTS = ["a red circle on the left", "two blue squares in the middle"]
PER_PROMPT = 3


def fit_and_save(model, root, path):
    """Two CPU training steps on the shapes data, then a Lightning checkpoint at `path`."""
    from lightning.pytorch import Trainer

    from mmar.data import ShapesDataModule

    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(model, ShapesDataModule(image_size=32, batch_size=4, num_train=8, num_val=0))
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(debug_rgb_tokenizer, tmp_path_factory):
    """(text-conditional last.ckpt, class-conditional class.ckpt) over the random RGB debug VQ."""
    from mmar.lit import GeneratorModule

    root = tmp_path_factory.mktemp("t2i")
    text = GeneratorModule(
        tokenizer=debug_rgb_tokenizer,
        image_size=32,
        warmup_steps=1,
        condition={"class_path": "mmar.conditioning.TextCondition", "init_args": {"max_length": 16}},
    )
    classes = GeneratorModule(tokenizer=debug_rgb_tokenizer, image_size=32, num_classes=3, warmup_steps=1)
    return fit_and_save(text, root, root / "last.ckpt"), fit_and_save(classes, root, root / "class.ckpt")


@pytest.fixture(scope="module")
def sample_t2i(load_script):
    return load_script("sample_t2i")


def run_script(script, ckpt, out, *extra):
    script.main(["--ckpt", str(ckpt), "--out", str(out), "--device", "cpu", *extra])
    return json.loads((out / "metrics.json").read_text())


def test_samples_files_seeds_score_and_rerun(checkpoints, sample_t2i, tmp_path):
    ckpt, _ = checkpoints
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text(json.dumps({"caption": PROMPTS[1]}) + "\n\n")
    args = ["--prompt", PROMPTS[0], "--prompts", str(prompts_file), "--per-prompt", str(PER_PROMPT)]
    args += ["--batch-size", "4", "--seed", "7", "--cfg-scale", "2", "--score"]
    out = tmp_path / "a"
    metrics = run_script(sample_t2i, ckpt, out, *args)

    n = len(PROMPTS) * PER_PROMPT
    names = sorted(p.name for p in (out / "images").iterdir())
    assert names == [f"{i:04d}_{j:02d}.png" for i in range(len(PROMPTS)) for j in range(PER_PROMPT)]
    assert np.asarray(Image.open(out / "images" / "0001_02.png")).shape == (32, 32, 3)
    grid = Image.open(out / "grid.png")
    assert grid.height > len(PROMPTS) * 96 and grid.width >= PER_PROMPT * 96  # 32x32 enlarged 3 times
    with np.load(out / "samples.npz") as data:
        assert data["images"].shape == (n, 32, 32, 3) and data["images"].dtype == np.uint8
        np.testing.assert_array_equal(data["prompt_index"], [0, 0, 0, 1, 1, 1])
        assert list(data["prompts"]) == PROMPTS
        packed = data["images"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "images" / "0001_01.png")), packed[4])

    assert metrics["prompts"] == PROMPTS and metrics["num_images"] == n
    assert metrics["prompt_index"] == [0, 0, 0, 1, 1, 1]
    assert metrics["seeds"] == [7, 7, 7, 7, 8, 8]  # image k: seed + k // batch_size
    assert metrics["sampler"]["cfg_scale"] == 2 and metrics["sampler"]["seed"] == 7
    assert metrics["checkpoint"] == str(ckpt) and metrics["sampling_seconds"] > 0
    scores = metrics["compositional"]
    assert scores["num_images"] == n and scores["num_single_object"] == 3 and scores["num_counting"] == 3
    assert all(
        0 <= scores[task] <= 1 for task in ("single_object", "colors", "position", "counting", "exact")
    )

    again = tmp_path / "b"  # the same seed and batching: the same images
    run_script(sample_t2i, ckpt, again, *args[:-1])
    with np.load(again / "samples.npz") as data:
        np.testing.assert_array_equal(data["images"], packed)


def error_of(script, capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_input_exits_with_one_line(checkpoints, sample_t2i, tmp_path, capsys):
    ckpt, class_ckpt = checkpoints
    base = ["--ckpt", str(ckpt), "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert "empty prompt" in error_of(sample_t2i, capsys, [*base, "--prompt", ""])
    assert "empty prompt" in error_of(sample_t2i, capsys, [*base, "--prompt", "a", "--prompt", "  \t"])
    assert "no prompts" in error_of(sample_t2i, capsys, base)
    missing = tmp_path / "missing.txt"
    assert "missing.txt" in error_of(sample_t2i, capsys, [*base, "--prompts", str(missing)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a red circle on the left"}\n\n{"prompt": oops}\n')
    assert "line 3" in error_of(sample_t2i, capsys, [*base, "--prompts", str(bad)])
    bad.write_text('{"prompt": "a red circle on the left"}\n{"image": "x.png"}\n')
    assert "line 2" in error_of(sample_t2i, capsys, [*base, "--prompts", str(bad)])
    bad.write_text('{"text": " "}\n')
    assert "line 1" in error_of(sample_t2i, capsys, [*base, "--prompts", str(bad)])
    assert "--per-prompt" in error_of(sample_t2i, capsys, [*base, "--prompt", "a", "--per-prompt", "0"])
    assert "--benchmark" in error_of(sample_t2i, capsys, [*base, "--prompt", "a", "--benchmark", "seen"])
    err = error_of(sample_t2i, capsys, [*base, "--prompt", PROMPTS[0], "--prompt", "a cat", "--score"])
    assert "'a cat'" in err and "--score needs shapes captions" in err
    class_args = ["--ckpt", str(class_ckpt), "--out", str(tmp_path / "out"), "--device", "cpu"]
    err = error_of(sample_t2i, capsys, [*class_args, "--prompt", PROMPTS[0]])
    assert "class-conditional" in err and "scripts/sample.py" in err
    assert not (tmp_path / "out").exists()


def test_benchmark_prompts_are_scored_on_their_tasks(checkpoints, sample_t2i, tmp_path):
    from mmar.eval.compositional import TASKS, benchmark_prompts

    metrics = run_script(
        sample_t2i, checkpoints[0], tmp_path, "--benchmark", "held_out", "--per-prompt", "1", "--score"
    )
    prompts = benchmark_prompts("held_out")
    assert metrics["prompts"] == [p.caption for p in prompts] and metrics["benchmark"] == "held_out"
    scores = metrics["compositional"]
    assert scores["num_images"] == len(prompts) and all(0 <= scores[task] <= 1 for task in TASKS)
    assert scores["num_single_object"] == sum(p.task == "single_object" for p in prompts)
