"""The continuous audio tokenizer (`tokenizers_audio.kl.AudioKLCodec`): shapes and grid, the KL term
against its closed form, the reparameterised training sample, data-fitted normalisation, the export round
trip, clear errors, and TokenizerModule training the debug recipe end to end."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from torch.distributions import Normal, kl_divergence

from mmar.data import EmbeddedNotesDataModule
from mmar.errors import ConfigError
from mmar.lit import TokenizerModule
from mmar.tokenizer import TOKENIZERS, build_tokenizer, load_tokenizer, read_tokenizer_config
from tokenizers_audio import AudioKLCodec

D, HOP = 4, 8
TINY = {
    "channels": 4,
    "latent_dim": D,
    "strides": [2, 4],
    "kl_weight": 0.5,
    "mel_weight": 0.0,
    "stft_weight": 0.0,
}


def tiny_kl(**overrides) -> AudioKLCodec:
    torch.manual_seed(0)
    return AudioKLCodec(**{**TINY, **overrides})


def audio(b: int = 2, c: int = 1, samples: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, c, samples, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # [-1, 1]


def dataset() -> list[torch.Tensor]:
    """Three batches of different sizes, offset so the raw latents have a clearly non-zero mean."""
    return [audio(5, seed=2) * 0.5 + 0.3, audio(3, seed=3), audio(7, seed=4) * 0.8 - 0.2]


def test_registered_and_attributes():
    tok = tiny_kl()
    assert TOKENIZERS["audio_kl"] is AudioKLCodec
    assert (tok.name, tok.kind, tok.modality) == ("audio_kl", "continuous", "audio")
    assert tok.latent_dim == D and tok.vocab_size is None and tok.downsample == tok.hop == HOP
    assert tok.grid((1, 80)) == (10,) and tok.frame_rate == 16000 / HOP
    assert tok.encoder.net[-1].conv.out_channels == 2 * D  # mean and log-variance
    default = AudioKLCodec()
    assert default.hop == 320 and default.frame_rate == 50.0 and default.config["kl_weight"] == 1e-6


@pytest.mark.parametrize("channels", [1, 2])
def test_shapes_encode_is_time_major_and_decode_inverts_the_layout(channels):
    tok = tiny_kl(in_channels=channels)
    tok.fit_statistics([audio(4, channels, 64)])
    tok.eval()
    x = audio(3, channels, 80)
    latents = tok.encode(x)
    assert latents.shape == (3, 10, D) and latents.dtype == torch.float32  # [B, frames, D]
    recon, fwd_latents, aux = tok(x)
    assert recon.shape == x.shape and aux.ndim == 0
    assert torch.equal(fwd_latents, latents)  # eval mode: the posterior mean
    torch.testing.assert_close(tok.decode(latents), recon, rtol=1e-5, atol=1e-5)
    mean = tok.posterior(x)[0]  # [B, D, frames]
    expected = (mean.transpose(1, 2) - tok.latent_shift) * tok.latent_scale  # frame t is column t
    torch.testing.assert_close(latents, expected)


def test_kl_term_is_the_closed_form():
    tok = tiny_kl()
    b, frames = 3, 5
    mean = torch.full((b, D, frames), 0.5)
    logvar = torch.full((b, D, frames), math.log(4.0))
    per_element = 0.5 * (0.5**2 + 4.0 - 1.0 - math.log(4.0))  # KL(N(0.5, 4) || N(0, 1))
    expected = 0.5 * per_element * D * frames  # kl_weight * summed over the clip, mean over the batch
    torch.testing.assert_close(tok.kl_loss(mean, logvar), torch.tensor(expected))
    torch.testing.assert_close(
        tok.kl_loss(torch.zeros(b, D, frames), torch.zeros(b, D, frames)), torch.tensor(0.0)
    )
    # the forward's term is that of the encoder's posterior, as torch.distributions computes it
    x = audio(2, 1, 64)
    _, _, aux = tok.eval()(x)
    mean, logvar = tok.posterior(x)  # [B, D, frames]
    kl = kl_divergence(Normal(mean, (0.5 * logvar).exp()), Normal(0.0, 1.0))  # [B, D, frames]
    torch.testing.assert_close(aux, 0.5 * kl.flatten(1).sum(1).mean())
    assert float(aux.detach()) > 0


def test_training_forward_decodes_a_reparameterised_sample():
    tok = tiny_kl().train()
    x = audio(2, 1, 64)
    torch.manual_seed(7)
    recon, latents, aux = tok(x)
    mean, logvar = tok.posterior(x)
    torch.manual_seed(7)
    z = mean + (0.5 * logvar).exp() * torch.randn_like(mean)  # [B, D, frames]
    torch.testing.assert_close(latents, z.transpose(1, 2))  # unfitted: identity normalisation
    torch.testing.assert_close(recon, tok.decoder(z))
    (recon.square().mean() + aux).backward()
    assert tok.encoder.net[0].conv.parametrizations.weight.original1.grad.abs().sum() > 0


@pytest.mark.parametrize("per_channel", [False, True])
def test_fit_statistics_gives_zero_mean_unit_std_latents_on_the_fitting_data(per_channel):
    tok = tiny_kl(per_channel_scale=per_channel).train()
    tok.fit_statistics(iter(dataset()))  # any iterable, consumed once
    assert tok.training and tok.stats_fitted  # the mode is restored
    latents = torch.cat([tok.eval().encode(x) for x in dataset()]).double()  # [N, frames, D]
    dims = (0, 1) if per_channel else (0, 1, 2)
    mean, std = latents.mean(dims), latents.std(dims, unbiased=False)
    torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=1e-5)
    torch.testing.assert_close(std, torch.ones_like(std), rtol=1e-5, atol=0)
    with torch.no_grad():
        raw = torch.cat([tok.posterior(x)[0] for x in dataset()]).double()  # [N, D, frames]
    dims = (0, 2) if per_channel else (0, 1, 2)  # shift = mean, scale = 1 / std of the raw means
    torch.testing.assert_close(tok.latent_shift.double(), raw.mean(dims).expand(D), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        tok.latent_scale.double(), 1 / raw.std(dims, unbiased=False).expand(D), rtol=1e-6, atol=0
    )
    scale = tok.config["latent_scale"]  # the JSON mirror: D floats, or one
    assert (len(scale) == D) if per_channel else isinstance(scale, float)


def test_unfitted_tokenizer_warns_once():
    tok = tiny_kl().eval()
    assert not tok.stats_fitted and tok.config["latent_scale"] is None
    with pytest.warns(UserWarning, match="audio_kl tokenizer's latent scale/shift were never fitted"):
        latents = tok.encode(audio())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.decode(latents)  # once per tokenizer, not per call


def test_save_pretrained_and_load_tokenizer_round_trip(tmp_path):
    tok = tiny_kl(in_channels=2, mel_weight=1.0, per_channel_scale=True)
    tok.fit_statistics([audio(4, 2, 64, seed=5)])
    tok.eval().save_pretrained(tmp_path)
    assert not any(k.startswith(("mel_loss", "stft_loss")) for k in tok.state_dict())
    assert read_tokenizer_config(tmp_path) == {"name": "audio_kl", **tok.config}
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, AudioKLCodec) and not loaded.training and loaded.stats_fitted
    for key, value in tok.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    x = audio(2, 2, 64)
    assert torch.equal(loaded.encode(x), tok.encode(x))
    assert torch.equal(loaded.decode(tok.encode(x)), tok.decode(tok.encode(x)))
    sampled = [t.encode(x, sample=True, generator=torch.Generator().manual_seed(0)) for t in (tok, loaded)]
    assert torch.equal(*sampled)


def test_bad_inputs_are_clear_errors():
    tok = tiny_kl()
    with pytest.raises(ConfigError, match=r"\[B, C, samples\]"):
        tok.encode(torch.zeros(1, 64))
    with pytest.raises(ConfigError, match=r"not a positive multiple of the codec's hop 8.*e\.g\. 64"):
        tok.encode(audio(1, 1, 70))
    with pytest.raises(ConfigError, match="expects 1"):
        tok.encode(audio(1, 2, 64))
    with pytest.raises(ConfigError, match=r"\[B, frames, D\]"):
        tok.decode(torch.zeros(2, 4, 4, D))  # image-shaped latents
    with pytest.raises(ConfigError, match=rf"3 channels.*latent_dim={D}"):
        tok.decode(torch.zeros(2, 8, 3))
    with pytest.raises(ConfigError, match="float latents"):
        tok.decode(torch.zeros(2, 8, D, dtype=torch.long))
    with pytest.raises(ConfigError, match="no batches"):
        tok.fit_statistics([])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kl_weight": -1.0}, "kl_weight must be >= 0"),
        ({"strides": []}, "strides must be a non-empty list"),
        ({"in_channels": 0}, "in_channels must be >= 1"),
        ({"latent_dim": 0}, "latent_dim must be >= 1"),
        ({"mel_weight": -1.0}, "mel_weight must be >= 0"),
        ({"latent_scale": 2.0}, "both latent_scale and latent_shift"),
        ({"latent_scale": [1.0, 2.0], "latent_shift": 0.0}, "latent_scale must be one float or a list of"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        tiny_kl(**kwargs)
    with pytest.raises(ConfigError, match="unknown argument"):
        build_tokenizer({"name": "audio_kl", "hop": 320})


def test_tokenizer_module_trains_the_debug_recipe_and_exports_fitted_statistics(tmp_path):
    recipe = yaml.safe_load(Path("configs/debug/audio_kl.yaml").read_text())
    torch.manual_seed(0)
    module = TokenizerModule(**{**recipe["model"]["init_args"], "export_dir": str(tmp_path / "tok")})
    data = EmbeddedNotesDataModule(**recipe["data"]["init_args"])
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=1,
        val_check_interval=2,  # one validation after the last step
        log_every_n_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    before = module.tokenizer.encoder.net[0].conv.parametrizations.weight.original1.detach().clone()
    trainer.fit(module, data)
    metrics = trainer.callback_metrics
    terms = ["train/time_l1", "train/mel", "train/stft", "train/aux_loss"]  # aux_loss: the weighted KL
    assert all(float(metrics[k]) > 0 for k in terms)
    torch.testing.assert_close(metrics["train/loss"], sum(metrics[k] for k in terms))
    assert {"val/mel", "val/psnr"} <= set(metrics)
    assert not torch.equal(before, module.tokenizer.encoder.net[0].conv.parametrizations.weight.original1)
    tok = load_tokenizer(tmp_path / "tok")
    assert isinstance(tok, AudioKLCodec) and tok.stats_fitted
    clips = torch.stack([item["audio"] for item in data.train_dataset])  # [16, 1, 2000]: the fitting data
    latents = tok.encode(clips).double()  # [16, 25, 4]
    assert latents.shape == (16, 25, 4)
    assert abs(float(latents.mean())) < 1e-5
    assert float(latents.std(unbiased=False)) == pytest.approx(1.0, rel=1e-5)
    assert tok.decode(tok.encode(clips[:2])).shape == (2, 1, 2000)
