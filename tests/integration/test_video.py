"""Video generation end to end: video batches and cached video tokens through GeneratorModule for every
unit that models 3D grids (3D RoPE, 3D masks), continuation that keeps the given frames bit for bit,
scripts/sample_video.py (GIF, MP4, strip, samples.npz), FVD on what it writes, the multi-device route
of scripts/sample_eval.py, and the one-line errors of wrong shapes."""

import functools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmar.data import MovingDigitsDataModule, TokenCacheDataModule
from mmar.data.token_cache import cache_tokens, load_token_cache, ordered_dataset
from mmar.errors import ConfigError
from mmar.lit import GeneratorModule
from mmar.sampling import Sampler
from mmar.units import grid_positions
from mmar.video_io import read_video, write_gif
from tokenizers_visual import load_tokenizer

GRID = (3, 4, 4)  # the debug video tokenizer on 16x16 clips of 9 frames
UNITS = {  # unit kwargs -> trunk passes per clip
    "next_token": ({}, 48),
    "next_block": ({"block": "frame"}, 3),
    "next_block_boxes": ({"block": [3, 2, 2]}, 4),
    "next_neighbor": ({}, 3 + 4 + 4 - 2),
    "masked_ar": ({"head": "categorical", "steps": 6}, 6),
}


def moving_digits(n: int = 4, **kwargs) -> MovingDigitsDataModule:
    data = MovingDigitsDataModule(
        image_size=16,
        digit_size=8,
        batch_size=n,
        num_clips_train=n,
        num_clips_val=n,
        labels="digit_direction",
    )
    data.setup()
    return data


def video_batch(n: int = 4) -> dict:
    return next(iter(moving_digits(n).train_dataloader()))


def generator(tokenizer: str, name: str = "next_token", **kwargs) -> GeneratorModule:
    torch.manual_seed(0)
    unit = name.removesuffix("_boxes")
    return GeneratorModule(
        tokenizer,
        unit=unit,
        unit_kwargs=UNITS[name][0],
        image_size=16,
        num_frames=9,
        num_classes=80,
        **kwargs,
    )


@pytest.mark.parametrize("name", sorted(UNITS))
def test_every_3d_unit_trains_on_video_batches_and_samples_clips(debug_video_tokenizer, name):
    model = generator(debug_video_tokenizer, name)
    assert model.grid == GRID and model.input_shape == (1, 9, 16, 16)
    losses = model.step_losses(video_batch())
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.trunk.parameters())
    batch = model.unit.prepare(
        model.tokens_of(video_batch()), model.conditioning(torch.tensor([0, 1, 2, 3])).tokens
    )
    positions = batch.positions.reshape(-1, 3)  # 3D RoPE: (t, h, w) cells of the grid, over several frames
    assert positions.min() >= 0 and (positions.max(0).values <= torch.tensor(GRID) - 1).all()
    assert positions[:, 0].max() >= 1
    model.eval()
    clips = model.generate(torch.tensor([3, 17]), Sampler(seed=0, cfg_scale=2.0))
    assert clips.shape == (2, 1, 9, 16, 16) and torch.isfinite(clips).all()
    assert model.unit.num_steps(model.grid) == UNITS[name][1]


@pytest.mark.parametrize("name", ["next_token", "next_neighbor"])
def test_3d_masks_hide_what_a_token_may_not_see(debug_video_tokenizer, name):
    """Changing the tokens of the last latent frame leaves the hidden state of every token that may not
    attend to them unchanged: raster order for next-token, t + h + w levels for next-neighbor."""
    model = generator(debug_video_tokenizer, name).eval()
    tokens = model.tokens_of(video_batch(2))
    changed = tokens.clone()
    changed[:, -1] = (changed[:, -1] + 1) % model.tokenizer.vocab_size
    cond = model.conditioning(torch.tensor([5, 6])).tokens
    hidden = [
        model.trunk(b.inputs, b.positions, b.mask)
        for b in (model.unit.prepare(t, cond) for t in (tokens, changed))
    ]
    coords = grid_positions(GRID)
    if name == "next_token":  # inputs [cond, t_0 .. t_{N-2}]: position 1 + i holds token i
        blind = torch.cat([torch.ones(1, dtype=torch.bool), coords[:-1, 0] < GRID[0] - 1])
    else:  # inputs [cond, t_0 .. t_{N-1}]: token p sees the levels up to its own
        first_changed = GRID[0] - 1  # the lowest level of a last-frame cell
        blind = torch.cat([torch.ones(1, dtype=torch.bool), coords.sum(-1) < first_changed])
    torch.testing.assert_close(hidden[0][:, blind], hidden[1][:, blind], rtol=0, atol=1e-6)
    assert not torch.allclose(hidden[0][:, ~blind], hidden[1][:, ~blind])


def test_cached_video_tokens_are_the_tokenizers_and_train_the_generator(debug_video_tokenizer, tmp_path):
    dataset = ordered_dataset("moving_digits", image_size=16, num_items=6, labels="digit_direction")
    loader = torch.utils.data.DataLoader(dataset, batch_size=4)
    tokenizer = load_tokenizer(debug_video_tokenizer)
    meta = cache_tokens(tokenizer, loader, tmp_path, debug_video_tokenizer, progress=False)
    assert meta["grid"] == list(GRID) and meta["image_shape"] == [1, 9, 16, 16] and meta["num_items"] == 6
    stored, _ = load_token_cache(tmp_path)
    clips = torch.stack([dataset[i]["video"] for i in range(6)])
    assert torch.equal(stored["tokens"], tokenizer.encode(clips))
    assert torch.equal(stored["labels"], torch.stack([dataset[i]["label"] for i in range(6)]))
    assert stored["labels"].max() < 80
    data = TokenCacheDataModule(str(tmp_path), batch_size=6)
    data.setup()
    batch = next(iter(data.train_dataloader()))
    model = generator(debug_video_tokenizer)
    assert torch.isfinite(model.step_losses(batch)["loss"])


@pytest.mark.parametrize("given", [1, 2])
def test_continue_clips_keeps_the_given_frames_bit_for_bit(debug_video_tokenizer, given):
    model = generator(debug_video_tokenizer).eval()
    clips = video_batch(3)["video"]
    out = model.continue_clips(clips, torch.tensor([1, 2, 3]), given, Sampler(seed=0))
    kept = model.tokenizer.frames_of(given)  # 1, then 5 frames
    assert out.shape == clips.shape and kept == 1 + 4 * (given - 1)
    assert torch.equal(out[:, :, :kept], clips[:, :, :kept])
    # a causal tokenizer reads the kept frames back as the given latent frames
    assert torch.equal(model.tokenizer.encode(out)[:, :given], model.tokenizer.encode(clips)[:, :given])


def test_wrong_shapes_are_one_line_errors(
    debug_video_tokenizer, debug_tokenizer, debug_generator, monkeypatch
):
    with pytest.raises(ConfigError, match="image tokenizer"):
        GeneratorModule(debug_tokenizer, image_size=32, num_frames=9)
    with pytest.raises(ConfigError, match=r"set model\.num_frames"):
        GeneratorModule(debug_video_tokenizer, image_size=16)
    with pytest.raises(ConfigError, match="multiple of 4"):
        GeneratorModule(debug_video_tokenizer, image_size=16, num_frames=8)
    video_model = generator(debug_video_tokenizer)
    with pytest.raises(ConfigError, match="reads videos"):
        video_model.step_losses(
            {"image": torch.zeros(2, 1, 16, 16), "label": torch.zeros(2, dtype=torch.long)}
        )
    with pytest.raises(ConfigError, match="reads images"):
        debug_generator[0].step_losses(video_batch(2))
    with pytest.raises(ConfigError, match=r"model.image_size \(and model.num_frames\)"):
        video_model.step_losses(
            {"video": torch.zeros(2, 1, 5, 16, 16), "label": torch.zeros(2, dtype=torch.long)}
        )
    clips = video_batch(2)["video"]
    for given in (0, 3):
        with pytest.raises(ConfigError, match="latent frames must lie"):
            video_model.continue_clips(clips, torch.tensor([0, 1]), given)
    with pytest.raises(ConfigError, match="video or audio generator"):
        debug_generator[0].continue_clips(clips, torch.tensor([0, 1]))
    monkeypatch.setattr(type(video_model.unit), "supports_prefix", False)
    with pytest.raises(ConfigError, match="cannot continue a prefix"):
        video_model.generate_tokens(torch.tensor([0]), prefix=torch.zeros(1, 1, 4, 4, dtype=torch.long))


def run_script(name: str, *args: str) -> None:
    subprocess.run(
        [sys.executable, f"scripts/{name}.py", *args], check=True, timeout=600, capture_output=True
    )


def test_sample_video_writes_clips_and_eval_fvd_reads_them(debug_video_generator, detector_path, tmp_path):
    _, ckpt = debug_video_generator
    out = tmp_path / "class"
    run_script(
        "sample_video",
        "--ckpt",
        str(ckpt),
        "--out",
        str(out),
        "--classes",
        "3",
        "17",
        "--per-class",
        "2",
        "--cfg-scale",
        "2.0",
        "--write-clips",
        "3",
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["num_clips"] == 4
        and metrics["trunk_passes_per_clip"] == 48
        and metrics["clip_shape"] == [1, 9, 16, 16]
    )
    with np.load(out / "samples.npz") as data:
        videos = data["videos"]
        assert videos.shape == (4, 9, 16, 16, 1) and videos.dtype == np.uint8
        np.testing.assert_array_equal(data["labels"], [3, 3, 17, 17])
    assert sorted(p.name for p in (out / "clips").iterdir()) == [
        "0.gif",
        "0.mp4",
        "1.gif",
        "1.mp4",
        "2.gif",
        "2.mp4",
    ]
    np.testing.assert_array_equal(read_video(out / "clips" / "1.gif", channels=1), videos[1])  # GIF: exact
    assert np.abs(read_video(out / "clips" / "1.mp4", channels=1).astype(int) - videos[1]).mean() < 8
    assert (out / "strip.png").is_file()

    fvd_json = tmp_path / "fvd.json"
    run_script(
        "eval_fvd",
        "--samples",
        str(out / "samples.npz"),
        "--ref",
        str(out / "samples.npz"),
        "--i3d-weights",
        detector_path,
        "--frames",
        "9",
        "--out",
        str(fvd_json),
        "--device",
        "cpu",
    )
    result = json.loads(fvd_json.read_text())
    assert result["num_samples"] == 4 and abs(result["fvd"]) < 1e-3  # a set against itself


def test_sample_video_continues_clips_from_the_data_or_a_file(debug_video_generator, tmp_path):
    _, ckpt = debug_video_generator
    out = tmp_path / "continued"
    run_script(
        "sample_video",
        "--ckpt",
        str(ckpt),
        "--out",
        str(out),
        "--continue-from",
        "moving_digits",
        "--num-clips",
        "3",
        "--given-frames",
        "1",
        "--write-clips",
        "0",
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mode"] == "continuation" and metrics["trunk_passes_per_clip"] == 48 - 16
    data = MovingDigitsDataModule(image_size=16, num_frames=9, num_clips_val=3, labels="digit_direction")
    data.setup()
    real = torch.stack([data.val_dataset[i]["video"] for i in range(3)])
    real_uint8 = ((real + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    with np.load(out / "samples.npz") as packed:
        np.testing.assert_array_equal(packed["videos"][:, :1], real_uint8[:, :1])  # the given frame, exactly
        np.testing.assert_array_equal(packed["labels"], [int(data.val_dataset[i]["label"]) for i in range(3)])

    clip = tmp_path / "clip.gif"
    write_gif(clip, real_uint8[0])
    out = tmp_path / "from_file"
    run_script(
        "sample_video",
        "--ckpt",
        str(ckpt),
        "--out",
        str(out),
        "--continue-from",
        str(clip),
        "--classes",
        "5",
        "--given-frames",
        "2",
        "--write-clips",
        "0",
    )
    with np.load(out / "samples.npz") as packed:
        np.testing.assert_array_equal(packed["videos"][0, :5], real_uint8[0, :5])
        np.testing.assert_array_equal(packed["labels"], [5])


def test_sample_video_errors(debug_video_generator, debug_generator, tmp_path, load_script):
    script = load_script("sample_video")
    _, ckpt = debug_video_generator
    for bad in (["--classes", "80"], ["--per-class", "0"], ["--continue-from", str(tmp_path / "none.gif")]):
        with pytest.raises(SystemExit):
            script.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "x"), *bad])
    with pytest.raises(SystemExit):
        script.main(["--ckpt", str(debug_generator[1]), "--out", str(tmp_path / "y")])
    assert not (tmp_path / "x" / "samples.npz").exists()


def test_embedded_video_metrics_of_the_samples(debug_video_generator, load_script, monkeypatch, tmp_path):
    """The script's scoring path with a small classifier (the real one is trained in test_video_metrics)."""
    import mmar.eval.video as video_metrics

    small = {"num_clips": 1024, "num_val_clips": 128, "epochs": 4, "batch_size": 32}
    monkeypatch.setattr(
        video_metrics,
        "MovingDigitsMetrics",
        functools.partial(
            video_metrics.MovingDigitsMetrics, cache_dir=tmp_path, train_options=small, num_reference=64
        ),
    )
    script = load_script("sample_video")
    model, _ = debug_video_generator
    clips = moving_digits(8).val_dataset
    videos = torch.stack([clips[i]["video"] for i in range(8)])
    labels = torch.stack([clips[i]["label"] for i in range(8)])
    metrics = script.embedded_metrics(model, videos, labels, None)  # real clips score as their labels
    assert metrics["video_class_accuracy"] > 0.5 and metrics["video_motion_accuracy"] > 0.5
    assert metrics["num_samples"] == 8


def test_sample_eval_packs_clips_for_fvd(debug_video_generator, tmp_path):
    _, ckpt = debug_video_generator
    out = tmp_path / "eval"
    run_script(
        "sample_eval",
        "--ckpt",
        str(ckpt),
        "--out",
        str(out),
        "--per-class",
        "1",
        "--batch-size",
        "40",
        "--accelerator",
        "cpu",
        "--devices",
        "1",
    )
    with np.load(out / "samples.npz") as data:
        assert data["arr_0"].shape == (80, 9, 16, 16, 1)
        np.testing.assert_array_equal(data["arr_1"], np.arange(80))
    assert len(list((out / "images").iterdir())) == 80  # one strip PNG a clip


def test_moving_digits_captions_condition_a_text_conditional_video_generator(
    debug_video_tokenizer, load_script
):
    condition = {
        "class_path": "mmar.conditioning.TextCondition",
        "init_args": {"encoder": "all-MiniLM-L6-v2"},
    }
    model = generator(debug_video_tokenizer, condition=condition)
    batch = video_batch(2)
    assert batch["caption"][0].startswith("a ") and " moving " in batch["caption"][0]
    assert torch.isfinite(model.step_losses(batch)["loss"])
    clips = model.eval().generate(["a 3 moving left"], Sampler(seed=0, cfg_scale=2.0))
    assert clips.shape == (1, 1, 9, 16, 16)
    # the sampling scripts ask a text-conditional model for the classes' captions
    assert load_script("sample_video").conditions_of(model, torch.tensor([13, 60])) == [
        "a 3 moving up-right",
        "a 0 moving left",
    ]
