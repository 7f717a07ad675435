"""Audio data: the embedded notes (pitch maths, determinism, splits, held-out combos) and audio folders
(resampling, channels, loudness, crops, skipped files, the stable split, manifests, batches, errors)."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from torch.utils.data import DataLoader

from mmar.data import (
    AudioFolderDataModule,
    AudioFolderDataset,
    EmbeddedNotesDataModule,
    EmbeddedNotesDataset,
    collate_skip_none,
)
from mmar.data.audio import PITCH_CLASSES, TIMBRES, caption, held_out, midi_frequency, rms_dbfs
from mmar.errors import ConfigError

SR = 16000  # output sample rate of the folder tests
CLIP = {"sample_rate": SR, "duration": 0.5}  # N = 8000


def peak_hz(audio: np.ndarray, sample_rate: int) -> float:
    """Frequency of the largest Hann-windowed spectrum bin of a 1-D signal."""
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / sample_rate)[spectrum.argmax()])


def sine(freq: float, rate: int, seconds: float, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """float32 [frames, channels]: a sine, channel c scaled by 1 / (c + 1) so channels differ."""
    wave = amp * np.sin(2 * np.pi * freq * np.arange(round(seconds * rate)) / rate)
    return np.stack([wave / (c + 1) for c in range(channels)], axis=1).astype(np.float32)


@pytest.fixture
def folder(tmp_path):
    """'low': 440 Hz WAV (8 kHz, mono), 440 Hz FLAC (22.05 kHz, stereo), a corrupt WAV (random bytes);
    'high': 1000 Hz OGG (22.05 kHz, mono), a 0.1 s (too short) WAV, a text file."""
    root = tmp_path / "sounds"
    (root / "low").mkdir(parents=True)
    (root / "high" / "nested").mkdir(parents=True)
    sf.write(root / "low" / "a0.wav", sine(440, 8000, 1.0), 8000)
    sf.write(root / "low" / "a1.flac", sine(440, 22050, 0.8, channels=2), 22050)
    (root / "low" / "corrupt.wav").write_bytes(np.random.default_rng(0).bytes(2000))
    sf.write(root / "high" / "nested" / "b0.ogg", sine(1000, 22050, 1.0), 22050)
    sf.write(root / "high" / "short.wav", sine(1000, SR, 0.1), SR)
    (root / "high" / "notes.txt").write_text("not audio")
    return root


# ---- embedded notes ----


def test_notes_items_are_deterministic_labelled_clips():
    data = EmbeddedNotesDataset(16, seed=3)
    item = data[0]
    assert item["audio"].shape == (1, 8000) and item["audio"].dtype == torch.float32
    assert item["label"].dtype == torch.long
    assert torch.equal(item["audio"], EmbeddedNotesDataset(16, seed=3)[0]["audio"])  # a pure function
    val = EmbeddedNotesDataset(16, seed=3, split="val")
    other_seed = EmbeddedNotesDataset(16, seed=4)
    for i in range(16):
        audio, label, midi = data[i]["audio"], int(data[i]["label"]), int(data[i]["midi"])
        assert audio.min() >= -1 and audio.max() <= 1 and audio.abs().max() > 0.05
        assert 0 <= label < len(PITCH_CLASSES) and midi % 12 == label and 48 <= midi <= 83
        assert data[i]["caption"] == caption(label, int(data[i]["timbre"]))
        assert not torch.equal(audio, val[i]["audio"]) and not torch.equal(audio, other_seed[i]["audio"])
    assert caption(1, 3) == "a C# note played by a plucked string"
    assert caption(9, 0) == "an A note played by a sine wave"
    with pytest.raises(IndexError):
        data[16]


@pytest.mark.parametrize(("sample_rate", "duration"), [(16000, 0.5), (8000, 0.2)])
def test_notes_spectral_peak_is_the_note_frequency(sample_rate, duration):
    data = EmbeddedNotesDataset(64, sample_rate=sample_rate, duration=duration, seed=0)
    timbres = set()
    for i in range(len(data)):
        item = data[i]
        freq = midi_frequency(int(item["midi"]))
        assert abs(peak_hz(item["audio"][0].numpy(), sample_rate) - freq) <= sample_rate / data.num_samples
        timbres.add(int(item["timbre"]))
    assert timbres == set(range(len(TIMBRES)))
    assert midi_frequency(69) == 440.0 and midi_frequency(60) == pytest.approx(261.6256, abs=1e-3)


def test_notes_onset_is_silent_before_the_note_starts():
    item = EmbeddedNotesDataset(8, seed=0)[5]
    audio = item["audio"][0]
    first = int((audio.abs() > 1e-6).nonzero()[0])
    assert 0 <= first <= 0.1 * 16000 + 1


def test_held_out_combos_only_in_val():
    pairs = {
        split: {
            ((int(it["midi"]) - 48) // 12, int(it["timbre"]))
            for it in EmbeddedNotesDataset(120, duration=0.05, split=split, held_out_combos=True)
        }
        for split in ("train", "val")
    }
    assert all(held_out(*p) for p in pairs["val"]) and not any(held_out(*p) for p in pairs["train"])
    assert {o for o, _ in pairs["train"]} == {0, 1, 2} and {t for _, t in pairs["train"]} == {0, 1, 2, 3}


def test_notes_datamodule_batches():
    dm = EmbeddedNotesDataModule(duration=0.1, batch_size=4, num_clips_train=8, num_clips_val=4)
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape == (4, 1, 1600) == (4, *dm.audio_shape)
    assert batch["label"].shape == (4,) and len(batch["caption"]) == 4 and dm.num_classes == 12
    assert next(iter(dm.val_dataloader()))["audio"].shape == (4, 1, 1600)
    for bad in ({"duration": 0}, {"sample_rate": -1}, {"num_clips_train": 0}):
        with pytest.raises(ConfigError):
            EmbeddedNotesDataModule(**bad)


# ---- audio folders ----


def test_folder_classes_and_skipped_files(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="mmar.data.audio"):
        data = AudioFolderDataset(folder, **CLIP)
    assert data.classes == ["high", "low"]
    assert [(p.split("/")[-1], label) for p, _, _, label, _ in data.files] == [
        ("b0.ogg", 0),
        ("a0.wav", 1),
        ("a1.flac", 1),
    ]
    assert data.num_skipped == 2 and len(data) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipping 2 of 5" in warnings[0] and "low/corrupt.wav (unreadable" in warnings[0]
    assert "high/short.wav (too short" in warnings[0]
    with pytest.raises(ConfigError, match=r"short\.wav. is too short"):
        AudioFolderDataset(folder, strict=True, **CLIP)


def test_resampling_keeps_frequency_length_and_level(folder):
    data = AudioFolderDataset(folder, target_dbfs=None, **CLIP)
    for i, freq in enumerate([1000, 440, 440]):
        audio = data[i]["audio"]
        assert audio.shape == (1, 8000) and audio.dtype == torch.float32
        assert abs(peak_hz(audio[0].numpy(), SR) - freq) <= SR / 8000
    # an amplitude-0.5 sine is 20 log10(0.5 / sqrt 2) = -9.03 dBFS; the stereo FLAC averages 1 and 1/2
    assert rms_dbfs(data[1]["audio"].numpy()) == pytest.approx(-9.03, abs=0.1)
    assert rms_dbfs(data[2]["audio"].numpy()) == pytest.approx(-9.03 + 20 * np.log10(0.75), abs=0.1)


@pytest.mark.parametrize("rate", [8000, 22050, 48000])
def test_resampled_crop_matches_resampling_a_long_stretch(tmp_path, rate):
    """The crop is resampled with a margin a whole number of output samples long: no edge ringing, no
    sub-sample shift against resampling a long stretch of the file that starts on the same grid."""
    noise = (np.random.default_rng(0).standard_normal((rate, 1)) * 0.1).astype(np.float32)  # 1 s
    sf.write(tmp_path / "noise.flac", noise, rate, subtype="PCM_24")
    audio = AudioFolderDataset(tmp_path, target_dbfs=None, **CLIP)[0]["audio"][0].numpy()
    source = sf.read(tmp_path / "noise.flac", dtype="float32", always_2d=True)[0]
    start = (rate - math.ceil(0.5 * rate)) // 2  # the centre crop's first source frame
    step = rate // math.gcd(rate, SR)  # source frames per whole number of output samples
    back = step * math.ceil(0.2 * rate / step)  # start 0.2 s earlier, on the grid
    reference = soxr.resample(source[start - back :], rate, SR, "HQ")[back * SR // rate :][:8000, 0]
    np.testing.assert_allclose(audio, reference, atol=1e-4)


def test_channels_mono_to_stereo_and_more_than_two(folder, tmp_path):
    stereo = AudioFolderDataset(folder, channels=2, target_dbfs=None, **CLIP)
    mono_file, stereo_file = stereo[1]["audio"], stereo[2]["audio"]  # a0.wav (mono), a1.flac (stereo)
    assert mono_file.shape == stereo_file.shape == (2, 8000)
    assert torch.equal(mono_file[0], mono_file[1])
    ratio = stereo_file[1].abs().max() / stereo_file[0].abs().max()
    assert ratio == pytest.approx(0.5, abs=0.01)  # the right channel is half the left
    quad = tmp_path / "quad"
    quad.mkdir()
    sf.write(quad / "q.wav", sine(440, SR, 0.6, channels=4), SR)  # channels 1, 1/2, 1/3, 1/4
    first_two = AudioFolderDataset(quad, channels=2, target_dbfs=None, **CLIP)[0]["audio"]
    assert first_two[1].abs().max() / first_two[0].abs().max() == pytest.approx(0.5, abs=0.01)
    averaged = AudioFolderDataset(quad, channels=1, target_dbfs=None, **CLIP)[0]["audio"]
    assert averaged.abs().max() == pytest.approx(0.5 * (1 + 1 / 2 + 1 / 3 + 1 / 4) / 4, abs=0.01)


@pytest.mark.parametrize("target", [-20.0, -32.0])
def test_loudness_normalisation_hits_target(folder, target):
    data = AudioFolderDataset(folder, target_dbfs=target, channels=2, **CLIP)
    for i in range(len(data)):
        assert rms_dbfs(data[i]["audio"].numpy()) == pytest.approx(target, abs=0.5)


def test_peak_limit_scales_loud_clips_into_range(folder):
    data = AudioFolderDataset(folder, target_dbfs=-1.0, **CLIP)  # a sine at -1 dBFS RMS peaks at 1.26
    for i in range(len(data)):
        assert data[i]["audio"].abs().max() == pytest.approx(1.0, abs=1e-5)


def test_pad_short_keeps_and_zero_pads_short_files(folder):
    data = AudioFolderDataset(folder, pad_short=True, **CLIP)
    assert data.num_skipped == 1 and len(data) == 4
    short = next(i for i, f in enumerate(data.files) if f[0].endswith("short.wav"))
    audio = data[short]["audio"]
    assert audio.shape == (1, 8000) and audio[0, 1600:].abs().max() == 0 and audio[0, :1600].abs().max() > 0


def test_random_crop_in_training_centre_crop_otherwise(tmp_path):
    noise = np.random.default_rng(1).uniform(-0.5, 0.5, (SR * 2, 1)).astype(np.float32)
    sf.write(tmp_path / "noise.wav", noise, SR)
    centre = AudioFolderDataset(tmp_path, target_dbfs=None, **CLIP)
    assert torch.equal(centre[0]["audio"], centre[0]["audio"])
    expected = torch.from_numpy(noise[12000:20000, 0])  # the centre 0.5 s, 16-bit quantised
    assert torch.allclose(centre[0]["audio"][0], expected, atol=1e-4)
    torch.manual_seed(0)
    crops = AudioFolderDataset(tmp_path, target_dbfs=None, random_crop=True, **CLIP)
    assert not torch.equal(crops[0]["audio"], crops[0]["audio"])


def test_split_is_by_file_and_stable_when_files_are_added(tmp_path):
    tone = sine(440, 8000, 0.05)
    for i in range(24):
        sf.write(tmp_path / f"f{i:02d}.wav", tone, 8000)
    args = {"sample_rate": 8000, "duration": 0.05, "val_fraction": 0.3, "seed": 1}
    names = lambda d: {p.split("/")[-1] for p, *_ in d.files}
    train, val = (
        AudioFolderDataset(tmp_path, split="train", **args),
        AudioFolderDataset(tmp_path, split="val", **args),
    )
    assert names(train).isdisjoint(names(val)) and len(names(train) | names(val)) == 24
    assert 0 < len(val) < 24
    for i in range(24, 40):
        sf.write(tmp_path / f"f{i:02d}.wav", tone, 8000)
    val_after = names(AudioFolderDataset(tmp_path, split="val", **args))
    assert {n for n in val_after if n < "f24"} == names(val)


def test_manifest_paths_labels_and_captions(folder, tmp_path):
    lines = [
        {"path": "sounds/low/a0.wav", "label": "tuning fork", "caption": "an A above middle C"},
        {"path": str(folder / "high" / "nested" / "b0.ogg"), "label": "beep", "caption": "a 1 kHz beep"},
        {"path": "sounds/low/corrupt.wav", "label": "beep", "caption": "broken"},
    ]
    manifest = tmp_path / "list.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n")
    data = AudioFolderDataset(manifest=manifest, **CLIP)
    assert data.classes == ["beep", "tuning fork"] and data.num_skipped == 1
    assert [(int(it["label"]), it["caption"]) for it in data] == [
        (1, "an A above middle C"),
        (0, "a 1 kHz beep"),
    ]
    batch = next(iter(DataLoader(data, batch_size=2, collate_fn=collate_skip_none)))
    assert batch["audio"].shape == (2, 1, 8000) and batch["caption"] == [
        "an A above middle C",
        "a 1 kHz beep",
    ]
    manifest.write_text('{"path": "sounds/low/a0.wav"}\n')
    plain = AudioFolderDataset(manifest=manifest, **CLIP)
    assert plain.classes == ["list"] and int(plain[0]["label"]) == 0 and "caption" not in plain[0]
    for bad, match in [
        ('{"path": "a.wav", "label": 1}\n{"path": "b.wav"}\n', "on every line or on none"),
        ('{"path": "a.wav"}\nnot json\n', "line 2"),
        ('{"path": "a.wav", "label": "x"}\n{"path": "b.wav", "label": 2}\n', "all class names or all ids"),
    ]:
        manifest.write_text(bad)
        with pytest.raises(ConfigError, match=match):
            AudioFolderDataset(manifest=manifest, **CLIP)


def test_datamodule_batches_and_read_time_failures(folder):
    dm = AudioFolderDataModule(str(folder), channels=2, batch_size=2, val_fraction=0.0, **CLIP)
    batch = next(iter(dm.train_dataloader()))
    assert batch["audio"].shape == (2, 2, 8000) == (2, *dm.audio_shape) and batch["label"].dtype == torch.long
    assert dm.num_classes == 2 and dm.num_skipped == 2 and dm.val_dataloader() == []
    (folder / "low" / "a0.wav").write_bytes(b"gone")  # breaks after probing
    items = [dm.train_dataset[i] for i in range(len(dm.train_dataset))]
    assert sum(item is None for item in items) == 1 and dm.num_skipped == 3
    split = AudioFolderDataModule(str(folder), val_fraction=0.5, seed=0, **CLIP)
    split.setup()
    assert len(split.train_dataset) + len(split.val_dataset) == 2  # a0.wav is now unreadable too


def test_config_errors(folder, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no audio files"):
        AudioFolderDataset(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "song.mp3").write_bytes(b"x")
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"other extensions seen: \['.mp3', '.txt'\]"):
        AudioFolderDataset(tmp_path / "other")
    with pytest.raises(ConfigError, match="does not exist"):
        AudioFolderDataset(tmp_path / "missing")
    with pytest.raises(ConfigError, match="no usable audio files"):
        AudioFolderDataset(folder, duration=5.0)
    for bad, match in [
        ({"duration": 0}, "duration=0"),
        ({"duration": -1.0}, "duration"),
        ({"sample_rate": 0}, "sample_rate=0"),
        ({"channels": 3}, "channels=3"),
        ({"target_dbfs": 3.0}, "target_dbfs"),
        ({"split": "test"}, "split"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"manifest": "x.jsonl"}, "exactly one"),
    ]:
        with pytest.raises(ConfigError, match=match):
            AudioFolderDataset(folder, **bad)
        if "split" not in bad:
            with pytest.raises(ConfigError, match=match):
                AudioFolderDataModule(str(folder), **bad)
    with pytest.raises(ConfigError, match="exactly one"):
        AudioFolderDataModule()
