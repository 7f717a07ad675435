"""TokenizerModule: trains a tokenizer of images, videos or audio (VQGAN recipe: Esser et al., 2021;
LlamaGen: Sun et al., 2024; for audio codecs EnCodec's: Défossez et al., 2022).

Loss on the autoencoder ("generator"): reconstruction (L1 or MSE) + the quantiser's commitment loss
+ `perceptual_weight` * LPIPS + `gan_weight` * hinge adversarial loss (from `gan_start_step` on). The
discriminator has its own optimiser and is trained with the hinge loss from `gan_start_step` on; before
that it is never called. Optimisation is manual (two optimisers with the GAN, one without), with
gradient-norm clipping and a linear learning-rate warm-up (then constant). `global_step`,
`trainer.max_steps` and `gan_start_step` count batches, not optimiser steps.

Which discriminator: the tokenizer's own when `tokenizer.make_discriminator(**disc_kwargs)` returns one
(the audio codecs: EnCodec's multi-scale STFT discriminator), else the image PatchGAN (`disc_channels`,
`disc_layers`) with VQGAN's hinge losses (generator -E[D(x̂)], discriminator
0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x̂))])). A tokenizer's own discriminator returns
`(logits per sub-discriminator, feature maps per sub-discriminator)` (the contract of
`mmar.tokenizer.Tokenizer.make_discriminator`) and is trained with EnCodec's losses, averaged over its
sub-discriminators k:

- `g_adv` = `gan_weight` * mean_k E[relu(1 - D_k(x̂))];
- `g_fm` = `feature_matching_weight` * the relative feature matching mean_l |D^l(x) - D^l(x̂)| /
  mean |D^l(x)| over every feature map l, only when the discriminator returns features;
- `d_loss` = mean_k (E[relu(1 - D_k(x))] + E[relu(1 + D_k(x̂))]).

EnCodec weights the adversarial and feature-matching terms equally (AudioCraft's EnCodec recipe: adv 4,
feat 4 under its gradient balancer), so `feature_matching_weight` defaults to `gan_weight`. Without the
balancer the weights are raw multipliers: set `gan_weight` against the scale of the codec's own mel / STFT
terms (DAC, also without a balancer: mel 15, adversarial 1, feature matching 2).

Multi-GPU: with the GAN on, the discriminator is unused before `gan_start_step`, so run DDP with
`strategy: ddp_find_unused_parameters_true`. Codebook usage is measured on each rank's own batches.

Video inputs [B, C, T, H, W]: LPIPS and the PatchGAN see the frames as a batch of images (`as_frames`),
i.e. a per-frame 2D discriminator rather than MAGVIT-v2's 3D one.

A tokenizer that names its own reconstruction losses (`reconstruction_losses(recon, x) -> dict`, e.g.
the audio codec's multi-scale mel and STFT terms) is trained on those instead of the pixel loss. LPIPS
and the PatchGAN are image losses: refused for audio (an audio tokenizer trains adversarially only
against its own discriminator).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader

from mmar.errors import ConfigError
from mmar.eval.tokenizer_metrics import CodebookUsage, psnr
from mmar.lit.losses import (
    PatchDiscriminator,
    PerceptualLoss,
    feature_matching_loss,
    has_features,
    hinge_d_loss,
    hinge_g_loss,
    multiscale_hinge_d_loss,
    multiscale_hinge_g_loss,
)
from mmar.lit.optim import adamw, check_optimizer_settings, scheduled
from mmar.tokenizer import build_tokenizer, load_tokenizer

RECON_LOSSES = {"l1": F.l1_loss, "mse": F.mse_loss}
TRAINABLE = ("all", "decoder")
FRAME_MODALITIES = ("image", "video")
"""What the image PatchGAN and LPIPS can see (videos as a batch of frames)."""


class TokenizerModule(LightningModule):
    """Trains a registered tokenizer (`mmar.tokenizer`) on batches {"image": [B, C, H, W] in [-1, 1]}
    (or {"video": [B, C, T, H, W]}, or {"audio": [B, C, samples]}).

    Args:
        tokenizer: constructor kwargs of the tokenizer, plus "name" (a registered name, default "vq");
            or the folder of an exported tokenizer to train further (e.g. to post-train its decoder).
        trainable: "all" trains the whole tokenizer; "decoder" freezes everything but the decoder
            (RobusTok's decoder post-training). Batches that carry "tokens" (a token cache with images,
            from `scripts/make_post_train_pairs.py`) are then decoded from those tokens and compared
            with their images.
        lr: peak learning rate (AdamW), for the autoencoder and the discriminator.
        betas: AdamW betas.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up from 0, in training steps (batches).
        lr_schedule: "constant" after the warm-up (the default, as before), or "cosine" decay to
            `min_lr_ratio * lr` at the trainer's last step (short runs end at a lower loss).
        min_lr_ratio: final LR fraction of the cosine schedule.
        grad_clip: max gradient norm per optimiser (0 disables clipping).
        recon_loss: pixel reconstruction loss, "l1" or "mse".
        perceptual_weight: weight of the LPIPS loss (0 disables it; needs `pip install "mmar[perceptual]"`);
            images and videos only.
        perceptual_pretrained: load ImageNet VGG16 weights for LPIPS (False: random trunk, tests only).
        gan_weight: weight of the generator's adversarial loss `g_adv` (0 disables the discriminator
            entirely). The discriminator is the tokenizer's own (`make_discriminator`; audio: EnCodec's
            MS-STFT) or else the image PatchGAN.
        gan_start_step: training step from which the discriminator is trained and used.
        disc_channels: channels of the PatchGAN's first layer.
        disc_layers: stride-2 layers of the PatchGAN discriminator.
        feature_matching_weight: weight of the relative feature-matching loss `g_fm`, used only when the
            discriminator returns feature maps (a tokenizer's own, e.g. the audio MS-STFT one; never the
            PatchGAN) and only from `gan_start_step` on; None (default): equal to `gan_weight`, EnCodec's
            balance; 0 disables it.
        disc_kwargs: constructor kwargs of the tokenizer's own discriminator (audio codecs: `filters`,
            `n_ffts`, `hop_lengths`, `max_filters`, `filters_scale`, `dilations` of
            `tokenizers_audio.MultiScaleSTFTDiscriminator`); refused for the PatchGAN.
        export_dir: if set, the trained tokenizer is written there (safetensors + JSON) when training ends.
        usage_buffer: number of recent code ids over which codebook usage is measured.
    """

    def __init__(
        self,
        tokenizer: dict[str, Any] | str | None = None,
        trainable: str = "all",
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
        warmup_steps: int = 0,
        lr_schedule: str = "constant",
        min_lr_ratio: float = 0.1,
        grad_clip: float = 1.0,
        recon_loss: str = "l1",
        perceptual_weight: float = 0.0,
        perceptual_pretrained: bool = True,
        gan_weight: float = 0.0,
        gan_start_step: int = 0,
        disc_channels: int = 64,
        disc_layers: int = 3,
        feature_matching_weight: float | None = None,
        disc_kwargs: dict[str, Any] | None = None,
        export_dir: str | None = None,
        usage_buffer: int = 65536,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        if recon_loss not in RECON_LOSSES:
            raise ConfigError(f"recon_loss must be one of {sorted(RECON_LOSSES)}, got '{recon_loss}'")
        check_optimizer_settings(lr, betas, weight_decay, warmup_steps, lr_schedule, min_lr_ratio)
        if grad_clip < 0 or usage_buffer < 1 or gan_start_step < 0:
            raise ConfigError(
                f"grad_clip={grad_clip} and gan_start_step={gan_start_step} must be >= 0, "
                f"usage_buffer={usage_buffer} >= 1"
            )
        if trainable not in TRAINABLE:
            raise ConfigError(f"trainable must be one of {TRAINABLE}, got '{trainable}'")
        self.tokenizer = (
            load_tokenizer(tokenizer) if isinstance(tokenizer, str) else build_tokenizer(tokenizer or {})
        )
        if trainable == "decoder":
            if not isinstance(getattr(self.tokenizer, "decoder", None), torch.nn.Module):
                raise ConfigError(
                    f"trainable='decoder' needs a tokenizer with a decoder; {self.tokenizer.name} has none"
                )
            self.tokenizer.requires_grad_(False).decoder.requires_grad_(True)
        self.recon_loss = RECON_LOSSES[recon_loss]
        if feature_matching_weight is not None and feature_matching_weight < 0:
            raise ConfigError(f"feature_matching_weight must be >= 0 or null, got {feature_matching_weight}")
        self.fm_weight = gan_weight if feature_matching_weight is None else feature_matching_weight
        modality = self.tokenizer.modality
        if perceptual_weight > 0 and modality not in FRAME_MODALITIES:
            raise ConfigError(
                f"perceptual_weight is an image loss (LPIPS); set it to 0 for the {self.tokenizer.name} "
                f"{modality} tokenizer, which trains on its own reconstruction_losses"
            )
        self.discriminator, self.own_discriminator = self._make_discriminator(
            gan_weight, disc_channels, disc_layers, disc_kwargs or {}
        )
        # Kept out of the module tree on purpose: the frozen VGG stays out of checkpoints and DDP. Built in
        # `setup("fit")`: validate, test and predict never need it (a VGG16 takes seconds to initialise).
        self._perceptual: list[PerceptualLoss] = []
        discrete = self.tokenizer.kind == "discrete"
        self.train_usage = CodebookUsage(self.tokenizer.vocab_size, usage_buffer) if discrete else None
        self.val_usage = CodebookUsage(self.tokenizer.vocab_size, usage_buffer) if discrete else None

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.perceptual_weight > 0 and not self._perceptual:
            self._perceptual.append(PerceptualLoss(self.hparams.perceptual_pretrained))

    def _make_discriminator(
        self, gan_weight: float, disc_channels: int, disc_layers: int, disc_kwargs: dict[str, Any]
    ) -> tuple[torch.nn.Module | None, bool]:
        """(discriminator, whether it is the tokenizer's own): None without the GAN, the tokenizer's own
        when `make_discriminator` gives one, else the image PatchGAN (refused for audio)."""
        if gan_weight <= 0:
            return None, False
        own = self.tokenizer.make_discriminator(**disc_kwargs)
        if own is not None:
            return own, True
        modality = self.tokenizer.modality
        if modality not in FRAME_MODALITIES:
            raise ConfigError(
                f"gan_weight > 0 needs a discriminator: the {self.tokenizer.name} {modality} tokenizer has "
                "none of its own (make_discriminator returns None) and the PatchGAN is an image loss; "
                "set gan_weight: 0"
            )
        return PatchDiscriminator(self.tokenizer.in_channels, disc_channels, disc_layers), False

    def configure_optimizers(self):
        hp = self.hparams
        trained = self.tokenizer.decoder if hp.trainable == "decoder" else self.tokenizer
        optimizers = [adamw(trained, hp.lr, hp.betas, hp.weight_decay)]
        if self.discriminator is not None:
            optimizers.append(adamw(self.discriminator, hp.lr, hp.betas, hp.weight_decay))
        total = self.trainer.estimated_stepping_batches
        schedulers = [
            scheduled(opt, hp.warmup_steps, total, hp.lr_schedule, hp.min_lr_ratio) for opt in optimizers
        ]
        return optimizers, schedulers

    def training_step(self, batch: dict[str, torch.Tensor] | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every file of the batch was unreadable (skipped and counted by the data)
            return None
        x = model_inputs(batch)  # [B, C, H, W] or [B, C, T, H, W]
        if self.tokenizer.modality in FRAME_MODALITIES:  # exports record it: generators are checked on it
            self.tokenizer.trained_image_size = int(x.shape[-2])
        optimizers, schedulers = _as_list(self.optimizers()), _as_list(self.lr_schedulers())
        use_gan = self.discriminator is not None and self.global_step >= self.hparams.gan_start_step

        self.tokenizer.set_progress(self.global_step / max(self.trainer.estimated_stepping_batches, 1))
        recon, ids, aux_loss = self._autoencode(batch, x)  # [B, C, H, W], [B, h, w], scalar
        losses = {**self._reconstruction_losses(recon, x), "aux_loss": aux_loss}
        if self._perceptual:
            losses["perceptual"] = self.hparams.perceptual_weight * self._perceptual_loss(recon, x)
        with self.toggled_optimizer(optimizers[0]):  # no gradients into the discriminator here
            if use_gan:
                losses.update(self._generator_adversarial_losses(recon, x))
            loss = sum(losses.values())
            self._step(optimizers[0], schedulers[0], loss, counts=True)

        if use_gan:
            losses["d_loss"] = self._discriminator_loss(x, recon.detach())
            self._step(optimizers[1], schedulers[1], losses["d_loss"], counts=False)

        self._log_train(losses, loss, ids, x.shape[0], batch_idx)
        return loss

    def _generator_adversarial_losses(self, recon: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The autoencoder's weighted adversarial terms: {"g_adv"} for the PatchGAN (VQGAN's hinge), plus
        "g_fm" for a tokenizer's own discriminator when it returns features (EnCodec's losses)."""
        gan_weight = self.hparams.gan_weight
        if not self.own_discriminator:
            return {"g_adv": gan_weight * hinge_g_loss(self.discriminator(as_frames(recon)))}
        fake_logits, fake_feats = self._judge(recon)
        losses = {"g_adv": gan_weight * multiscale_hinge_g_loss(fake_logits)}
        if self.fm_weight > 0 and has_features(fake_feats):
            with torch.no_grad():  # the targets: real features carry no gradient
                _, real_feats = self._judge(x)
            losses["g_fm"] = self.fm_weight * feature_matching_loss(real_feats, fake_feats)
        return losses

    def _discriminator_loss(self, x: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """The discriminator's hinge loss on real `x` and detached reconstructions `fake`."""
        if not self.own_discriminator:
            logits_real = self.discriminator(as_frames(x))  # [B(*T), 1, H', W']
            logits_fake = self.discriminator(as_frames(fake))  # [B(*T), 1, H', W']
            return hinge_d_loss(logits_real, logits_fake)
        return multiscale_hinge_d_loss(self._judge(x)[0], self._judge(fake)[0])

    def _judge(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list]:
        """(logits, features) of the tokenizer's own discriminator, checked against the contract."""
        out = self.discriminator(x)
        if not (isinstance(out, tuple | list) and len(out) == 2 and isinstance(out[0], list | tuple)):
            raise TypeError(
                f"the discriminator of the {self.tokenizer.name} tokenizer must return (logits list, "
                f"features list) (see Tokenizer.make_discriminator), got {type(out).__name__}"
            )
        return list(out[0]), list(out[1])

    def _reconstruction_losses(self, recon: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tokenizer's own named terms where it has them (audio: mel, STFT), else the pixel loss."""
        own = getattr(self.tokenizer, "reconstruction_losses", None)
        return own(recon, x) if own is not None else {"rec_loss": self.recon_loss(recon, x)}

    def _autoencode(self, batch: dict[str, torch.Tensor], x: torch.Tensor):
        """(recon, ids, aux loss): decoded from the batch's own tokens when post-training the decoder."""
        if self.hparams.trainable == "decoder" and "tokens" in batch:
            tokens = batch["tokens"].long()
            return self.tokenizer.decode(tokens), tokens, x.new_zeros(())
        return self.tokenizer(x)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.trainable == "decoder":  # frozen parts stay in eval mode: no codebook updates
            self.tokenizer.eval().decoder.train(mode)
        return self

    def validation_step(self, batch: dict[str, torch.Tensor] | None, batch_idx: int) -> None:
        self._log_reconstruction_metrics(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor] | None, batch_idx: int) -> None:
        self._log_reconstruction_metrics(batch, "test")

    def _log_reconstruction_metrics(self, batch: dict[str, torch.Tensor] | None, split: str) -> None:
        """Reconstruction losses and PSNR as `{split}/{name}` epoch means; code ids feed the usage."""
        if batch is None:
            return
        x = model_inputs(batch)  # [B, C, H, W] or [B, C, T, H, W]
        recon, ids, _ = self._autoencode(batch, x)  # [B, C, H, W], [B, h, w]
        kwargs = {"on_epoch": True, "batch_size": x.shape[0], "sync_dist": True}
        for name, value in self._reconstruction_losses(recon, x).items():
            self.log(f"{split}/{name}", value, prog_bar=True, **kwargs)
        self.log(f"{split}/psnr", psnr(recon, x), prog_bar=True, **kwargs)
        if self.val_usage is not None:
            self.val_usage.update(ids)

    def predict_step(self, batch: dict[str, torch.Tensor] | None, batch_idx: int) -> dict | None:
        """Reconstructions of the batch's inputs: {modality: [B, ...] in [-1, 1]} (+ "sample_rate" for
        audio), what `PredictionWriter` writes."""
        if batch is None:
            return None
        x = model_inputs(batch)
        recon = self._autoencode(batch, x)[0].float().clamp(-1, 1)
        modality = self.tokenizer.modality
        if modality == "audio":
            return {"audio": recon, "sample_rate": self.tokenizer.sample_rate}
        return {modality: recon}

    # validation and test share one usage buffer: the two loops never run at the same time
    def on_validation_epoch_start(self) -> None:
        self._reset_usage()

    def on_test_epoch_start(self) -> None:
        self._reset_usage()

    def on_validation_epoch_end(self) -> None:
        self._log_usage("val")

    def on_test_epoch_end(self) -> None:
        self._log_usage("test")

    def _reset_usage(self) -> None:
        if self.val_usage is not None:
            self.val_usage.reset()

    def _log_usage(self, split: str) -> None:
        if self.val_usage is not None and self.val_usage.count:
            self.log(f"{split}/usage", self.val_usage.compute(), prog_bar=True)

    def on_train_end(self) -> None:
        export_dir = self.hparams.export_dir
        if export_dir and self.trainer.is_global_zero:
            # data-derived statistics (e.g. a continuous latent's scale) are fitted on all train data:
            # the training loader shuffles and drops the last batch, so read its dataset in order
            loader = self.trainer.train_dataloader
            loader = DataLoader(loader.dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn)
            batches = (model_inputs(b).to(self.device) for b in loader if b is not None)
            self.tokenizer.eval().fit_statistics(batches)
            self.tokenizer.save_pretrained(export_dir)
            print(f"tokenizer saved to {Path(export_dir).resolve()}")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer_config"] = self.tokenizer.saved_config()  # `mmar export` needs no paths

    def _step(self, optimizer, scheduler, loss: torch.Tensor, counts: bool) -> None:
        """Backward, clip, step and advance the warm-up for one optimiser.

        Only the autoencoder's step (`counts=True`) advances `global_step`: the discriminator is stepped
        through the strategy directly, bypassing the LightningOptimizer hook that would count it too
        (Lightning issue #17958), so `trainer.max_steps` and `gan_start_step` count batches.
        """
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.hparams.grad_clip > 0:
            self.clip_gradients(
                optimizer, gradient_clip_val=self.hparams.grad_clip, gradient_clip_algorithm="norm"
            )
        if counts:
            optimizer.step()
        else:
            self.trainer.strategy.optimizer_step(optimizer.optimizer, closure=lambda: None)
        scheduler.step()

    def _perceptual_loss(self, recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        perceptual = self._perceptual[0]
        if next(perceptual.parameters()).device != x.device:
            perceptual.to(x.device)
        return perceptual(as_frames(recon), as_frames(x))

    def _log_train(
        self,
        losses: dict[str, torch.Tensor],
        loss: torch.Tensor,
        ids: torch.Tensor,
        batch_size: int,
        idx: int,
    ) -> None:
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch_size)
        for name, value in losses.items():
            self.log(f"train/{name}", value.detach(), batch_size=batch_size)
        if self.train_usage is not None:
            self.train_usage.update(ids)
            if idx % self.trainer.log_every_n_steps == 0:  # compute() syncs with the device
                self.log("train/usage", self.train_usage.compute(), prog_bar=True, batch_size=batch_size)


INPUT_KEYS = ("image", "video", "audio")


def model_inputs(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The tensor a tokenizer encodes: batch["image"] [B, C, H, W], batch["video"] [B, C, T, H, W] or
    batch["audio"] [B, C, samples]."""
    for key in INPUT_KEYS:
        if key in batch:
            return batch[key]
    raise ConfigError(f"batch has none of the keys {INPUT_KEYS} (got {sorted(batch)}); check the DataModule")


def as_frames(x: torch.Tensor) -> torch.Tensor:
    """Images [B, C, H, W] unchanged; videos [B, C, T, H, W] as a batch of frames [B * T, C, H, W]."""
    return x.transpose(1, 2).flatten(0, 1) if x.ndim == 5 else x


def _as_list(x) -> list:
    """Lightning returns a bare optimiser / scheduler when there is one, a list otherwise."""
    return list(x) if isinstance(x, list | tuple) else [x]
