"""The RVQ audio codec (`tokenizers_audio`): shapes and grid for mono and stereo, hop errors, bitrate
chosen at inference, residual quantisation refining with each level, quantizer dropout in training only,
the hand-built mel filterbank and the spectral losses, the MS-STFT discriminator, and the export round
trip through the tokenizer registry."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys

import pytest
import torch

from mmar.errors import ConfigError
from mmar.tokenizer import TOKENIZERS, build_tokenizer, load_tokenizer
from tokenizers_audio import (
    MelSpectrogram,
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
    MultiScaleSTFTDiscriminator,
    RVQCodec,
    discriminator_hinge_loss,
    feature_matching_loss,
    generator_hinge_loss,
    mel_filterbank,
    mel_frequencies,
)
from tokenizers_audio.losses import hz_to_mel, mel_to_hz

Q, K, HOP, SR = 4, 16, 8, 16000
TINY = {
    "channels": 4,
    "latent_dim": 8,
    "strides": [2, 4],
    "num_quantizers": Q,
    "codebook_size": K,
    "kmeans_init": False,
    "threshold_ema_dead_code": 0.0,
    "mel_weight": 0.0,  # the spectral losses have their own tests; keep the codec cheap
    "stft_weight": 0.0,
}


def tiny_codec(**overrides) -> RVQCodec:
    torch.manual_seed(0)
    return RVQCodec(**{**TINY, **overrides})


def audio(b: int = 2, c: int = 1, samples: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, c, samples, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # [-1, 1]


def tone(freq: float, samples: int = 4096, sr: int = SR) -> torch.Tensor:
    t = torch.arange(samples) / sr
    return torch.sin(2 * math.pi * freq * t)[None, None]  # [1, 1, samples]


# ------------------------------------------------------------------------------------------ codec


def test_contract_attributes_and_default_bitrate():
    tok = tiny_codec()
    assert (tok.name, tok.kind, tok.modality) == ("rvq_codec", "discrete", "audio")
    assert tok.downsample == HOP and tok.token_shape == (Q,) and tok.vocab_size == K
    assert tok.bitrate() == SR / HOP * Q * 4 and tok.bitrate(8000, num_quantizers=1) == 8000 / HOP * 4
    default = RVQCodec()
    assert default.downsample == 320 and default.bitrate() == 4000.0  # 50 frames/s * 8 levels * 10 bits
    assert default.bitrate(24000, 2) == 1500.0
    assert "rvq_codec" in TOKENIZERS


@pytest.mark.parametrize("channels", [1, 2])
def test_shapes_of_encode_decode_forward_and_grid(channels):
    tok = tiny_codec(in_channels=channels).eval()
    x = audio(3, channels, 80)
    assert tok.grid((channels, 80)) == (10,)
    ids = tok.encode(x)
    assert ids.shape == (3, 10, Q) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < K
    recon, fwd_ids, aux = tok(x)
    assert recon.shape == x.shape and torch.equal(fwd_ids, ids) and aux.ndim == 0
    torch.testing.assert_close(tok.decode(ids), recon)


def test_grid_errors_name_the_hop_and_the_fix():
    tok = tiny_codec()
    with pytest.raises(ConfigError, match=r"not a positive multiple of the codec's hop 8.*e\.g\. 64"):
        tok.grid((1, 70))
    with pytest.raises(ConfigError, match="hop 8"):
        tok.encode(audio(1, 1, 4))
    with pytest.raises(ConfigError, match="expects 1"):
        tok.grid((2, 64))
    with pytest.raises(ConfigError, match=r"\[B, C, samples\]"):
        tok.check_input(torch.zeros(1, 64))
    with pytest.raises(ConfigError, match=r"\(C, samples\)"):
        tok.grid((1, 8, 8))


def test_every_bitrate_decodes_and_ids_are_prefixes():
    tok = tiny_codec().eval()
    x = audio(2, 1, 64)
    full = tok.encode(x)
    outputs = []
    for q in range(1, Q + 1):
        ids = tok.encode(x, num_quantizers=q)
        assert ids.shape == (2, 8, q)
        assert torch.equal(ids, full[..., :q])  # the first q levels do not depend on the later ones
        recon = tok.decode(ids)
        assert recon.shape == x.shape and torch.isfinite(recon).all()
        outputs.append(recon)
    assert not torch.allclose(outputs[0], outputs[-1])  # more levels, a different (finer) signal
    for bad in (0, Q + 1):
        with pytest.raises(ConfigError, match=f"must be in 1..{Q}"):
            tok.encode(x, num_quantizers=bad)
    with pytest.raises(ConfigError, match=f"1 <= q <= {Q}"):
        tok.decode(torch.zeros(2, 8, Q + 1, dtype=torch.long))
    with pytest.raises(ConfigError, match=f"ids must lie in \\[0, {K}\\)"):
        tok.decode(torch.full((2, 8, 2), K))


@torch.no_grad()
def test_residual_error_decreases_with_levels_after_fitting_the_codebooks():
    """With codebooks fitted (k-means + EMA) on the latents, the latent error ||z - (c_1 + ... + c_q)||^2
    of the same latents never grows with q, and the full code is much closer to z than zero is."""
    tok = tiny_codec(kmeans_init=True)
    x = audio(8, 1, 128, seed=2)  # 8 * 16 = 128 latent frames for 16 codes per level
    tok.train()
    tok.quantize(tok.latents(x))  # the brief fit: k-means on each level's residuals, one EMA step
    tok.eval()
    z = tok.latents(x)  # [B, frames, D]
    errors = [float(z.pow(2).sum(-1).mean())]
    for q in range(1, Q + 1):
        approx = tok.latents_from_ids(tok.encode(x, num_quantizers=q))  # [B, frames, D]
        errors.append(float((z - approx).pow(2).sum(-1).mean()))
    assert all(b <= a for a, b in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.5 * errors[0], errors


@torch.no_grad()
def test_residual_error_is_non_increasing_per_frame_when_each_codebook_holds_zero():
    """Each codebook holds the zero vector (and random codes): the nearest-code choice can always keep
    the residual, so every frame's error is non-increasing in q; the ids are checked against a brute-force
    nearest-code search, and the decoded latents are the sums of the chosen codes."""
    tok = tiny_codec().eval()
    x = audio(4, 1, 128, seed=3)
    z = tok.latents(x)  # [B, frames, D]
    gen = torch.Generator().manual_seed(4)
    for level, layer in enumerate(tok.quantizer.layers):  # codes at the scale of each level's residual
        codes = torch.randn(K, 8, generator=gen) * z.std() * 0.5 ** (level + 1)
        codes[0] = 0.0
        layer._codebook.embed.copy_(codes[None])
    ids = tok.encode(x)  # [B, frames, Q]
    residual = z
    errors = [z.norm(dim=-1)]
    for q, layer in enumerate(tok.quantizer.layers):
        codebook = layer._codebook.embed[0]  # [K, D]
        nearest = torch.cdist(residual, codebook[None].expand(len(z), -1, -1)).argmin(-1)  # [B, frames]
        assert torch.equal(ids[..., q], nearest), f"level {q + 1} is not the nearest code"
        residual = residual - codebook[ids[..., q]]
        errors.append(residual.norm(dim=-1))
        approx = tok.latents_from_ids(ids[..., : q + 1])
        torch.testing.assert_close(z - approx, residual, rtol=0, atol=1e-5)
    errors = torch.stack(errors)  # [Q + 1, B, frames]
    assert (errors[1:] <= errors[:-1] + 1e-6).all()  # every frame, every level
    means = errors.flatten(1).mean(1)
    assert (means[1:] < means[:-1]).all(), means  # and on average each level strictly refines


@torch.no_grad()
def test_quantizer_dropout_only_in_training_mode():
    x = audio(2, 1, 64)
    tok = tiny_codec(quantizer_dropout=1.0)
    tok.train()
    levels = {tok(x)[1].shape[-1] for _ in range(24)}
    assert levels <= set(range(1, Q + 1)) and len(levels) > 1 and min(levels) < Q
    assert tok.encode(x).shape[-1] == Q  # encode picks its bitrate itself, even in training mode
    tok.eval()
    assert {tok(x)[1].shape[-1] for _ in range(8)} == {Q}
    never = tiny_codec(quantizer_dropout=0.0).train()
    assert {never(x)[1].shape[-1] for _ in range(8)} == {Q}


def test_reconstruction_losses_are_weighted_and_train_the_codec():
    tok = tiny_codec(time_weight=0.5, mel_weight=2.0, stft_weight=1.0).train()
    x = audio(2, 1, 256)
    recon, _, aux = tok(x)
    losses = tok.reconstruction_losses(recon, x)
    assert set(losses) == {"time_l1", "mel", "stft"}
    torch.testing.assert_close(losses["time_l1"], 0.5 * (recon - x).abs().mean())
    torch.testing.assert_close(losses["mel"], 2.0 * MultiScaleMelLoss(SR)(recon, x))
    (sum(losses.values()) + aux).backward()
    assert tok.encoder.net[0].conv.parametrizations.weight.original1.grad.abs().sum() > 0
    assert tok.decoder.net[-1].conv.parametrizations.weight.original1.grad.abs().sum() > 0
    assert set(tiny_codec(time_weight=0.0).reconstruction_losses(x, x)) == set()  # zero weights: no term


def test_causal_codec_never_looks_ahead():
    tok = tiny_codec(causal=True).eval()
    x = audio(1, 1, 96)
    y = x.clone()
    y[..., 40:] = audio(1, 1, 56, seed=9)  # change the future from sample 40 (frame 5) on
    torch.testing.assert_close(tok.latents(y)[:, :5], tok.latents(x)[:, :5])
    assert not torch.allclose(tok.latents(y)[:, 5:], tok.latents(x)[:, 5:])
    torch.testing.assert_close(tok(y)[0][..., :40], tok(x)[0][..., :40])


def test_save_pretrained_and_load_tokenizer_round_trip(tmp_path):
    tok = tiny_codec(in_channels=2, kmeans_init=True, quantizer_dropout=0.0, mel_weight=1.0)
    x = audio(2, 2, 64)
    with torch.no_grad():
        tok.train()(x)  # fit the codebooks: the export must carry them
    tok.eval().save_pretrained(tmp_path)
    assert not any(k.startswith(("mel_loss", "stft_loss")) for k in tok.state_dict())
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, RVQCodec) and loaded.config == tok.config and not loaded.training
    assert torch.equal(loaded.encode(x), tok.encode(x))
    torch.testing.assert_close(loaded.decode(tok.encode(x, 2)), tok.decode(tok.encode(x, 2)))
    built = build_tokenizer({"name": "rvq_codec", **TINY})
    assert isinstance(built, RVQCodec)
    with pytest.raises(ConfigError, match="unknown argument"):
        build_tokenizer({"name": "rvq_codec", "hop": 320})


def test_load_tokenizer_finds_the_audio_package_by_itself(tmp_path):
    tiny_codec().eval().save_pretrained(tmp_path)
    code = (
        "from mmar.tokenizer import load_tokenizer; import sys; "
        f"t = load_tokenizer({str(tmp_path)!r}); "
        "print(type(t).__module__, 'tokenizers_audio' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.split() == ["tokenizers_audio.codec", "True"]


# ------------------------------------------------------------------------------- mel filterbank


def test_mel_scales_known_values():
    torch.testing.assert_close(
        hz_to_mel(torch.tensor([0.0, 200.0, 1000.0, 6400.0])),
        torch.tensor([0.0, 3.0, 15.0, 42.0], dtype=torch.float64),
    )
    torch.testing.assert_close(
        hz_to_mel(torch.tensor(700.0), "htk"), torch.tensor(2595 * math.log10(2), dtype=torch.float64)
    )
    freqs = torch.tensor([0.0, 440.0, 1000.0, 3000.0, 8000.0], dtype=torch.float64)
    for scale in ("slaney", "htk"):
        torch.testing.assert_close(mel_to_hz(hz_to_mel(freqs, scale), scale), freqs)


@pytest.mark.parametrize("scale", ["slaney", "htk"])
def test_each_filter_peaks_at_its_centre_frequency(scale):
    n_fft, n_mels = 4096, 40
    fb = mel_filterbank(SR, n_fft, n_mels, scale=scale, norm=None)  # [n_mels, F]
    assert fb.shape == (n_mels, n_fft // 2 + 1) and (fb >= 0).all()
    fft_freqs = torch.linspace(0, SR / 2, n_fft // 2 + 1, dtype=torch.float64)
    centres = mel_frequencies(n_mels + 2, 0.0, SR / 2, scale)[1:-1]
    bin_width = SR / n_fft
    peaks = fft_freqs[fb.argmax(dim=1)]
    assert ((peaks - centres).abs() < bin_width).all()  # one of the two bins around the centre
    assert (fb.max(dim=1).values > 0.9).all()  # peak 1 at the centre (up to the bin grid)
    assert (centres.diff() > 0).all()


def test_filter_rows_and_columns_sum_sensibly():
    n_fft, n_mels = 4096, 40
    fft_freqs = torch.linspace(0, SR / 2, n_fft // 2 + 1, dtype=torch.float64)
    edges = mel_frequencies(n_mels + 2, 0.0, SR / 2)
    # peak-1 triangles overlap as a partition of unity between the first and last centre
    peak = mel_filterbank(SR, n_fft, n_mels, norm=None).double()
    inside = (fft_freqs >= edges[1]) & (fft_freqs <= edges[-2])
    torch.testing.assert_close(peak.sum(0)[inside], torch.ones(int(inside.sum()), dtype=torch.float64))
    # Slaney's normalisation gives every filter unit area in Hz
    area = mel_filterbank(SR, n_fft, n_mels).double().sum(1) * (SR / n_fft)
    torch.testing.assert_close(area, torch.ones(n_mels, dtype=torch.float64), rtol=0.05, atol=0)


def test_pure_tone_lights_up_its_mel_bin():
    n_mels = 40
    centres = mel_frequencies(n_mels + 2, 0.0, SR / 2)[1:-1]
    mel = MelSpectrogram(SR, 1024, n_mels=n_mels)
    for k in (8, 20, 30):
        energy = mel(tone(float(centres[k])))[0].mean(-1)  # [n_mels]
        assert int(energy.argmax()) == k
        assert energy[k - 1] < 0.25 * energy[k] and energy[k + 1] < 0.25 * energy[k]
        far = torch.cat([energy[: k - 2], energy[k + 3 :]])
        assert far.max() < 0.05 * energy[k]  # window leakage only


def test_mel_loss_zero_for_identical_inputs_and_positive_otherwise():
    loss = MultiScaleMelLoss(SR)
    x = audio(2, 2, 1024)
    assert float(loss(x, x)) == 0.0
    assert float(loss(x, x + 0.1 * audio(2, 2, 1024, seed=5))) > 0.0
    assert [m.filterbank.shape[0] for m in loss.mels] == [5, 10, 20, 40, 80, 160, 320]  # DAC's


# ------------------------------------------------------------------------------- spectral losses


def test_stft_loss_zero_for_identical_signals_and_grows_with_noise():
    loss = MultiResolutionSTFTLoss()
    x = 0.5 * tone(440.0, 4096) + 0.1 * audio(1, 1, 4096)
    assert float(loss(x, x)) == 0.0
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    values = [float(loss(x + level * noise, x)) for level in (0.001, 0.01, 0.1, 0.5)]
    assert all(b > a for a, b in itertools.pairwise(values)), values
    short = audio(1, 1, 256)  # shorter than the windows: zero-padded frames, still finite
    assert torch.isfinite(loss(short + 0.1, short))


def test_discriminator_shapes_and_feature_matching():
    torch.manual_seed(0)
    disc = MultiScaleSTFTDiscriminator(in_channels=2, filters=4, n_ffts=(64, 128))
    x = audio(3, 2, 512)
    y = audio(3, 2, 512, seed=7).requires_grad_(True)
    logits, feats = disc(x)
    assert len(logits) == len(feats) == 2
    for n_fft, logit, fmap in zip((64, 128), logits, feats):
        bins = n_fft // 2 + 1
        for _ in range(3):  # three stride-2 convs over frequency
            bins = (bins - 1) // 2 + 1
        assert logit.shape == (3, 1, 512 // (n_fft // 4) + 1, bins)
        assert len(fmap) == 5 and all(f.shape[:3] == (3, 4, logit.shape[2]) for f in fmap)
    fake_logits, fake_feats = disc(y)
    assert float(feature_matching_loss(feats, feats).detach()) == 0.0
    fm = feature_matching_loss(feats, fake_feats)
    assert float(fm.detach()) > 0
    (fm + generator_hinge_loss(fake_logits)).backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert float(discriminator_hinge_loss(logits, fake_logits).detach()) >= 0
