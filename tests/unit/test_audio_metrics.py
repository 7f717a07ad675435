"""Audio metrics (`mmar.eval.audio`): SI-SDR against its closed form, mel / STFT distances, codebook usage,
the reconstruction report of a tiny RVQ codec, the log-frequency front end of the embedded notes classifier,
`NotesMetrics` (shapes, labels, caching) with a quick recipe, and the Fréchet Audio Distance on a randomly
initialised VGGish loaded by path."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mmar.data.audio import LOWEST_MIDI, PITCH_CLASSES, EmbeddedNotesDataset, midi_frequency
from mmar.errors import ConfigError
from mmar.eval.audio import (
    BINS_PER_OCTAVE,
    LOWEST_CENTRE_MIDI,
    NUM_CLASSES,
    LogFrequencySpectrogram,
    NotesMetrics,
    VGGishFeatures,
    classifier_cache_path,
    codebook_usage,
    frechet_audio_distance,
    mel_distance,
    reconstruction_report,
    si_sdr,
    stft_distance,
)
from mmar.eval.vggish import EMBEDDING_DIM, VGGish, load_vggish, log_mel_examples
from mmar.spectral import log_frequency_filterbank
from tokenizers_audio import RVQCodec

SR = 16000
TINY_CODEC = {
    "channels": 4,
    "latent_dim": 8,
    "strides": [2, 4],
    "num_quantizers": 3,
    "codebook_size": 16,
    "kmeans_init": False,
    "threshold_ema_dead_code": 0.0,
    "mel_weight": 0.0,
    "stft_weight": 0.0,
}
NOTES_SR, NOTES_DURATION = 8000, 0.25
QUICK = {"num_clips": 256, "num_val_clips": 64, "epochs": 10, "batch_size": 32}


def sine(freq: float, samples: int = 4096, sr: int = SR, amplitude: float = 0.5) -> torch.Tensor:
    return amplitude * torch.sin(2 * math.pi * freq * torch.arange(samples, dtype=torch.float64) / sr)


def noise(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------ SI-SDR


def test_si_sdr_of_a_signal_with_itself_is_large_and_scale_invariant():
    ref = (sine(440) + 0.1 * noise(4096))[None, None]  # [1, 1, N]
    assert si_sdr(ref, ref).item() > 80
    est = ref + 0.05 * noise(1, 1, 4096, seed=1)
    base = si_sdr(est, ref).item()
    for a, b in [(2.5, 1.0), (0.1, 1.0), (1.0, 0.3), (-3.0, 7.0)]:
        assert si_sdr(a * est, b * ref).item() == pytest.approx(base, abs=1e-4)
    assert si_sdr(est + 0.2, ref).item() == pytest.approx(base, abs=1e-4)  # zero-mean: DC offsets ignored


@pytest.mark.parametrize("gain", [1.0, 0.5, 2.0])
def test_si_sdr_matches_the_closed_form(gain):
    s = sine(440)
    s = s - s.mean()
    n = noise(4096)
    n = n - n.mean()
    n = 0.2 * (n - (n @ s) / (s @ s) * s)  # orthogonal to s: the optimal scale of s in gain*s + n is gain
    expected = 10 * math.log10(gain**2 * (s @ s).item() / (n @ n).item())
    assert si_sdr((gain * s + n)[None, None], s[None, None]).item() == pytest.approx(expected, abs=1e-3)


def test_si_sdr_per_clip_shapes_and_silence():
    ref = noise(3, 2, 1000)
    out = si_sdr(ref + 0.1 * noise(3, 2, 1000, seed=1), ref)
    assert out.shape == (3,) and torch.isfinite(out).all()
    assert torch.isfinite(si_sdr(torch.zeros(1, 1, 100), torch.zeros(1, 1, 100))).all()
    with pytest.raises(ConfigError, match="same shape"):
        si_sdr(ref, ref[:, :1])


# ----------------------------------------------------------------------------- spectral distances


def test_mel_and_stft_distances_are_zero_for_identical_audio_and_grow_with_noise():
    x = (sine(440) + sine(1230, amplitude=0.2)).float()[None, None]  # [1, 1, 4096]
    assert mel_distance(x, x, SR) == 0.0 and stft_distance(x, x) == 0.0
    small, large = x + 0.01 * noise(1, 1, 4096).float(), x + 0.1 * noise(1, 1, 4096).float()
    assert 0 < mel_distance(small, x, SR) < mel_distance(large, x, SR)
    assert 0 < stft_distance(small, x) < stft_distance(large, x)
    with pytest.raises(ConfigError, match="same shape"):
        mel_distance(x, x[..., :100], SR)


def test_codebook_usage_on_known_ids():
    ids = torch.tensor([[[0, 3], [1, 3]], [[0, 3], [1, 3]]])  # [N=2, frames=2, Q=2]
    out = codebook_usage(ids, codebook_size=4)
    assert out["usage"] == [0.5, 0.25]
    assert out["perplexity"] == pytest.approx([2.0, 1.0])
    uniform = codebook_usage(torch.arange(8).reshape(2, 4), codebook_size=8)  # one level, every code once
    assert uniform["usage"] == [1.0] and uniform["perplexity"] == pytest.approx([8.0])
    with pytest.raises(ConfigError, match=r"\[0, 4\)"):
        codebook_usage(ids + 2, codebook_size=4)


# ---------------------------------------------------------------------------------- report


def test_reconstruction_report_of_a_tiny_rvq_codec():
    torch.manual_seed(0)
    codec = RVQCodec(**TINY_CODEC)  # in training mode: the report runs it in eval mode, then restores it
    clips = 0.5 * torch.rand(3, 1, 512, generator=torch.Generator().manual_seed(0)) - 0.25
    full = reconstruction_report(codec, clips, batch_size=2)
    assert codec.training
    assert full["bitrate"] == codec.bitrate() and full["num_quantizers"] == 3 and full["num_clips"] == 3
    assert len(full["codebook_usage"]) == len(full["codebook_perplexity"]) == 3
    assert all(0 < u <= 1 for u in full["codebook_usage"])
    assert full["mel_distance"] > 0 and full["stft_distance"] > 0 and math.isfinite(full["si_sdr"])
    one = reconstruction_report(codec, clips, num_quantizers=1)
    assert one["bitrate"] == codec.bitrate(num_quantizers=1) < full["bitrate"]
    assert one["num_quantizers"] == 1 and len(one["codebook_usage"]) == 1


class IdentityLatents(nn.Module):
    """A continuous tokenizer that passes audio through: perfect reconstructions, no ids."""

    name, kind, sample_rate = "identity", "continuous", SR

    def encode(self, x):
        return x.transpose(1, 2)

    def decode(self, z):
        return z.transpose(1, 2)


def test_reconstruction_report_of_a_continuous_tokenizer_has_no_usage_or_bitrate():
    clips = sine(440, 1024).float()[None, None].repeat(2, 1, 1)
    report = reconstruction_report(IdentityLatents(), clips)
    assert {"bitrate", "codebook_usage", "codebook_perplexity", "num_quantizers"}.isdisjoint(report)
    assert report["mel_distance"] == 0.0 and report["stft_distance"] == 0.0 and report["si_sdr"] > 80
    with pytest.raises(ConfigError, match="no quantizer levels"):
        reconstruction_report(IdentityLatents(), clips, num_quantizers=1)


# ------------------------------------------------------------------------- notes classifier


def test_log_frequency_front_end_resolves_semitones_from_midi_48():
    assert len(PITCH_CLASSES) == NUM_CLASSES and LOWEST_CENTRE_MIDI == LOWEST_MIDI - 3
    bank = log_frequency_filterbank(SR, 4096, 110.0, 4000.0, BINS_PER_OCTAVE)
    assert torch.allclose(bank.sum(dim=1), torch.ones(len(bank))) and (bank.sum(dim=0) > 0).any()
    front = LogFrequencySpectrogram(SR)
    midis = [48, 49, 50, 60, 61, 83]
    tones = torch.stack([sine(midi_frequency(m), 8000).float() for m in midis])[:, None]  # [6, 1, N]
    spec = front(tones)  # [6, bins, frames]
    assert spec.min() >= 0 and spec.max() <= 1
    peaks = spec.mean(dim=-1).argmax(dim=-1)
    assert peaks.tolist() == [(m - LOWEST_CENTRE_MIDI) * BINS_PER_OCTAVE // 12 for m in midis]


@pytest.fixture(scope="module")
def notes_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("mmar_cache")


@pytest.fixture(scope="module")
def notes_metrics(notes_cache):
    rng_state = torch.get_rng_state()
    metrics = NotesMetrics(
        NOTES_SR, NOTES_DURATION, cache_dir=notes_cache, num_reference=64, train_options=QUICK
    )
    assert torch.equal(torch.get_rng_state(), rng_state)  # training leaves the global RNG alone
    return metrics


def train_notes(n: int = 48, start: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    data = EmbeddedNotesDataset(start + n, NOTES_SR, NOTES_DURATION)
    items = [data[i] for i in range(start, start + n)]
    return torch.stack([it["audio"] for it in items]), torch.stack([it["label"] for it in items])


def test_notes_metrics_compute_and_caching(notes_metrics, notes_cache):
    assert not notes_metrics.classifier_info["loaded_from_cache"]
    assert classifier_cache_path(NOTES_SR, NOTES_DURATION, 0, notes_cache, QUICK).is_file()
    audio, labels = train_notes()
    out = notes_metrics.compute(audio, labels, sample_rate=NOTES_SR)
    assert set(out) == {
        "audio_class_accuracy",
        "audio_classifier_fd",
        "audio_classifier_fd_real_same_n",
        "audio_classifier_val_accuracy",
        "num_samples",
    }
    assert out["audio_class_accuracy"] > 0.3 and out["num_samples"] == 48  # chance is 1 / 12
    assert out["audio_classifier_fd"] >= 0 and out["audio_classifier_fd_real_same_n"] >= 0
    assert out["audio_class_accuracy"] == notes_metrics.class_accuracy(audio, labels)
    assert notes_metrics.classifier_fd(notes_metrics.val_audio) == pytest.approx(0.0, abs=1e-6)
    assert notes_metrics.classifier_fd(0.1 * torch.randn_like(audio)) > out["audio_classifier_fd"]
    again = NotesMetrics(
        NOTES_SR, NOTES_DURATION, cache_dir=notes_cache, num_reference=64, train_options=QUICK
    )
    assert again.classifier_info["loaded_from_cache"]
    assert again.classifier_val_accuracy == notes_metrics.classifier_val_accuracy
    assert torch.equal(again.features(audio), notes_metrics.features(audio))


def test_notes_metrics_reject_wrong_shapes_rates_and_labels(notes_metrics):
    audio, labels = train_notes(4)
    for bad in (audio[:, 0], audio.repeat(1, 2, 1), audio[..., :-1], 3 * audio):
        with pytest.raises(ConfigError, match="notes metrics expect"):
            notes_metrics.compute(bad, labels)
    with pytest.raises(ConfigError, match="resample"):
        notes_metrics.compute(audio, labels, sample_rate=16000)
    for bad in (labels[:3], labels + 12, labels - labels - 1, labels.float()):
        with pytest.raises(ConfigError, match="labels"):
            notes_metrics.class_accuracy(audio, bad)


# ------------------------------------------------------------------------------------- FAD


@pytest.fixture(scope="module")
def vggish_weights(tmp_path_factory):
    """A randomly initialised VGGish (He init, so activations keep their scale) saved as safetensors."""
    torch.manual_seed(0)
    model = VGGish()
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    path = tmp_path_factory.mktemp("vggish") / "vggish.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def vggish(vggish_weights):
    return VGGishFeatures(vggish_weights)


def tones(n: int = 12, sr: int = 8000, seconds: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(int(sr * seconds)) / sr
    freqs = 200 + 600 * torch.rand(n, 1, generator=g)
    return (0.5 * torch.sin(2 * math.pi * freqs * t) + 0.01 * torch.randn(n, len(t), generator=g))[:, None]


def test_vggish_examples_and_embedding_shapes(vggish):
    assert log_mel_examples(torch.zeros(2, 15600)).shape == (2, 1, 96, 64)  # exactly one 0.96 s example
    assert log_mel_examples(torch.zeros(1, 100)).shape == (1, 1, 96, 64)  # short clips: padded to one
    assert log_mel_examples(torch.zeros(1, 2 * 16000)).shape == (1, 2, 96, 64)
    assert vggish(torch.zeros(3, 2, 2 * SR), SR).shape == (6, EMBEDDING_DIM)  # stereo, 2 s at 16 kHz
    mixed = [torch.zeros(8000), torch.zeros(1, 24000)]  # 0.5 s and 1.5 s at 16 kHz: one example each
    assert vggish(mixed, SR).shape == (2, EMBEDDING_DIM)
    assert vggish(tones(3), 8000).shape == (3, EMBEDDING_DIM)  # resampled 8 kHz -> 16 kHz


def test_fad_is_zero_for_a_set_with_itself_and_grows_with_noise(vggish):
    real = tones()
    g = torch.Generator().manual_seed(1)
    same = frechet_audio_distance(real, real, 8000, vggish)
    small = frechet_audio_distance(real, real + 0.01 * torch.randn(real.shape, generator=g), 8000, vggish)
    large = frechet_audio_distance(real, real + 0.1 * torch.randn(real.shape, generator=g), 8000, vggish)
    assert abs(same) < 1e-3 * small and 0 < small < large


def test_vggish_weights_load_from_pt_and_bad_files_are_one_line_errors(vggish, tmp_path):
    state = vggish.model.state_dict()
    pt = tmp_path / "vggish.pth"
    torch.save({**state, "pproc._pca_means": torch.zeros(128, 1)}, pt)  # the port's postprocessor: ignored
    assert torch.equal(load_vggish(pt).state_dict()["embeddings.4.bias"], state["embeddings.4.bias"])
    broken = tmp_path / "broken.safetensors"
    save_file({k: v for k, v in state.items() if k.startswith("features.")}, str(broken))  # no fc
    wrong = tmp_path / "wrong.pt"
    torch.save({"features.0.weight": torch.zeros(8, 1, 3, 3)}, wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    for path, match in [
        (tmp_path / "missing.pt", "not found"),
        (broken, "missing"),
        (wrong, "mis-shaped"),
        (garbage, "cannot read"),
    ]:
        with pytest.raises(ConfigError, match=match) as err:
            frechet_audio_distance(tones(2), tones(2), 8000, path)
        assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------- script


def test_eval_audio_tokenizers_script(tmp_path, load_script, capsys):
    torch.manual_seed(0)
    RVQCodec(**TINY_CODEC).save_pretrained(tmp_path / "codec")
    out = tmp_path / "eval" / "audio.json"
    script = load_script("eval_audio_tokenizers")
    args = [str(tmp_path / "codec"), "--num-clips", "4", "--duration", "0.0503", "--device", "cpu"]
    rows = script.main([*args, "--out", str(out)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines == rows == json.loads(out.read_text())
    row = rows[0]
    assert row["name"] == "rvq_codec" and row["num_clips"] == 4 and row["duration"] == 800 / SR  # 804 -> 800
    assert len(row["codebook_usage"]) == 3 and math.isfinite(row["si_sdr"])
    levels = row["per_num_quantizers"]
    assert [r["num_quantizers"] for r in levels] == [1, 2, 3] and levels[-1]["bitrate"] == row["bitrate"]
    assert levels[-1]["mel_distance"] == pytest.approx(row["mel_distance"])
    with pytest.raises(SystemExit):  # a ConfigError: one line on stderr, exit status 2
        script.main([str(tmp_path / "absent")])
    assert capsys.readouterr().err.startswith("error: no tokenizer at")
