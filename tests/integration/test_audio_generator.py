"""Audio generation end to end: residual codes of an audio codec through GeneratorModule in every code
pattern (stack, flatten, delay) with the units that model 1D and (frame, level) grids, KV-cached decoding
equal to the full forward, continuation that keeps the given samples bit for bit, and the one-line errors
of wrong configurations."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmar.code_patterns import EMPTY
from mmar.data import EmbeddedNotesDataModule
from mmar.errors import ConfigError
from mmar.lit import GeneratorModule
from mmar.sampling import Sampler

LEVELS, FRAMES = 4, 25  # the debug codec: 4 levels of 16 codes, 25 frames for 0.25 s at 8 kHz
SETUPS = {  # name -> (unit, code pattern, unit kwargs, trunk passes per clip)
    "delay": (
        "next_token",
        "delay",
        {"head": "parallel", "head_kwargs": {"levels": LEVELS}},
        FRAMES + LEVELS - 1,
    ),
    "flatten": ("next_token", "flatten", {}, FRAMES * LEVELS),
    "depth": ("next_token", "stack", {"head": "channel_ar", "head_kwargs": {"channels": LEVELS}}, FRAMES),
    "frame_blocks": ("next_block", "flatten", {"block": "row"}, FRAMES),
    "span_blocks": ("next_block", "flatten", {"block": [5, LEVELS]}, 5),
    "masked": ("masked_ar", "flatten", {"head": "categorical", "steps": 4}, 4),
}


def notes(n: int = 4) -> dict:
    data = EmbeddedNotesDataModule(sample_rate=8000, duration=0.25, batch_size=n, num_clips_train=n)
    data.setup()
    return next(iter(data.train_dataloader()))


def generator(codec: str, name: str, **kwargs) -> GeneratorModule:
    torch.manual_seed(0)
    unit, pattern, unit_kwargs, _ = SETUPS[name]
    return GeneratorModule(
        codec,
        unit=unit,
        unit_kwargs=unit_kwargs,
        code_pattern=pattern,
        duration=0.25,
        num_classes=12,
        **kwargs,
    )


@pytest.mark.parametrize("name", list(SETUPS))
def test_every_pattern_trains_and_samples_audio(debug_audio_codec, name):
    model = generator(debug_audio_codec, name)
    batch = notes()
    losses = model.step_losses(batch)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert any(p.grad is not None for p in model.trunk.parameters())
    codes = model.generate_tokens(torch.tensor([0, 5]), Sampler(cfg_scale=2.0, seed=0))
    assert codes.shape == (2, FRAMES, LEVELS) and codes.min() >= 0 and codes.max() < 16
    audio = model.generate(torch.tensor([0, 5]), Sampler(seed=0))
    assert audio.shape == (2, 1, 2000)
    assert model.unit.num_steps(model.grid) == SETUPS[name][3]


def test_delay_pattern_never_samples_its_empty_cells(debug_audio_codec):
    model = generator(debug_audio_codec, "delay")
    fixed = model.pattern.fixed(FRAMES)
    cond = model.conditioning.for_sampling(torch.tensor([1, 2]), False)
    tokens = model.unit.generate(model.trunk, cond.tokens, model.grid, Sampler(seed=0), fixed=fixed)
    assert torch.equal(tokens == EMPTY, fixed[1].expand_as(tokens))  # exactly the corners, nothing else
    # training sees the same layout: the empty cells are inputs, never targets
    layout = model.tokens_of(notes(2))
    assert torch.equal(layout == EMPTY, fixed[1].expand_as(layout))


@pytest.mark.parametrize("name", ["delay", "flatten"])
def test_kv_cached_decoding_equals_the_full_forward(debug_audio_codec, name):
    model = generator(debug_audio_codec, name)
    sampler = Sampler(temperature=1e-4, seed=0)  # near-greedy: equal logits give equal tokens
    cached = model.generate_tokens(torch.tensor([3, 7]), sampler)
    full = model.generate_tokens(torch.tensor([3, 7]), sampler, use_cache=False)
    assert torch.equal(cached, full)


@pytest.mark.parametrize("name", ["delay", "flatten", "frame_blocks"])
def test_continuation_keeps_the_given_samples_bit_for_bit(debug_audio_codec, name):
    model = generator(debug_audio_codec, name)
    clips = notes(2)["audio"]
    given = 10  # latent frames: 10 * hop 80 = 800 samples
    out = model.continue_clips(clips, torch.tensor([0, 1]), given, Sampler(seed=0))
    assert out.shape == clips.shape
    assert torch.equal(out[:, :, :800], clips[:, :, :800])
    # the given codes are the generated codes' first frames
    codes = model.tokenizer.encode(clips)
    generated = model.generate_tokens(torch.tensor([0, 1]), Sampler(seed=0), prefix=codes[:, :given])
    assert torch.equal(generated[:, :given], codes[:, :given])


def test_audio_configuration_errors(debug_audio_codec, debug_tokenizer):
    with pytest.raises(ConfigError, match=r"set model\.duration"):
        GeneratorModule(debug_audio_codec)
    with pytest.raises(ConfigError, match="drop it"):
        GeneratorModule(debug_tokenizer, duration=0.5)
    with pytest.raises(ConfigError, match="whole number of samples"):
        GeneratorModule(debug_audio_codec, duration=0.00001)
    with pytest.raises(ConfigError, match="multiple of the codec's hop"):
        GeneratorModule(debug_audio_codec, code_pattern="flatten", duration=0.255)
    with pytest.raises(ConfigError, match="only the next_token unit"):
        GeneratorModule(debug_audio_codec, unit="next_block", code_pattern="delay", duration=0.25)
    with pytest.raises(ConfigError, match="choose a matching head"):
        GeneratorModule(debug_audio_codec, code_pattern="delay", duration=0.25)
    model = generator(debug_audio_codec, "flatten")
    with pytest.raises(ConfigError, match=r"model\.duration"):
        model.step_losses({"audio": torch.zeros(2, 1, 1600), "label": torch.zeros(2, dtype=torch.long)})
    with pytest.raises(ConfigError, match="reads audio"):
        model.step_losses({"image": torch.zeros(2, 1, 16, 16), "label": torch.zeros(2, dtype=torch.long)})


@pytest.fixture(scope="module")
def audio_generator(debug_audio_codec, tmp_path_factory):
    """(model, last.ckpt): the delay-pattern generator after 3 training steps on the embedded notes."""
    from conftest import fit_three_steps

    model = generator(debug_audio_codec, "delay", warmup_steps=1)
    data = EmbeddedNotesDataModule(
        sample_rate=8000, duration=0.25, batch_size=4, num_clips_train=16, num_clips_val=4
    )
    return fit_three_steps(model, data, tmp_path_factory.mktemp("audio_gen"))


def run_script(*args: str) -> None:
    subprocess.run([sys.executable, "scripts/sample_audio.py", *args], check=True, capture_output=True)


def test_sample_audio_writes_wavs_spectrograms_and_samples(audio_generator, tmp_path):
    _, ckpt = audio_generator
    out = tmp_path / "class"
    run_script("--ckpt", str(ckpt), "--out", str(out), "--classes", "3", "7", "--per-class", "2")
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_clips"] == 4 and metrics["trunk_passes_per_clip"] == FRAMES + LEVELS - 1
    assert metrics["clip_shape"] == [1, 2000] and metrics["code_pattern"] == "delay"
    with np.load(out / "samples.npz") as data:
        assert data["audio"].shape == (4, 1, 2000) and data["sample_rate"] == 8000
        np.testing.assert_array_equal(data["labels"], [3, 3, 7, 7])
        written, rate = sf.read(out / "clips" / "0.wav", always_2d=True)
        assert rate == 8000 and written.shape == (2000, 1)
        np.testing.assert_allclose(written[:, 0], data["audio"][0, 0], atol=1 / 32767 + 1e-6)  # 16-bit PCM
    with Image.open(out / "clips" / "3.png") as png:
        assert png.mode == "RGB" and png.height > 0


def test_sample_audio_continues_notes_and_files(audio_generator, tmp_path):
    _, ckpt = audio_generator
    out = tmp_path / "notes"
    run_script("--ckpt", str(ckpt), "--out", str(out), "--continue-from", "notes", "--num-clips", "3")
    data = EmbeddedNotesDataModule(sample_rate=8000, duration=0.25, num_clips_val=3)
    data.setup()
    given = torch.stack([data.val_dataset[i]["audio"] for i in range(3)])
    with np.load(out / "samples.npz") as samples:  # 10 given latent frames of 80 samples kept exactly
        np.testing.assert_array_equal(samples["audio"][:, :, :800], given[:, :, :800].numpy())
    folder = tmp_path / "wavs"
    folder.mkdir()
    sf.write(folder / "a.wav", np.random.default_rng(0).uniform(-0.5, 0.5, (4000, 2)), 16000)  # resampled
    run_script("--ckpt", str(ckpt), "--out", str(tmp_path / "files"), "--continue-from", str(folder))
    metrics = json.loads((tmp_path / "files" / "metrics.json").read_text())
    assert metrics["mode"] == "continuation" and metrics["given_samples"] == 800
    bad = subprocess.run(
        [sys.executable, "scripts/sample_audio.py", "--ckpt", str(ckpt), "--per-class", "0"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "--per-class must be >= 1" in bad.stderr


def test_masked_ar_with_a_flow_head_generates_continuous_audio_latents(debug_audio_kl):
    torch.manual_seed(0)
    model = GeneratorModule(
        debug_audio_kl,
        unit="masked_ar",
        unit_kwargs={"steps": 4, "head_width": 16, "head_depth": 1, "head_steps": 3},
        duration=0.25,
        num_classes=12,
    )
    assert model.grid == (FRAMES,) and model.tokenizer.kind == "continuous"
    losses = model.step_losses(notes())
    assert torch.isfinite(losses["loss"])
    latents = model.generate_tokens(torch.tensor([0, 5]), Sampler(cfg_scale=2.0, seed=0))
    assert latents.shape == (2, FRAMES, 4)
    clips = notes(2)["audio"]
    out = model.continue_clips(clips, torch.tensor([0, 1]), 5, Sampler(seed=0))
    assert out.shape == clips.shape and torch.equal(out[:, :, :400], clips[:, :, :400])


def test_audio_at_another_sample_rate_is_refused_before_training(debug_audio_codec, tmp_path):
    from lightning.pytorch import Trainer

    model = generator(debug_audio_codec, "flatten")
    data = EmbeddedNotesDataModule(sample_rate=16000, duration=0.125, batch_size=2, num_clips_train=2)
    trainer = Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match=r"set data\.init_args\.sample_rate to 8000"):
        trainer.fit(model, data)
