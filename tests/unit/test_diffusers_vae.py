"""DiffusersVAETokenizer over a tiny random diffusers AutoencoderKL: normalisation, export, errors."""

from __future__ import annotations

import shutil
import sys

import pytest
import torch

from mmar.errors import ConfigError
from tokenizers_visual import TOKENIZERS, DiffusersVAETokenizer, load_tokenizer, read_tokenizer_config

TINY_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 4,
    "sample_size": 16,
    "scaling_factor": 0.5,
    "shift_factor": 0.1,
}


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory) -> str:
    """A tiny randomly initialised AutoencoderKL written by diffusers' own save_pretrained."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae")
    diffusers.AutoencoderKL(**TINY_VAE).save_pretrained(path)
    return str(path)


def images(b: int = 3, c: int = 3, size: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # [-1, 1]


def raw_mean(tok: DiffusersVAETokenizer, x: torch.Tensor) -> torch.Tensor:
    """diffusers' own posterior mean [B, D, h, w], bypassing the tokenizer."""
    with torch.no_grad():
        return tok.vae.encode(x).latent_dist.mean


def test_registered_and_attributes(vae_dir):
    tok = DiffusersVAETokenizer(vae_path=vae_dir)
    assert TOKENIZERS["diffusers_vae"] is DiffusersVAETokenizer
    assert tok.kind == "continuous" and tok.latent_dim == 4 and tok.vocab_size is None
    assert tok.in_channels == 3 and tok.downsample == 2 and tok.grid((3, 8, 12)) == (4, 6)
    assert "vae_path" not in tok.config and tok.config["vae_config"]["block_out_channels"] == [8, 16]
    assert not any(k.startswith("_") for k in tok.config["vae_config"])
    assert not tok.stats_fitted and tok.config["latent_scale"] is None


def test_vae_scaling_uses_published_factors_and_encode_matches_diffusers(vae_dir):
    tok = DiffusersVAETokenizer(vae_path=vae_dir, use_vae_scaling=True).eval()
    assert tok.stats_fitted and tok.config["latent_scale"] == 0.5
    assert tok.config["latent_shift"] == pytest.approx(0.1) and tok.latent_shift[0] == torch.tensor(0.1)
    x = images()
    latents = tok.encode(x)
    assert latents.shape == (3, 4, 4, 4)
    expected = ((raw_mean(tok, x) - 0.1) * 0.5).permute(0, 2, 3, 1)  # SD3/Flux: (z - shift) * scale
    torch.testing.assert_close(latents, expected, rtol=0, atol=0)
    tok.fit_statistics([images(seed=5)])  # the published factors are kept
    assert torch.equal(tok.latent_scale, torch.full((4,), 0.5))
    decoded = tok.decode(latents)
    assert decoded.shape == x.shape
    with torch.no_grad():
        torch.testing.assert_close(decoded, tok.vae.decode(raw_mean(tok, x)).sample, rtol=1e-5, atol=1e-5)


def test_vae_scaling_with_per_channel_latents_mean_and_std():
    pytest.importorskip("diffusers")
    mean, std = [0.1, -0.2, 0.3, 0.0], [1.0, 2.0, 4.0, 0.5]
    vae_config = {**TINY_VAE, "latents_mean": mean, "latents_std": std}
    tok = DiffusersVAETokenizer(vae_config=vae_config, use_vae_scaling=True).eval()
    torch.testing.assert_close(tok.latent_shift, torch.tensor(mean))
    torch.testing.assert_close(tok.latent_scale, 0.5 / torch.tensor(std))
    x = images()
    expected = (raw_mean(tok, x) - torch.tensor(mean)[:, None, None]) * 0.5 / torch.tensor(std)[:, None, None]
    torch.testing.assert_close(tok.encode(x), expected.permute(0, 2, 3, 1))


def test_fitted_statistics_give_unit_variance_and_encode_matches_diffusers(vae_dir):
    tok = DiffusersVAETokenizer(vae_path=vae_dir, per_channel_scale=True).eval()
    data = [images(4, seed=2), images(2, seed=3) * 0.5]
    tok.fit_statistics(data)
    raw = torch.cat([raw_mean(tok, x) for x in data]).double()  # [N, D, h, w]
    torch.testing.assert_close(tok.latent_shift.double(), raw.mean((0, 2, 3)), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        tok.latent_scale.double(), 1 / raw.std((0, 2, 3), unbiased=False), rtol=1e-6, atol=0
    )
    latents = torch.cat([tok.encode(x) for x in data]).double()  # [N, h, w, D]
    torch.testing.assert_close(
        latents.mean((0, 1, 2)), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(
        latents.std((0, 1, 2), unbiased=False), torch.ones(4, dtype=torch.float64), rtol=1e-5, atol=0
    )
    expected = (raw.float() - tok.latent_shift[:, None, None]) * tok.latent_scale[:, None, None]
    torch.testing.assert_close(latents.float(), expected.permute(0, 2, 3, 1), rtol=0, atol=0)


def test_forward_kl_and_sampling(vae_dir):
    tok = DiffusersVAETokenizer(vae_path=vae_dir, kl_weight=0.25).eval()
    x = images()
    recon, latents, aux = tok(x)
    posterior = tok.vae.encode(x).latent_dist
    kl = 0.5 * (posterior.mean.square() + posterior.var - 1 - posterior.logvar).flatten(1).sum(1)  # [B]
    torch.testing.assert_close(aux, 0.25 * kl.mean())
    torch.testing.assert_close(latents, posterior.mean.permute(0, 2, 3, 1))  # unfitted: identity
    torch.testing.assert_close(recon, tok.vae.decode(posterior.mean).sample)
    tok.train()
    torch.manual_seed(3)
    recon_train, sample, aux_train = tok(x)
    torch.manual_seed(3)
    # torch.randn, not randn_like: diffusers' mean has channels-last strides, which randn_like would follow
    expected = posterior.mean + posterior.std * torch.randn(posterior.mean.shape)
    torch.testing.assert_close(sample, expected.permute(0, 2, 3, 1))
    (recon_train.square().mean() + aux_train).backward()
    assert tok.vae.encoder.conv_in.weight.grad is not None
    with pytest.warns(UserWarning, match="diffusers_vae tokenizer's latent scale/shift were never fitted"):
        drawn = tok.eval().encode(x, sample=True, generator=torch.Generator().manual_seed(4))
    noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(drawn, (posterior.mean + posterior.std * noise).permute(0, 2, 3, 1))


def test_save_load_round_trip_without_the_original_folder(vae_dir, tmp_path):
    copy = tmp_path / "vae"
    shutil.copytree(vae_dir, copy)
    tok = DiffusersVAETokenizer(vae_path=str(copy)).eval()
    tok.fit_statistics([images(4, seed=2)])
    tok.save_pretrained(tmp_path / "tok")
    shutil.rmtree(copy)  # the adapter must not need the original VAE folder any more
    assert read_tokenizer_config(tmp_path / "tok") == {"name": "diffusers_vae", **tok.config}
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, DiffusersVAETokenizer) and loaded.stats_fitted and not loaded.training
    ref, got = tok.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    x = images()
    assert torch.equal(tok.encode(x), loaded.encode(x))
    assert torch.equal(tok.decode(tok.encode(x)), loaded.decode(loaded.encode(x)))


def test_random_init_from_config_is_seeded_and_round_trips(tmp_path):
    pytest.importorskip("diffusers")
    torch.manual_seed(0)
    a = DiffusersVAETokenizer(vae_config={**TINY_VAE, "in_channels": 1, "out_channels": 1})
    torch.manual_seed(0)
    b = DiffusersVAETokenizer(vae_config=a.config["vae_config"])
    assert a.in_channels == 1 and a.config == b.config
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    a.save_pretrained(tmp_path)
    assert not load_tokenizer(tmp_path).stats_fitted


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "exactly one of vae_path"),
        ({"vae_path": "x", "vae_config": {}}, "exactly one of vae_path"),
        ({"vae_path": "/nonexistent/vae"}, r"vae_path='/nonexistent/vae' is not a diffusers AutoencoderKL"),
        (
            {"vae_config": {**TINY_VAE, "latent_chanels": 4}},
            r"unknown key\(s\) \['latent_chanels'\] in vae_config",
        ),
        ({"vae_config": {**TINY_VAE, "out_channels": 1}}, "in_channels == out_channels"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    pytest.importorskip("diffusers")
    with pytest.raises(ConfigError, match=match):
        DiffusersVAETokenizer(**kwargs)


def test_decode_rejects_wrong_latent_dim(vae_dir):
    tok = DiffusersVAETokenizer(vae_path=vae_dir, use_vae_scaling=True)
    with pytest.raises(ConfigError, match=r"3 channels.*latent_dim=4"):
        tok.decode(torch.zeros(1, 4, 4, 3))
    with pytest.raises(ConfigError, match=r"\[B, h, w, D\]"):
        tok.decode(torch.zeros(4, 4, 4))


def test_missing_diffusers_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # makes `import diffusers` raise ImportError
    with pytest.raises(ConfigError, match=r'pip install "mmar\[diffusers\]"'):
        DiffusersVAETokenizer(vae_config=TINY_VAE)
