"""TokenBridge post-training quantiser: Gaussian-quantile bins against scipy, exact bin membership and
out-of-range counts, encode/decode round trips through a stand-in continuous tokenizer, save/load."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import truncnorm
from torch import nn

from mmar.errors import ConfigError
from mmar.lit.generator_module import GeneratorModule
from mmar.sampling import Sampler
from tokenizers_visual import TOKENIZERS, PostQuantTokenizer, Tokenizer, VQTokenizer, load_tokenizer
from tokenizers_visual.kl_vae import KLVAETokenizer
from tokenizers_visual.post_quant import gaussian_centroids, gaussian_edges


class StandIn(Tokenizer):
    """Continuous stand-in: pixel-unshuffle by `patch`, an orthogonal channel mix, times `gain`.

    Exactly invertible (decode(encode(x)) = x up to float rounding), so quantiser round trips can be
    checked to the id.
    """

    name = "test_standin_continuous"
    kind = "continuous"

    def __init__(self, in_channels: int = 1, patch: int = 2, gain: float = 4.0):
        super().__init__()
        self.config = {"in_channels": in_channels, "patch": patch, "gain": gain}
        self.in_channels, self.downsample = in_channels, patch
        self.latent_dim = in_channels * patch * patch
        q, _ = torch.linalg.qr(torch.randn(self.latent_dim, self.latent_dim, dtype=torch.float64))
        self.mix = nn.Parameter(q.float())  # (D, D) orthogonal
        self.register_buffer("gain", torch.tensor(float(gain)))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        z = F.pixel_unshuffle(x, self.downsample).permute(0, 2, 3, 1)  # (B, h, w, D)
        return z @ self.mix * self.gain

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = (latents / self.gain) @ self.mix.T  # (B, h, w, D)
        return F.pixel_shuffle(z.permute(0, 3, 1, 2), self.downsample)


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(TOKENIZERS, StandIn.name, StandIn)


def wrapped(bits: int = 4, value_range: float = 3.0, seed: int = 0) -> PostQuantTokenizer:
    torch.manual_seed(seed)
    return PostQuantTokenizer(StandIn(), bits=bits, value_range=value_range)


def images(b: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 1, 8, 8, generator=torch.Generator().manual_seed(seed)) * 2 - 1


CASES = [(1, 3.0), (3, 2.5), (6, 3.0), (8, 4.0)]


@pytest.mark.parametrize("bits, r", CASES)
def test_edges_are_truncated_normal_quantiles(bits, r):
    levels = 2**bits
    edges = gaussian_edges(levels, r)
    expected = truncnorm.ppf([i / levels for i in range(levels + 1)], -r, r)
    torch.testing.assert_close(edges, torch.from_numpy(expected), rtol=0, atol=1e-6)
    # equal probability mass per bin under the truncated normal
    cdf = torch.from_numpy(truncnorm.cdf(edges.numpy(), -r, r))
    torch.testing.assert_close(cdf.diff(), torch.full((levels,), 1 / levels, dtype=torch.float64))


@pytest.mark.parametrize("bits, r", CASES)
def test_values_are_truncated_normal_means_of_each_bin(bits, r):
    edges = gaussian_edges(2**bits, r)
    values = gaussian_centroids(edges)
    expected = truncnorm.mean(edges[:-1].numpy(), edges[1:].numpy())  # N(0, 1) restricted to each bin
    torch.testing.assert_close(values, torch.from_numpy(expected), rtol=0, atol=1e-6)
    assert (values > edges[:-1]).all() and (values < edges[1:]).all()
    # the bin means average to the truncated normal's mean, 0, with equal weights
    assert abs(float(values.mean())) < 1e-12


def test_quantise_dequantise_is_idempotent_on_reconstruction_values():
    tok = wrapped(bits=6)
    ids = torch.arange(64)
    assert torch.equal(tok.quantize(tok.values), ids)
    assert torch.equal(tok.quantize(tok.dequantize(ids)), ids)  # through the float32 values too
    z = torch.randn(5, 2, 2, 4) * 2
    once = tok.dequantize(tok.quantize(z))
    assert torch.equal(tok.dequantize(tok.quantize(once)), once)


def test_each_value_maps_to_the_bin_containing_it():
    tok = wrapped(bits=5, value_range=2.5)
    z = torch.linspace(-4, 4, 20001, dtype=torch.float64)
    ids = tok.quantize(z)
    inside = z.abs() <= 2.5
    lo, hi = tok.edges[ids], tok.edges[ids + 1]
    assert ((lo <= z) & (z < hi))[inside & (z < 2.5)].all()
    assert (ids[z < -2.5] == 0).all() and (ids[z > 2.5] == 31).all()  # clamped into the end bins
    # an interior edge belongs to the bin above it
    assert torch.equal(tok.quantize(tok.edges[1:-1]), torch.arange(1, 32))


def test_out_of_range_fraction_is_exact():
    tok = wrapped(bits=4, value_range=3.0)
    latents = torch.full((6, 4, 4, 4), 0.5)  # (B, h, w, D), 384 values
    flat = latents.view(-1)
    flat[:37], flat[100:120] = 5.0, -7.0  # 57 values with |z| > 3
    flat[200:210] = 3.0  # on the boundary: inside
    x = tok.inner.decode(latents)  # images whose latents are exactly (to float rounding) these
    batches = [x[:2], x[2:]]
    stats = tok.measure(batches)
    assert stats == {"out_of_range_fraction": 57 / 384, "num_values": 384}
    assert tok.out_of_range_fraction is None
    tok.fit_statistics(iter(batches))
    assert tok.out_of_range_fraction == 57 / 384
    assert tok.config["out_of_range_fraction"] == 57 / 384


def test_ids_survive_decode_then_encode():
    tok = wrapped(bits=6)
    ids = torch.randint(0, 64, (3, 4, 4, 4), generator=torch.Generator().manual_seed(0))
    x = tok.decode(ids)  # (B, 1, 8, 8)
    assert x.shape == (3, 1, 8, 8)
    torch.testing.assert_close(x, tok.inner.decode(tok.values.float()[ids]), rtol=0, atol=0)
    assert torch.equal(tok.encode(x), ids)  # reconstruction values sit well inside their bins


def test_encode_decode_round_trip_matches_the_quantised_latents():
    tok = wrapped(bits=6, value_range=3.0)
    x = images()
    ids = tok.encode(x)
    assert ids.shape == (3, 4, 4, 4) and ids.dtype == torch.long
    z = tok.inner.encode(x)  # (B, h, w, D), inside [-4, 4]
    assert torch.equal(ids, tok.quantize(z))
    recon, fwd_ids, aux = tok(x)
    assert torch.equal(fwd_ids, ids) and float(aux) == 0.0
    torch.testing.assert_close(recon, tok.inner.decode(tok.dequantize(ids)), rtol=0, atol=0)
    # the latent error is at most the width of the bin (or the distance to +-r outside it)
    width = (tok.edges[ids + 1] - tok.edges[ids]).float()
    excess = (z.abs() - 3.0).clamp_min(0)
    assert ((tok.dequantize(ids) - z).abs() <= width + excess + 1e-6).all()


def test_attributes_and_grid():
    tok = wrapped(bits=3)
    assert TOKENIZERS["tokenbridge"] is PostQuantTokenizer
    assert tok.kind == "discrete" and tok.vocab_size == 8 and tok.token_shape == (4,)
    assert tok.grid((1, 16, 24)) == (8, 12) and tok.downsample == 2 and tok.in_channels == 1
    with pytest.raises(ConfigError, match="divisible"):
        tok.grid((1, 15, 16))


def test_save_load_is_bit_exact(tmp_path):
    tok = wrapped(bits=6, value_range=2.5)
    tok.fit_statistics([images(4) * 2])
    tok.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["name"] == "tokenbridge" and config["inner"]["name"] == StandIn.name
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, PostQuantTokenizer) and isinstance(loaded.inner, StandIn)
    assert loaded.config == tok.config
    for (k, v), (k2, v2) in zip(tok.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert torch.equal(loaded.edges, tok.edges) and torch.equal(loaded.values, tok.values)
    x = images()
    assert torch.equal(loaded.encode(x), tok.encode(x))
    assert torch.equal(loaded.decode(tok.encode(x)), tok.decode(tok.encode(x)))


def test_wraps_a_kl_vae_and_reloads_bit_exact(tmp_path):
    torch.manual_seed(0)
    inner = KLVAETokenizer(in_channels=1, ch=8, ch_mult=[1, 2], num_res_blocks=1, latent_dim=3).eval()
    inner.fit_statistics([images(4)])
    tok = PostQuantTokenizer(inner, bits=4)
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded.inner, KLVAETokenizer) and loaded.token_shape == (3,)
    assert loaded.config["inner"]["latent_scale"] == inner.config["latent_scale"]
    x = images()
    assert torch.equal(loaded.encode(x), tok.encode(x))
    torch.testing.assert_close(loaded.decode(tok.encode(x)), tok.decode(tok.encode(x)), rtol=0, atol=0)


def test_bad_settings_are_config_errors():
    inner = StandIn()
    for bits in (0, 17, 2.5):
        with pytest.raises(ConfigError, match="bits"):
            PostQuantTokenizer(inner, bits=bits)
    for r in (0.0, -1.0, float("inf")):
        with pytest.raises(ConfigError, match="value_range"):
            PostQuantTokenizer(inner, value_range=r)
    vq = VQTokenizer(in_channels=1, ch=8, ch_mult=[1, 2], num_res_blocks=1, z_channels=4, codebook_size=8)
    with pytest.raises(ConfigError, match="continuous"):
        PostQuantTokenizer(vq)
    with pytest.raises(ConfigError, match="unknown inner tokenizer name 'nope'"):
        PostQuantTokenizer({"name": "nope"})
    with pytest.raises(ConfigError, match="non-empty"):
        PostQuantTokenizer(inner).measure([])


def test_bad_ids_are_config_errors():
    tok = wrapped(bits=3)
    with pytest.raises(ConfigError, match=r"\[B, h, w, 4\]"):
        tok.decode(torch.zeros(2, 4, 4, 3, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"\[B, h, w, 4\]"):
        tok.decode(torch.zeros(2, 4, 4, 4))  # float
    with pytest.raises(ConfigError, match=r"\[0, 8\)"):
        tok.decode(torch.full((2, 4, 4, 4), 8))


def test_generator_module_trains_and_samples_over_tokenbridge(tmp_path):
    tok = wrapped(bits=3)
    tok.save_pretrained(tmp_path)
    head = {"head": "channel_ar", "head_kwargs": {"channels": 4, "width": 16, "depth": 1, "heads": 2}}
    model = GeneratorModule(str(tmp_path), unit_kwargs=head, image_size=8, warmup_steps=1)
    x, labels = images(2), torch.tensor([1, 2])
    losses = model.step_losses({"image": x, "label": labels})
    assert abs(float(losses["loss"].detach()) - math.log(8)) < 0.3  # near-uniform at initialisation
    out = model.eval().generate(labels, Sampler(cfg_scale=2.0, seed=0))
    assert out.shape == (2, 1, 8, 8)
    with pytest.raises(ConfigError, match="head predicts"):
        GeneratorModule(str(tmp_path), image_size=8)  # the categorical head predicts one id per cell


def test_make_tokenbridge_script(tmp_path, capsys, load_script):
    main = load_script("make_tokenbridge").main
    torch.manual_seed(0)
    StandIn(patch=4, gain=8.0).save_pretrained(tmp_path / "cont")
    out = tmp_path / "tb"
    main(["--continuous", str(tmp_path / "cont"), "--bits", "3", "--range", "3.0", "--out", str(out)])
    metrics = json.loads((out / "quantization_metrics.json").read_text())
    printed = capsys.readouterr().out
    assert f'"psnr_quantized": {metrics["psnr_quantized"]}' in printed
    tok = load_tokenizer(out)
    assert isinstance(tok, PostQuantTokenizer) and tok.vocab_size == 8 and tok.token_shape == (16,)
    assert tok.out_of_range_fraction == metrics["out_of_range_fraction"]
    # the stand-in is exactly invertible: only quantisation loses information; digits at gain 8 exceed +-3
    assert metrics["psnr_continuous"] > 90 > metrics["psnr_quantized"]
    assert 0 < metrics["out_of_range_fraction"] < 1 and metrics["num_images"] == 179
    with pytest.raises(SystemExit) as exit_info:
        main(["--continuous", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("error: no tokenizer at")
    VQTokenizer(in_channels=1, ch=8, ch_mult=[1, 2], z_channels=4, codebook_size=8).save_pretrained(
        tmp_path / "vq"
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["--continuous", str(tmp_path / "vq"), "--out", str(tmp_path / "y")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: inner must be a continuous tokenizer")
