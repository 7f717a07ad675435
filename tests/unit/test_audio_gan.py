"""The audio GAN of TokenizerModule: a codec's own MS-STFT discriminator (`make_discriminator`), EnCodec's
hinge and relative feature-matching losses with their weights, `gan_start_step`, logging and checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from mmar.errors import ConfigError
from mmar.lit import TokenizerModule
from mmar.lit.losses import feature_matching_loss, multiscale_hinge_d_loss, multiscale_hinge_g_loss
from tokenizers_audio import MultiScaleSTFTDiscriminator, RVQCodec
from tokenizers_visual import VQTokenizer

CODEC = {
    "name": "rvq_codec",
    "sample_rate": 8000,
    "channels": 4,
    "latent_dim": 8,
    "strides": [2, 4, 2, 5],  # hop 80
    "num_quantizers": 2,
    "codebook_size": 16,
}
DISC = {"filters": 4, "n_ffts": [64, 128]}
SAMPLES = 800  # 0.1 s at 8 kHz: 10 frames


def tiny_module(**kwargs) -> TokenizerModule:
    torch.manual_seed(0)
    return TokenizerModule(tokenizer=CODEC, lr=1e-3, usage_buffer=256, disc_kwargs=DISC, **kwargs)


def clips(n: int, seed: int = 0) -> torch.Tensor:
    """n mono tones with a little noise, [n, 1, SAMPLES] in [-1, 1]."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(SAMPLES) / 8000
    freqs = 200 + 600 * torch.rand(n, 1, 1, generator=gen)
    return 0.5 * torch.sin(2 * math.pi * freqs * t) + 0.05 * torch.randn(n, 1, SAMPLES, generator=gen)


def loader(n: int = 8) -> DataLoader:
    return DataLoader([{"audio": clip} for clip in clips(n)], batch_size=4)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def test_the_codec_brings_its_ms_stft_discriminator():
    codec = RVQCodec(**{k: v for k, v in CODEC.items() if k != "name"}, in_channels=2)
    disc = codec.make_discriminator(**DISC)
    assert isinstance(disc, MultiScaleSTFTDiscriminator) and len(disc.discriminators) == 2
    logits, feats = disc(clips(2).expand(-1, 2, -1))  # stereo: in_channels follows the codec
    assert len(logits) == len(feats) == 2 and all(len(f) == 5 for f in feats)
    with pytest.raises(ConfigError, match=r"unknown disc_kwargs \['channels'\].*valid: .*'filters'"):
        codec.make_discriminator(channels=8)
    # the default of the contract: no discriminator of its own (the image PatchGAN), and no kwargs for it
    vq = VQTokenizer(in_channels=1, ch=8, ch_mult=[1, 2], num_res_blocks=1, z_channels=8, codebook_size=16)
    assert vq.make_discriminator() is None
    with pytest.raises(ConfigError, match=r"disc_kwargs.*has none.*disc_channels"):
        vq.make_discriminator(filters=4)


def test_module_uses_the_codec_discriminator_and_encodec_weights():
    module = tiny_module(gan_weight=0.5)
    assert isinstance(module.discriminator, MultiScaleSTFTDiscriminator) and module.own_discriminator
    assert module.fm_weight == 0.5  # default: feature matching weighted as the adversarial term (EnCodec)
    assert tiny_module(gan_weight=0.5, feature_matching_weight=0.0).fm_weight == 0.0
    assert tiny_module().discriminator is None  # gan_weight 0: no discriminator at all

    module = tiny_module(gan_weight=0.5, feature_matching_weight=3.0)
    x = clips(2)
    recon, _, _ = module.tokenizer(x)
    losses = module._generator_adversarial_losses(recon, x)
    assert set(losses) == {"g_adv", "g_fm"}
    with torch.no_grad():
        fake_logits, fake_feats = module.discriminator(recon)
        real_logits, real_feats = module.discriminator(x)
        g_adv = multiscale_hinge_g_loss(fake_logits)
        g_fm = feature_matching_loss(real_feats, fake_feats)
        d_loss = multiscale_hinge_d_loss(real_logits, fake_logits)
    torch.testing.assert_close(losses["g_adv"], 0.5 * g_adv)
    torch.testing.assert_close(losses["g_fm"], 3.0 * g_fm)
    assert losses["g_adv"].requires_grad and losses["g_fm"].requires_grad and float(g_fm) > 0
    torch.testing.assert_close(module._discriminator_loss(x, recon.detach()), d_loss)


def test_audio_refuses_lpips_and_a_discriminator_it_does_not_have(monkeypatch):
    with pytest.raises(ConfigError, match="perceptual_weight is an image loss"):
        tiny_module(perceptual_weight=0.1)
    with pytest.raises(ConfigError, match="feature_matching_weight must be >= 0"):
        tiny_module(gan_weight=0.5, feature_matching_weight=-1.0)
    with pytest.raises(ConfigError, match="unknown disc_kwargs"):
        TokenizerModule(tokenizer=CODEC, gan_weight=0.5, disc_kwargs={"ndf": 8})
    monkeypatch.setattr(RVQCodec, "make_discriminator", lambda self, **kwargs: None)
    with pytest.raises(ConfigError, match=r"needs a discriminator.*PatchGAN is an image loss"):
        tiny_module(gan_weight=0.5)


def test_gan_steps_train_the_discriminator_from_gan_start_step(tmp_path: Path):
    module = tiny_module(gan_weight=0.5, feature_matching_weight=2.0, gan_start_step=1)
    disc_before = snapshot(module.discriminator)
    steps: list[dict] = []

    class Watch(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
            steps.append({"disc_moved": bool(changed(disc_before, pl_module.discriminator)), **metrics})

    trainer = Trainer(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        log_every_n_steps=1,
        limit_val_batches=0,
        callbacks=[Watch()],
    )
    trainer.fit(module, loader())
    assert trainer.global_step == 3  # one batch is one step, although two optimisers stepped
    assert [s["disc_moved"] for s in steps] == [False, True, True]  # untouched before gan_start_step
    assert not {"train/g_adv", "train/g_fm", "train/d_loss"} & set(steps[0])
    last = steps[-1]
    assert {"train/g_adv", "train/g_fm", "train/d_loss"} <= set(last)
    assert math.isfinite(last["train/d_loss"]) and last["train/d_loss"] >= 0
    assert last["train/g_fm"] > 0 and last["train/g_adv"] >= 0
    # the generator's loss is its reconstruction terms plus the weighted adversarial ones
    terms = ("time_l1", "mel", "stft", "aux_loss", "g_adv", "g_fm")
    assert last["train/loss"] == pytest.approx(sum(last[f"train/{t}"] for t in terms), rel=1e-5)

    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    restored = TokenizerModule.load_from_checkpoint(path, weights_only=True)
    assert restored.hparams.disc_kwargs == DISC and restored.fm_weight == 2.0
    for key, value in module.discriminator.state_dict().items():
        assert torch.equal(value, restored.discriminator.state_dict()[key]), key
