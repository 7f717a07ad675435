"""TokenizerModule: manual optimisation with and without the GAN, logging, export and checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader

from mmar.errors import ConfigError
from mmar.lit import TokenizerModule
from tokenizers_visual import VQTokenizer, load_tokenizer

TINY = {"name": "vq", "in_channels": 1, "ch": 8, "ch_mult": [1, 2], "num_res_blocks": 1, "z_channels": 8}


def tiny_module(**kwargs) -> TokenizerModule:
    torch.manual_seed(0)
    tokenizer = {**TINY, "codebook_size": 16, "codebook_dim": 4}
    return TokenizerModule(tokenizer=tokenizer, lr=1e-3, usage_buffer=256, **kwargs)


def loader(n: int = 8, batch_size: int = 4) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    items = [
        {"image": torch.rand(1, 16, 16, generator=gen) * 2 - 1, "label": torch.tensor(i % 10)}
        for i in range(n)
    ]
    return DataLoader(items, batch_size=batch_size)


def fit(module: TokenizerModule, max_steps: int, tmp_path: Path, **trainer_kwargs) -> Trainer:
    trainer = Trainer(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        log_every_n_steps=1,
        **trainer_kwargs,
    )
    trainer.fit(module, loader(), loader(4))
    return trainer


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def test_builds_tokenizer_by_name_with_primitive_hparams():
    module = tiny_module()
    assert isinstance(module.tokenizer, VQTokenizer) and module.tokenizer.vocab_size == 16
    assert module.discriminator is None and module.automatic_optimization is False
    assert module.hparams.tokenizer["name"] == "vq"
    assert TokenizerModule(tokenizer={k: v for k, v in TINY.items() if k != "name"}).tokenizer.name == "vq"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tokenizer": {"name": "nope"}}, "unknown tokenizer name 'nope'.*known: .*'vq'"),
        ({"tokenizer": {"name": "vq", "codebok_size": 8}}, "codebok_size.*valid:.*codebook_size"),
        ({"recon_loss": "l3"}, "recon_loss must be one of"),
        ({"lr_schedule": "linear"}, "unknown lr_schedule 'linear'"),
    ],
)
def test_bad_config_is_a_clear_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        TokenizerModule(**kwargs)


def test_training_without_gan_updates_tokenizer_logs_and_exports(tmp_path):
    module = tiny_module(warmup_steps=2, export_dir=str(tmp_path / "tok"))
    before = snapshot(module.tokenizer)
    trainer = fit(module, 3, tmp_path)
    assert trainer.global_step == 3
    assert len(trainer.optimizers) == 1
    assert changed(before, module.tokenizer) >= {"encoder.net.0.weight", "decoder.net.0.weight"}
    metrics = trainer.callback_metrics
    for key in ["train/loss", "train/rec_loss", "train/aux_loss", "train/usage", "val/rec_loss", "val/psnr"]:
        assert key in metrics, key
    assert 0 < float(metrics["train/usage"]) <= 1
    loaded = load_tokenizer(tmp_path / "tok")
    for key, value in module.tokenizer.state_dict().items():
        assert torch.equal(value.cpu(), loaded.state_dict()[key]), key


def test_linear_warmup_of_the_learning_rate(tmp_path):
    module = tiny_module(warmup_steps=4)
    trainer = fit(module, 2, tmp_path, limit_val_batches=0)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 3 / 4)  # after 2 steps


def test_cosine_schedule_decays_to_the_floor_at_the_last_step(tmp_path):
    module = tiny_module(warmup_steps=1, lr_schedule="cosine", min_lr_ratio=0.2)
    trainer = fit(module, 5, tmp_path, limit_val_batches=0)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.2)  # after the last step


def test_gan_step_updates_generator_and_discriminator(tmp_path):
    module = tiny_module(gan_weight=0.5, gan_start_step=0, disc_channels=8, disc_layers=2)
    gen_before, disc_before = snapshot(module.tokenizer), snapshot(module.discriminator)
    trainer = fit(module, 1, tmp_path, limit_val_batches=0)
    assert trainer.global_step == 1  # one batch is one step, although two optimisers stepped
    assert "encoder.net.0.weight" in changed(gen_before, module.tokenizer)
    # every weight moves; the last bias may not: while all logits lie inside the hinge margin its
    # gradient is 0.5 * (-1 + 1) = 0
    disc_weights = {k for k, _ in module.discriminator.named_parameters() if k.endswith("weight")}
    assert changed(disc_before, module.discriminator) >= disc_weights
    assert {"train/g_adv", "train/d_loss"} <= set(trainer.callback_metrics)


def test_discriminator_untouched_before_gan_start_step(tmp_path):
    module = tiny_module(gan_weight=0.5, gan_start_step=2, disc_channels=8, disc_layers=2)
    disc_before = snapshot(module.discriminator)  # parameters and BatchNorm statistics
    moved: list[bool] = []

    class Watch(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            moved.append(bool(changed(disc_before, pl_module.discriminator)))

    trainer = fit(module, 3, tmp_path, limit_val_batches=0, callbacks=[Watch()])
    assert trainer.global_step == 3
    assert moved == [False, False, True]  # steps 0 and 1 leave it alone, step 2 trains it


def test_perceptual_loss_is_used_but_not_saved(tmp_path):
    pytest.importorskip("lpips")
    module = tiny_module(perceptual_weight=1.0, perceptual_pretrained=False)
    assert not any(k.startswith("_perceptual") or "lpips" in k for k in module.state_dict())
    trainer = fit(module, 1, tmp_path, limit_val_batches=0)
    assert float(trainer.callback_metrics["train/perceptual"]) > 0


def test_checkpoint_loads_with_weights_only(tmp_path):
    module = tiny_module(gan_weight=0.1, disc_channels=8, disc_layers=2)
    trainer = fit(module, 1, tmp_path, limit_val_batches=0)
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["hyper_parameters"]["tokenizer"] == {**TINY, "codebook_size": 16, "codebook_dim": 4}
    restored = TokenizerModule.load_from_checkpoint(path, weights_only=True)
    for key, value in module.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key


def test_an_audio_codec_trains_on_its_own_losses_and_refuses_image_losses():
    codec = {
        "name": "rvq_codec",
        "sample_rate": 8000,
        "channels": 4,
        "latent_dim": 8,
        "strides": [2, 4, 2, 5],
        "num_quantizers": 2,
        "codebook_size": 16,
    }
    module = TokenizerModule(tokenizer=codec)
    x = torch.sin(torch.linspace(0, 200, 2000)).expand(2, 1, -1) * 0.5  # [B, C, samples]
    recon, _, _ = module.tokenizer(x)
    assert set(module._reconstruction_losses(recon, x)) == {"time_l1", "mel", "stft"}
    with pytest.raises(ConfigError, match="image loss"):  # LPIPS; its GAN is its own (test_audio_gan.py)
        TokenizerModule(tokenizer=codec, perceptual_weight=0.1)
