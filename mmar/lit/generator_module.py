"""GeneratorModule: trunk + prediction unit + conditioning over a frozen tokenizer.

Training batches are images ({"image", ...}), videos ({"video": [B, C, T, H, W], ...} with a video
tokenizer and `num_frames`) or audio ({"audio": [B, C, samples], ...} with an audio tokenizer and
`duration`), tokenised on the fly by the frozen tokenizer, or cached tokens ({"tokens", ...}, from
`scripts/cache_tokens.py`), with what the condition reads: "label" for a class condition (the default),
"caption" (or cached caption embeddings) for a text condition. Residual audio codes are laid out for the
unit by a code pattern (`mmar.code_patterns`: stacked per frame, flattened, or MusicGen's delay).
Hyper-parameters are primitives, so checkpoints load with `weights_only=True`; EMA comes from
Lightning's `EMAWeightAveraging` callback in the config, whose averaged weights are what the
checkpoint's state_dict holds.
"""

from __future__ import annotations

import dataclasses

import torch
from lightning.pytorch import LightningModule

from mmar.code_patterns import CodePattern
from mmar.conditioning import ConditionTokens, build_condition
from mmar.errors import ConfigError
from mmar.lit.batch_tokens import batch_tokens
from mmar.lit.embedded_test import embedded_test_metrics
from mmar.lit.optim import check_optimizer_settings, configure_adamw
from mmar.lit.predict_sampler import batch_sampler, checked_sampler_settings
from mmar.lit.tokenizer_module import model_inputs
from mmar.sampling import Sampler
from mmar.tokenizer import load_tokenizer
from mmar.trunk import AdaLNConditioned, PrefixPadded, Trunk, trunk_config
from mmar.units import UNITS, build_unit
from mmar.units.speculative import nearest_neighbours


class GeneratorModule(LightningModule):
    def __init__(
        self,
        tokenizer: str,
        unit: str = "next_token",
        unit_kwargs: dict | None = None,
        trunk: str = "debug",
        trunk_overrides: dict | None = None,
        image_size: int = 32,
        num_frames: int | None = None,
        duration: float | None = None,
        code_pattern: str = "stack",
        num_classes: int = 10,
        class_dropout: float = 0.1,
        condition: dict | None = None,
        vocab_size: int | None = None,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.05,
        warmup_steps: int = 100,
        lr_schedule: str = "cosine",
        min_lr_ratio: float = 0.1,
        sampler: dict | None = None,
        test_samples_per_class: int = 4,
    ):
        """A class- or text-conditional generator.

        Args:
            tokenizer: folder of a tokenizer saved with `save_pretrained` (frozen here).
            unit: prediction unit name (see `mmar.units.UNITS`).
            unit_kwargs: extra constructor arguments of the unit.
            trunk: trunk preset name (debug, S, B, L).
            trunk_overrides: TrunkConfig fields that override the preset, e.g. {"n_layer": 4}.
            image_size: training image (or video frame) size; with the tokenizer it fixes the token grid.
            num_frames: frames T per clip for a video tokenizer (grid (t, h, w), 3D RoPE); None for images.
            duration: seconds per clip for an audio tokenizer (grid (frames,), 1D RoPE); None otherwise.
            code_pattern: how residual codes [B, T, Q] are laid out for the unit (`mmar.code_patterns`):
                "stack" (Q ids per frame, a head with token_shape (Q,)), "flatten" (a (T, Q) grid of
                single ids) or "delay" (MusicGen's interleaving, next_token with the parallel head).
            num_classes: number of classes (a null class is added for guidance).
            class_dropout: probability of replacing a label with the null class in training.
            condition: the condition by class path, e.g. {"class_path": "mmar.conditioning.TextCondition",
                "init_args": {"max_length": 32}}; its width is the trunk's. None: a class condition
                of `num_classes` with `class_dropout`.
            vocab_size: expected tokenizer vocabulary; checked against the tokenizer when given.
            lr, betas, weight_decay: AdamW settings.
            warmup_steps: linear warmup steps.
            lr_schedule: "cosine" (to min_lr_ratio * lr) or "constant" after warmup.
            min_lr_ratio: final LR fraction of the cosine schedule.
            sampler: `mmar predict`'s sampling settings, fields of `mmar.sampling.Sampler` (e.g.
                {"cfg_scale": 2.0, "temperature": 1.0, "seed": 0}); the seed is offset by the batch index.
            test_samples_per_class: samples per class (per benchmark prompt for text-to-image) that
                `mmar test` draws with `sampler` at the end of the test epoch and scores with the data's
                embedded metric (`test/class_accuracy`, `test/fd`, ...); 0 reports the losses only.
        """
        super().__init__()
        check_optimizer_settings(lr, betas, weight_decay, warmup_steps, lr_schedule, min_lr_ratio)
        if image_size < 1 or (condition is None and num_classes < 1):
            raise ConfigError(
                f"model.image_size={image_size} and model.num_classes={num_classes} must be >= 1"
            )
        if unit not in UNITS:
            raise ConfigError(
                f"unknown prediction unit model.unit='{unit}'; registered units: {sorted(UNITS)}"
            )
        self.tokenizer = load_tokenizer(tokenizer).requires_grad_(False)
        self._neighbour_tables: dict[int, torch.Tensor] = {}  # LANTERN's, by k (the tokenizer is frozen)
        if self.tokenizer.variable_length and not getattr(UNITS[unit], "supports_padding", False):
            padded = sorted(name for name, cls in UNITS.items() if getattr(cls, "supports_padding", False))
            raise ConfigError(
                f"the {self.tokenizer.name} tokenizer at '{tokenizer}' gives variable-length padded tokens, "
                f"which the {unit} unit cannot model; use one of {padded}"
            )
        if self.tokenizer.kind not in UNITS[unit].token_kinds:
            raise ConfigError(
                f"the {unit} unit models {UNITS[unit].token_kinds} tokens but the tokenizer at '{tokenizer}' "
                f"is {self.tokenizer.kind}; pick a matching tokenizer or unit"
            )
        if vocab_size is not None and vocab_size != self.tokenizer.vocab_size:
            raise ConfigError(
                f"model.vocab_size={vocab_size} does not match the tokenizer at '{tokenizer}' "
                f"(vocabulary {self.tokenizer.vocab_size}); use the tokenizer the generator was trained with"
            )
        self.input_shape = self._input_shape(tokenizer, image_size, num_frames, duration)
        self.code_grid = self.tokenizer.grid(self.input_shape)  # the tokenizer's grid
        if self.tokenizer.modality != "audio":
            self.tokenizer.check_image_size(image_size, tokenizer)
        self.pattern = CodePattern(code_pattern, self.tokenizer.token_shape)
        self.grid, token_shape = self.pattern.grid(self.code_grid)  # the unit's grid
        if self.pattern.fixed(self.code_grid[0]) is not None and unit != "next_token":
            raise ConfigError(
                f"code_pattern '{code_pattern}' leaves cells that generation must not sample, which only "
                "the next_token unit handles; use next_token, or code_pattern: stack / flatten"
            )
        checked_sampler_settings(sampler)
        if test_samples_per_class < 0:
            raise ConfigError(
                f"model.test_samples_per_class={test_samples_per_class} must be >= 0 (0: test losses only)"
            )
        config = trunk_config(trunk, **(trunk_overrides or {}))
        self.trunk = Trunk(config)
        self.conditioning = build_condition(condition, config.d_model, num_classes, class_dropout)
        tokens = self.tokenizer  # discrete units size their heads by the vocabulary, continuous by channels
        token_size = (
            {"vocab_size": tokens.vocab_size}
            if tokens.kind == "discrete"
            else {"latent_dim": tokens.latent_dim}
        )
        self.unit = build_unit(
            unit, d_model=config.d_model, grid=self.grid, **token_size, **(unit_kwargs or {})
        )
        head_shape = getattr(getattr(self.unit, "head", None), "token_shape", token_shape)
        if tuple(head_shape) != tuple(token_shape):
            raise ConfigError(
                f"the tokenizer (code pattern {code_pattern}) gives {token_shape or 'one'} id(s) per grid "
                f"cell but the unit's head predicts {head_shape or 'one'}; choose a matching head in "
                "model.unit_kwargs (channel_ar or parallel with levels / channels = the ids per cell)"
            )
        self.save_hyperparameters()
        self.hparams.vocab_size = self.tokenizer.vocab_size  # checkpoints remember the vocabulary they need

    def _input_shape(
        self, path: str, image_size: int, num_frames: int | None, duration: float | None
    ) -> tuple[int, ...]:
        """(C, H, W) of an image tokenizer, (C, T, H, W) of a video tokenizer, (C, samples) of an audio
        tokenizer; ConfigError on a mismatch."""
        audio = self.tokenizer.modality == "audio"
        if audio != (duration is not None):
            fix = "set model.duration to the clips' length in seconds (e.g. 0.5)" if audio else "drop it"
            raise ConfigError(
                f"the tokenizer at '{path}' ({self.tokenizer.name}) is {self.tokenizer.modality} and "
                f"model.duration={duration}: {fix}"
            )
        if audio:
            samples = duration * self.tokenizer.sample_rate
            if duration <= 0 or abs(samples - round(samples)) > 1e-6:
                raise ConfigError(
                    f"model.duration={duration} s is not a positive whole number of samples at the "
                    f"tokenizer's {self.tokenizer.sample_rate} Hz"
                )
            return (self.tokenizer.in_channels, round(samples))
        video = self.tokenizer.modality == "video"
        if video and num_frames is None:
            raise ConfigError(
                f"the tokenizer at '{path}' ({self.tokenizer.name}) is a video tokenizer: set "
                "model.num_frames to the clips' frame count (e.g. 9)"
            )
        if not video and num_frames is not None:
            raise ConfigError(
                f"model.num_frames={num_frames} asks for a video generator but the tokenizer at '{path}' "
                f"({self.tokenizer.name}) is an image tokenizer; use a video tokenizer (video_fsq) or drop "
                "num_frames"
            )
        frames = (num_frames,) if video else ()
        return (self.tokenizer.in_channels, *frames, image_size, image_size)

    def train(self, mode: bool = True):
        super().train(mode)
        self.tokenizer.eval()  # frozen: never in training mode
        return self

    def tokens_of(self, batch: dict) -> torch.Tensor:
        """The unit's tokens [B, *grid] of a batch: cached tokens, or images (clips, audio) encoded by the
        tokenizer, laid out by the code pattern."""
        return self.pattern.apply(batch_tokens(batch, self.tokenizer, self.input_shape))

    def step_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        tokens, padding = self.tokens_of(batch), {}
        if self.tokenizer.variable_length:  # padded tokens: the unit also reads which ones are real
            tokens, padding = tokens.embeddings, {"valid": tokens.mask}
        cond = self.conditioning(self.conditioning.values_of(batch))
        unit_batch = self.unit.prepare(tokens, cond.tokens, **padding)
        trunk = self.conditioned_trunk(cond)
        hidden = trunk(unit_batch.inputs, unit_batch.positions, unit_batch.mask)
        return self.unit.loss(hidden, unit_batch)

    def training_step(self, batch: dict | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every file of the batch was unreadable (skipped and counted by the data)
            return None
        self.unit.set_progress(self.global_step / max(self.trainer.estimated_stepping_batches, 1))
        losses = self.step_losses(batch)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=True)
        return losses["loss"]

    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        self._log_eval_losses(batch, "val")

    def test_step(self, batch: dict | None, batch_idx: int) -> None:
        self._log_eval_losses(batch, "test")

    def on_test_epoch_end(self) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        metrics = embedded_test_metrics(self, datamodule, self.hparams.test_samples_per_class)
        self.log_dict({f"test/{k}": v for k, v in metrics.items()}, sync_dist=True)

    def _log_eval_losses(self, batch: dict | None, split: str) -> None:
        """The unit's losses on a held-out batch, as `{split}/{name}` epoch means."""
        if batch is None:
            return
        losses = self.step_losses(batch)
        self.log_dict({f"{split}/{k}": v for k, v in losses.items()}, prog_bar=True, sync_dist=True)

    @torch.no_grad()
    def generate(
        self, conditions, sampler: Sampler | None = None, layout=None, prefix: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Samples: conditions (labels [B], or B captions for a text condition) -> images [B, C, H, W] (videos
        [B, C, T, H, W]) in [-1, 1].

        `prefix` continues given tokens: the first k latent frames [B, k, h, w] of a video (or rows of an
        image), kept exactly (see `generate_tokens`). Variable-length tokenizers (subobject) generate the
        embeddings of a given geometry: `layout` is `tokenizer.encode(reference_images)`, whose segments,
        boxes and padding mask are kept.
        """
        if not self.tokenizer.variable_length:
            return self.tokenizer.decode(self.generate_tokens(conditions, sampler, prefix=prefix))
        if layout is None:
            raise ConfigError(
                f"the {self.tokenizer.name} tokenizer decodes embeddings onto a segmentation: pass "
                "layout=model.tokenizer.encode(reference_images) to generate"
            )
        embeddings = self.generate_tokens(conditions, sampler, valid=layout.mask.to(self.device))
        return self.tokenizer.decode(dataclasses.replace(layout.to(self.device), embeddings=embeddings))

    @torch.no_grad()
    def generate_tokens(
        self, conditions, sampler: Sampler | None = None, prefix: torch.Tensor | None = None, **unit_kwargs
    ) -> torch.Tensor:
        """Token grids: conditions (labels [B] or B captions) -> tokens [B, *grid]; `unit_kwargs` go to the
        unit's `generate` (e.g. `teacher` and `teacher_prob` for the next-token unit).

        With `prefix` (tokens of the first k slices of the grid's first axis, [B, k, *grid[1:]]: the first
        latent frames of a video, a continuation or image-to-video prompt) the output starts with exactly
        those tokens and the unit generates the rest conditioned on them."""
        sampler = sampler or Sampler()
        if sampler.speculative is not None:
            if not self.unit.supports_speculative:
                able = sorted(name for name, cls in UNITS.items() if cls.supports_speculative)
                raise ConfigError(
                    f"the {self.unit.name} unit has no speculative decoding; units that have: {able}"
                )
            if sampler.speculative == "lantern":
                unit_kwargs.setdefault("neighbours", self._code_neighbours(sampler.lantern_k))
        if prefix is not None:
            if not self.unit.supports_prefix:
                able = sorted(name for name, cls in UNITS.items() if cls.supports_prefix)
                raise ConfigError(
                    f"the {self.unit.name} unit cannot continue a prefix; units that can: {able}"
                )
            prefix = prefix.to(self.device)
            unit_kwargs["prefix"] = self.pattern.prefix(prefix)
        fixed = self.pattern.fixed(self.code_grid[0], prefix, self.device)
        if fixed is not None:  # entries of the layout known before sampling (empty or given) are set
            unit_kwargs["fixed"] = fixed
        cond = self.conditioning.for_sampling(conditions, sampler.guided)
        trunk = self.conditioned_trunk(cond)
        return self.pattern.revert(self.unit.generate(trunk, cond.tokens, self.grid, sampler, **unit_kwargs))

    def conditioned_trunk(self, cond: ConditionTokens) -> Trunk | PrefixPadded | AdaLNConditioned:
        """The trunk as a unit calls it for a batch of conditions (training, or sampling's CFG batch): the
        padded condition tokens hidden from attention, and with `adaln` every block modulated by the pooled
        condition (adaLN-Zero; the null rows by the null's)."""
        trunk = self.trunk.with_prefix_padding(cond.valid)  # padded caption tokens are never attended to
        return AdaLNConditioned(trunk, cond.pooled()) if self.trunk.config.adaln else trunk

    def _code_neighbours(self, k: int) -> torch.Tensor | None:
        """LANTERN's latent proximity: each code's k nearest codes in the tokenizer's latent space [V, k]
        (computed once per k), or None when the tokenizer has no code vectors of one id per grid cell (the
        unit then falls back to its input embeddings)."""
        tokenizer = self.tokenizer
        if (
            not hasattr(tokenizer, "codes_from_ids")
            or tuple(tokenizer.token_shape) != ()
            or self.pattern.name != "stack"
        ):
            return None
        if k not in self._neighbour_tables:
            ids = torch.arange(tokenizer.vocab_size, device=self.device).view(1, 1, -1)  # (1, 1, V): one row
            codes = tokenizer.codes_from_ids(ids)[0, :, 0].T  # (V, Z)
            self._neighbour_tables[k] = nearest_neighbours(codes, k)
        return self._neighbour_tables[k]

    @torch.no_grad()
    def continue_clips(
        self, clips: torch.Tensor, conditions, given: int = 1, sampler: Sampler | None = None
    ) -> torch.Tensor:
        """Continuation of video or audio clips (video prediction, image-to-video, audio continuation):
        clips [B, C, T, H, W] or [B, C, samples] in [-1, 1] -> clips of the same shape whose start is the
        input's own, bit for bit, and the rest generated.

        The clips are encoded and the tokens of their first `given` latent frames are the prefix the unit
        continues (`generate_tokens`); the output keeps the input frames (samples) those latent frames code
        from the input: `tokenizer.frames_of(given)` video frames (1 + (k - 1) * t_down for a causal video
        tokenizer), `given * hop` audio samples; the rest is decoded from every token, given and generated."""
        modality = self.tokenizer.modality
        if modality not in ("video", "audio"):
            raise ConfigError(
                "continuation needs a video or audio generator (model.num_frames / model.duration)"
            )
        frames = self.code_grid[0]
        if not 0 < given < frames:
            raise ConfigError(
                f"given={given} latent frames must lie in [1, {frames - 1}]: the clips have {frames} latent "
                "frames and at least one must be generated"
            )
        clips = clips.to(self.device)
        tokens = batch_tokens({modality: clips}, self.tokenizer, self.input_shape)  # (B, frames, ...)
        generated = self.generate_tokens(conditions, sampler, prefix=tokens[:, :given])
        out = self.tokenizer.decode(generated).float().clamp(-1, 1)
        kept = self.tokenizer.frames_of(given) if modality == "video" else given * self.tokenizer.downsample
        out[:, :, :kept] = clips[:, :, :kept].to(out.dtype)
        return out

    def predict_step(self, batch: dict | None, batch_idx: int) -> dict | None:
        """Samples for the batch's conditions with the `sampler` settings: {modality: [B, ...] in [-1, 1]}
        (+ "sample_rate" for audio), what `PredictionWriter` writes. A variable-length tokenizer draws on
        the segmentation of the batch's own images."""
        if batch is None:  # every file of the batch was unreadable
            return None
        sampler = batch_sampler(self.hparams.sampler, batch_idx)
        layout = None
        if self.tokenizer.variable_length:
            layout = self.tokenizer.encode(model_inputs(batch).to(self.device))
        samples = self.generate(self.conditioning.values_of(batch), sampler, layout=layout).float()
        modality = self.tokenizer.modality
        if modality == "audio":
            return {"audio": samples, "sample_rate": self.tokenizer.sample_rate}
        return {modality: samples}

    def on_fit_start(self) -> None:
        rate = getattr(self.trainer.datamodule, "hparams", {}).get("sample_rate")  # audio datamodules'
        if self.tokenizer.modality == "audio" and rate is not None and rate != self.tokenizer.sample_rate:
            raise ConfigError(
                f"the data is at {rate} Hz but the generator's {self.tokenizer.name} tokenizer codes "
                f"{self.tokenizer.sample_rate} Hz audio; set data.init_args.sample_rate to "
                f"{self.tokenizer.sample_rate}"
            )
        meta = getattr(self.trainer.datamodule, "meta", None) or {}
        if meta.get("vocab_size", self.tokenizer.vocab_size) != self.tokenizer.vocab_size:
            raise ConfigError(
                f"the token cache was built with a vocabulary of {meta['vocab_size']} but the generator's "
                f"tokenizer has {self.tokenizer.vocab_size}; rebuild the cache with scripts/cache_tokens.py"
            )
        text = (
            getattr(self.conditioning, "encoder_name", None),
            getattr(self.conditioning, "max_length", None),
        )
        cached = meta.get("text_encoder"), meta.get("max_length")
        if cached[0] is not None and cached != text:
            raise ConfigError(
                f"the token cache holds caption embeddings of encoder {cached[0]} (max_length {cached[1]}) "
                f"but the generator's condition uses {text[0]} (max_length {text[1]}); match them or "
                "rebuild the cache with scripts/cache_tokens.py --text-encoder ... --max-length ..."
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokenizer_config"] = self.tokenizer.saved_config()  # `mmar export` needs no paths

    def configure_optimizers(self):
        return configure_adamw(self, torch.nn.ModuleList([self.trunk, self.conditioning, self.unit]))
