"""KLVAETokenizer: the KL term, reparameterisation, data-fitted latent normalisation, errors, export."""

from __future__ import annotations

import warnings

import pytest
import torch
from lightning.pytorch import Trainer
from torch.distributions import Normal, kl_divergence
from torch.utils.data import DataLoader

from mmar.errors import ConfigError
from mmar.lit import GeneratorModule, TokenizerModule
from tokenizers_visual import TOKENIZERS, KLVAETokenizer, load_tokenizer, read_tokenizer_config

TINY = {"in_channels": 1, "ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "latent_dim": 3}


def tiny_kl(**overrides) -> KLVAETokenizer:
    torch.manual_seed(0)
    return KLVAETokenizer(**{**TINY, "kl_weight": 0.5, **overrides})


def images(b: int = 4, h: int = 8, w: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, 1, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # [-1, 1]


def dataset() -> list[torch.Tensor]:
    """Three batches of different sizes, offset so the raw latents have a clearly non-zero mean."""
    return [images(5, seed=2) * 0.5 + 0.3, images(3, seed=3), images(7, seed=4) - 0.2]


def test_registered_and_attributes():
    tok = tiny_kl()
    assert TOKENIZERS["kl_vae"] is KLVAETokenizer
    assert tok.kind == "continuous" and tok.latent_dim == 3 and tok.vocab_size is None
    assert tok.downsample == 2 and tok.grid((1, 8, 12)) == (4, 6)
    assert tok.encoder.net[-1].out_channels == 6  # mean and logvar


def test_aux_loss_is_weighted_closed_form_kl():
    tok = tiny_kl().eval()
    x = images()
    _, _, aux = tok(x)
    mean, logvar = tok.posterior(x)  # [B, D, h, w]
    kl = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0))  # [B, D, h, w]
    expected = 0.5 * kl.flatten(1).sum(1).mean()  # summed over the latent, mean over the batch
    torch.testing.assert_close(aux, expected)
    assert float(aux.detach()) > 0


def test_training_forward_decodes_a_reparameterised_sample():
    tok = tiny_kl().train()
    x = images()
    torch.manual_seed(7)
    recon, latents, aux = tok(x)
    mean, logvar = tok.posterior(x)
    torch.manual_seed(7)
    z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)  # [B, D, h, w]
    torch.testing.assert_close(latents, z.permute(0, 2, 3, 1))  # unfitted: identity normalisation
    torch.testing.assert_close(recon, tok.decoder(z))
    assert not torch.allclose(latents, mean.permute(0, 2, 3, 1))
    (recon.square().mean() + aux).backward()
    assert tok.encoder.net[0].weight.grad is not None  # through the sample and the KL


def test_eval_forward_is_deterministic_and_matches_decode_of_encode():
    tok = tiny_kl()
    tok.fit_statistics(dataset())
    tok.eval()
    x = images()
    recon, latents, _ = tok(x)
    assert torch.equal(latents, tok.encode(x))
    torch.testing.assert_close(tok.decode(latents), recon, rtol=1e-5, atol=1e-5)
    assert latents.shape == (4, 4, 4, 3) and latents.dtype == torch.float32


def test_encode_sample_uses_the_posterior():
    tok = tiny_kl().eval()
    tok.set_statistics(torch.tensor(0.1), torch.tensor(2.0))
    x = images()
    a = tok.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    b = tok.encode(x, sample=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    mean, logvar = tok.posterior(x)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    expected = ((mean + (0.5 * logvar).exp() * noise - 0.1) * 2.0).permute(0, 2, 3, 1)
    torch.testing.assert_close(a, expected)
    torch.testing.assert_close(tok.encode(x), ((mean - 0.1) * 2.0).permute(0, 2, 3, 1))


@pytest.mark.parametrize("per_channel", [False, True])
def test_fit_statistics_gives_unit_variance_latents(per_channel):
    tok = tiny_kl(per_channel_scale=per_channel).train()
    tok.fit_statistics(iter(dataset()))  # any iterable, consumed once
    assert tok.training and tok.stats_fitted  # the mode is restored
    raw = torch.cat([tok.posterior(x)[0].detach() for x in dataset()]).double()  # [N, D, h, w]
    dims = (0, 2, 3) if per_channel else (0, 1, 2, 3)
    torch.testing.assert_close(tok.latent_shift.double(), raw.mean(dims).expand(3), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        tok.latent_scale.double(), 1 / raw.std(dims, unbiased=False).expand(3), rtol=1e-6, atol=0
    )
    latents = torch.cat([tok.eval().encode(x) for x in dataset()]).double()  # [N, h, w, D]
    dims = (0, 1, 2) if per_channel else (0, 1, 2, 3)
    mean, std = latents.mean(dims), latents.std(dims, unbiased=False)
    torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=1e-5)
    torch.testing.assert_close(std, torch.ones_like(std), rtol=1e-5, atol=0)
    if not per_channel:
        assert isinstance(tok.config["latent_scale"], float) and isinstance(tok.config["latent_shift"], float)
    else:
        assert len(tok.config["latent_scale"]) == 3 and len(set(tok.config["latent_scale"])) == 3


def test_unfitted_state_is_visible_and_warns_once():
    tok = tiny_kl().eval()
    assert not tok.stats_fitted
    assert tok.config["latent_scale"] is None and tok.config["latent_shift"] is None
    assert torch.equal(tok.latent_scale, torch.ones(3)) and torch.equal(tok.latent_shift, torch.zeros(3))
    with pytest.warns(UserWarning, match="never fitted.*fit_statistics"):
        latents = tok.encode(images())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.decode(latents)  # once per tokenizer, not per call
        fitted = tiny_kl()
        fitted.fit_statistics(dataset())
        fitted.decode(fitted.encode(images()))  # a fitted tokenizer never warns


def test_decode_rejects_bad_latents():
    tok = tiny_kl()
    with pytest.raises(ConfigError, match=r"4 channels.*latent_dim=3"):
        tok.decode(torch.zeros(2, 4, 4, 4))
    with pytest.raises(ConfigError, match=r"\[B, h, w, D\]"):
        tok.decode(torch.zeros(2, 4, 4))
    with pytest.raises(ConfigError, match=r"float latents"):
        tok.decode(torch.zeros(2, 4, 4, 3, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"\[B, C, H, W\]"):
        tok.encode(torch.zeros(1, 8, 8))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"latent_scale": 2.0}, "both latent_scale and latent_shift"),
        ({"latent_scale": [1.0, 2.0], "latent_shift": 0.0}, "latent_scale must be one float or a list of"),
        ({"latent_scale": 0.0, "latent_shift": 0.0}, "latent_scale must be finite and > 0"),
    ],
)
def test_bad_statistics_are_clear_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        tiny_kl(**kwargs)


def test_fit_statistics_errors():
    tok = tiny_kl()
    with pytest.raises(ConfigError, match="no batches"):
        tok.fit_statistics([])
    with torch.no_grad():
        tok.encoder.net[-1].weight.zero_()
        tok.encoder.net[-1].bias.zero_()  # every latent is 0: a collapsed encoder
    with pytest.raises(ConfigError, match="zero-variance"):
        tok.fit_statistics(dataset())
    assert not tok.stats_fitted


@pytest.mark.parametrize("per_channel", [False, True])
def test_save_load_round_trip_is_bit_exact(tmp_path, per_channel):
    tok = tiny_kl(per_channel_scale=per_channel).eval()
    tok.fit_statistics(dataset())
    tok.save_pretrained(tmp_path)
    assert read_tokenizer_config(tmp_path) == {"name": "kl_vae", **tok.config}
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, KLVAETokenizer) and not loaded.training and loaded.stats_fitted
    ref, got = tok.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    # the JSON mirror alone rebuilds the same statistics (no weights needed to read them)
    rebuilt = KLVAETokenizer(**{k: v for k, v in read_tokenizer_config(tmp_path).items() if k != "name"})
    assert torch.equal(rebuilt.latent_scale, tok.latent_scale)
    assert torch.equal(rebuilt.latent_shift, tok.latent_shift)
    x = images()
    assert torch.equal(tok.encode(x), loaded.encode(x))
    assert torch.equal(tok.decode(tok.encode(x)), loaded.decode(loaded.encode(x)))


def test_unfitted_round_trip_stays_unfitted_and_config_follows_buffers(tmp_path):
    tiny_kl().save_pretrained(tmp_path / "raw")
    assert read_tokenizer_config(tmp_path / "raw")["latent_scale"] is None
    assert not load_tokenizer(tmp_path / "raw").stats_fitted
    fitted = tiny_kl()
    fitted.fit_statistics(dataset())
    tok = tiny_kl()
    tok.load_state_dict(fitted.state_dict())  # e.g. from a Lightning checkpoint: config not yet mirrored
    tok.save_pretrained(tmp_path / "ckpt")
    config = read_tokenizer_config(tmp_path / "ckpt")
    assert config["latent_scale"] == fitted.config["latent_scale"] is not None
    assert config["latent_shift"] == fitted.config["latent_shift"]


def test_tokenizer_module_trains_and_exports_fitted_statistics(tmp_path):
    torch.manual_seed(0)
    module = TokenizerModule(tokenizer={"name": "kl_vae", **TINY}, export_dir=str(tmp_path / "tok"))
    items = [{"image": x, "label": torch.tensor(0)} for x in torch.cat(dataset())]
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, DataLoader(items, batch_size=5), DataLoader(items, batch_size=5))
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.stats_fitted
    latents = tok.encode(torch.cat(dataset())).double()  # the training images -> unit variance
    assert abs(float(latents.mean())) < 1e-5
    assert float(latents.std(unbiased=False)) == pytest.approx(1.0, rel=1e-5)


def test_generator_rejects_a_continuous_tokenizer_for_a_discrete_unit(tmp_path):
    tok = tiny_kl()
    tok.fit_statistics(dataset())
    tok.save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"next_token unit models \('discrete',\).*is continuous"):
        GeneratorModule(tokenizer=str(tmp_path), unit="next_token", image_size=8)
