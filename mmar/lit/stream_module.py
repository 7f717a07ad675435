"""StreamModule: next-token prediction over one stream of text and image tokens.

A text language model when given only a text tokenizer; with a frozen image tokenizer too, the unified
model of Emu3 (Wang et al. 2024) and Lumina-mGPT (Liu et al. 2024): one trunk, one vocabulary
(`mmar.stream`), a loss on every generated token with a weight per modality, and from one checkpoint
text-to-image (CFG by dropping the text), captioning and text continuation. It reuses the trunk, the
categorical head (embedding, fused linear cross-entropy), the `Sampler` and the KV cache of the units.

Batches: packed text {"tokens": long [B, L]} (`TextDataModule`), or captioned images {"caption":
list[str]} with {"tokens": long [B, h, w]} (a token cache) or {"image": [B, C, H, W]} (encoded here).
Each captioned item becomes a text-to-image sequence with probability `t2i_fraction`, else a
captioning one; a text-to-image sequence loses its text with probability `text_dropout`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule

from mmar.errors import ConfigError
from mmar.heads.categorical import CategoricalHead
from mmar.kernels import Causal, linear_cross_entropy
from mmar.lit.batch_tokens import batch_tokens
from mmar.lit.optim import check_optimizer_settings, configure_adamw
from mmar.lit.predict_sampler import batch_sampler, checked_sampler_settings
from mmar.sampling import Sampler
from mmar.stream import IMAGE, MODALITIES, TEXT, StreamLayout, StreamVocab, pad
from mmar.text_tokenizer import TextTokenizer
from mmar.tokenizer import load_tokenizer
from mmar.trunk import Trunk, trunk_config


class StreamModule(LightningModule):
    def __init__(
        self,
        text_tokenizer: str,
        image_tokenizer: str | None = None,
        image_size: int = 32,
        trunk: str = "debug",
        trunk_overrides: dict | None = None,
        context_length: int = 256,
        loss_weights: dict[str, float] | None = None,
        t2i_fraction: float = 0.5,
        text_dropout: float = 0.1,
        text_vocab_size: int | None = None,
        text_tokenizer_digest: str | None = None,
        image_vocab_size: int | None = None,
        lr: float = 3e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.05,
        warmup_steps: int = 100,
        lr_schedule: str = "cosine",
        min_lr_ratio: float = 0.1,
        sampler: dict | None = None,
        predict_prompt_tokens: int = 8,
        predict_max_tokens: int = 32,
    ):
        """A text LM, or a unified text + image model.

        Args:
            text_tokenizer: folder (or tokenizer.json) of a `TextTokenizer` (scripts/train_text_tokenizer.py).
            image_tokenizer: folder of a discrete image tokenizer (frozen); None for a text-only model.
            image_size: training image size; with the image tokenizer it fixes the token grid.
            trunk: trunk preset name (debug, S, B, L).
            trunk_overrides: TrunkConfig fields that override the preset.
            context_length: the longest sequence the model reads (prompts plus generated tokens).
            loss_weights: weight of each modality's tokens in the loss, e.g. {"text": 1.0, "image": 1.0}
                (missing: 1.0); special tokens count as text.
            t2i_fraction: share of captioned items laid out text-to-image (the rest: captioning).
            text_dropout: probability that a text-to-image item loses its text (the CFG null).
            text_vocab_size, text_tokenizer_digest, image_vocab_size: what the checkpoint was trained
                with, checked against the tokenizers when given (checkpoints record them).
            lr, betas, weight_decay, warmup_steps, lr_schedule, min_lr_ratio: AdamW and its schedule.
            sampler: `mmar predict`'s sampling settings, fields of `mmar.sampling.Sampler` (e.g.
                {"cfg_scale": 3.0, "seed": 0}; guidance applies to text-to-image only); the seed is offset
                by the batch index.
            predict_prompt_tokens: `mmar predict` on packed text continues the first this many tokens
                of each row.
            predict_max_tokens: most tokens a text continuation of `mmar predict` adds.
        """
        super().__init__()
        check_optimizer_settings(lr, betas, weight_decay, warmup_steps, lr_schedule, min_lr_ratio)
        checked_sampler_settings(sampler)
        if predict_prompt_tokens < 1 or predict_max_tokens < 1:
            raise ConfigError(
                f"predict_prompt_tokens={predict_prompt_tokens} and predict_max_tokens={predict_max_tokens} "
                "must be >= 1"
            )
        weights = {TEXT: 1.0, IMAGE: 1.0, **(loss_weights or {})}
        if set(weights) - set(MODALITIES) or any(w < 0 for w in weights.values()):
            raise ConfigError(f"loss_weights={loss_weights}: keys must be in {MODALITIES}, values >= 0")
        if not 0 <= t2i_fraction <= 1 or not 0 <= text_dropout < 1:
            raise ConfigError(f"t2i_fraction={t2i_fraction} must lie in [0, 1], text_dropout in [0, 1)")
        self.text_tokenizer = TextTokenizer.load(text_tokenizer)
        found = (self.text_tokenizer.vocab_size, self.text_tokenizer.digest)
        if text_vocab_size is not None and (text_vocab_size, text_tokenizer_digest) != found:
            raise ConfigError(
                f"the text tokenizer at '{text_tokenizer}' (vocabulary {found[0]}, digest {found[1]}) is not "
                f"the one this model was trained with (vocabulary {text_vocab_size}, digest "
                f"{text_tokenizer_digest}); pass the model's own tokenizer"
            )
        self.image_tokenizer, grid = None, ()
        if image_tokenizer is not None:
            self.image_tokenizer = self._load_image_tokenizer(image_tokenizer, image_vocab_size)
            self.image_tokenizer.check_image_size(image_size, image_tokenizer)
            self.input_shape = (self.image_tokenizer.in_channels, image_size, image_size)
            grid = tuple(self.image_tokenizer.grid(self.input_shape))
        image_vocab = self.image_tokenizer.vocab_size if self.image_tokenizer is not None else 0
        self.vocab = StreamVocab(self.text_tokenizer.vocab_size, image_vocab)
        self.layout = StreamLayout(self.vocab, grid)
        self.loss_weights = weights
        config = trunk_config(trunk, **(trunk_overrides or {}))
        if config.adaln:
            raise ConfigError(
                "trunk_overrides.adaln conditions every block on a class or caption vector, which a stream "
                "model does not have (its prompts are tokens of the stream); drop adaln"
            )
        self.trunk = Trunk(config)
        self.head = CategoricalHead(config.d_model, self.vocab.size)
        self.save_hyperparameters()
        self.hparams.update(  # checkpoints remember the tokenizers they need
            text_vocab_size=found[0], text_tokenizer_digest=found[1], image_vocab_size=image_vocab or None
        )

    @staticmethod
    def _load_image_tokenizer(path: str, expected_vocab: int | None):
        tokenizer = load_tokenizer(path).requires_grad_(False)
        if tokenizer.kind != "discrete" or tokenizer.variable_length or tuple(tokenizer.token_shape):
            raise ConfigError(
                f"the image tokenizer at '{path}' ({tokenizer.name}) does not give one discrete id per grid "
                "cell; the unified stream needs a VQ/LFQ/FSQ tokenizer"
            )
        if tokenizer.modality != "image":
            raise ConfigError(
                f"the tokenizer at '{path}' ({tokenizer.name}) is a {tokenizer.modality} tokenizer; the "
                "unified stream holds images (2D grids): pass an image tokenizer"
            )
        if expected_vocab is not None and expected_vocab != tokenizer.vocab_size:
            raise ConfigError(
                f"the image tokenizer at '{path}' has {tokenizer.vocab_size} codes but the model was trained "
                f"with {expected_vocab}; pass the model's own image tokenizer"
            )
        return tokenizer

    @property
    def image_steps(self) -> int:
        """Trunk passes of text-to-image generation: one per image token."""
        return math.prod(self.layout.grid)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # `mmar export` rebuilds the tokenizers from the checkpoint alone, without the training paths
        checkpoint["text_tokenizer_json"] = self.text_tokenizer.tokenizer.to_str()
        if self.image_tokenizer is not None:
            checkpoint["tokenizer_config"] = self.image_tokenizer.saved_config()

    def on_fit_start(self) -> None:
        meta = getattr(self.trainer.datamodule, "meta", None) or {}
        digest = meta.get("text_tokenizer_digest")
        if digest is not None and digest != self.text_tokenizer.digest:
            raise ConfigError(
                f"the data was tokenised with the text tokenizer at '{meta.get('text_tokenizer')}' (digest "
                f"{digest}) but the model uses '{self.hparams.text_tokenizer}' (digest "
                f"{self.text_tokenizer.digest}); point data and model at the same tokenizer"
            )

    def train(self, mode: bool = True):
        super().train(mode)
        if self.image_tokenizer is not None:
            self.image_tokenizer.eval()  # frozen: never in training mode
        return self

    # ---------------------------------------------------------------- training

    def sequences_of(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch as teacher-forced stream sequences: (ids [B, T], positions [B, T, A], real [B, T])."""
        if "caption" in batch:
            return self._captioned_sequences(batch)
        tokens = batch.get("tokens")
        if tokens is None or tokens.ndim != 2:
            raise ConfigError(
                f"a StreamModule reads packed text {{'tokens': [B, L]}} or captioned images ('caption' with "
                f"'tokens' or 'image'), but the batch has {sorted(batch)}; use TextDataModule or a captioned "
                "token cache"
            )
        if tokens.numel() and tokens.max() >= self.vocab.text:
            raise ConfigError(
                f"text id {tokens.max().item()} is outside the text vocabulary ({self.vocab.text}); the data "
                "was tokenised with another text tokenizer than the model's"
            )
        positions = self.layout.text_positions(0, tokens.shape[1], tokens.device)
        return tokens.long(), positions.expand(len(tokens), -1, -1), torch.ones_like(tokens, dtype=torch.bool)

    def _captioned_sequences(self, batch: dict):
        if self.image_tokenizer is None:
            raise ConfigError(
                "captioned images need a unified model: set model.image_tokenizer to a discrete image "
                "tokenizer (this StreamModule is a text-only LM)"
            )
        image = self.image_tokens(batch).flatten(1).cpu()  # (B, N)
        text = self.text_tokenizer.encode_batch(list(batch["caption"]))
        order = torch.rand(len(image)) < self.hparams.t2i_fraction  # True: text-to-image
        drop = torch.rand(len(image)) < self.hparams.text_dropout
        sequences = [
            self.layout.text_to_image(None if dropped else ids, img)
            if t2i
            else self.layout.captioning(img, ids)
            for ids, img, t2i, dropped in zip(text, image, order.tolist(), drop.tolist())
        ]
        ids, positions, real = pad(sequences, self.vocab.eos)
        return ids.to(self.device), positions.to(self.device), real.to(self.device)

    def image_tokens(self, batch: dict) -> torch.Tensor:
        """Image token grid [B, *grid] of a captioned batch: cached tokens, or images encoded here."""
        tokens = batch_tokens(batch, self.image_tokenizer, self.input_shape)
        if tuple(tokens.shape[1:]) != self.layout.grid:
            raise ConfigError(
                f"cached tokens of grid {tuple(tokens.shape[1:])} do not match the model's grid "
                f"{self.layout.grid}; set model.image_size to the size the tokenizer was trained on"
            )
        return tokens

    def hidden_states(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, T, D] of the whole sequences (causal)."""
        return self.trunk(self.head.embed(ids), positions, Causal())

    def step_losses(self, batch: dict) -> dict[str, torch.Tensor]:
        """Cross-entropy of every generated token, each modality's tokens weighted by `loss_weights`, with
        per-modality means (and token counts, for exact epoch means) alongside.

        A token is scored over its modality's id range, the distribution decoding samples from (Janus's
        separate text and image heads, here slices of one output matrix): training sees what sampling
        sees and no capacity goes to telling the modalities apart. BOS, BOI and EOI are never generated
        (the layout puts them), so they are inputs only."""
        return self.sequence_losses(*self.sequences_of(batch))

    def sequence_losses(self, ids: torch.Tensor, positions: torch.Tensor, real: torch.Tensor) -> dict:
        """`step_losses` of right-padded sequences: ids [B, T], positions [B, T, A], real [B, T]."""
        if ids.shape[1] > self.hparams.context_length:
            raise ConfigError(
                f"a training sequence of {ids.shape[1]} tokens exceeds model.context_length="
                f"{self.hparams.context_length}; raise it or shorten the data's sequences"
            )
        hidden = self.hidden_states(ids[:, :-1], positions[:, :-1])  # (B, T-1, D)
        targets, real = ids[:, 1:], real[:, 1:]  # (B, T-1)
        scored = {m: real & self.vocab.in_range(targets, m) for m in MODALITIES if self.vocab.can_emit(m)}
        total = sum(selected.sum() for selected in scored.values()).clamp(min=1)
        losses, loss = {}, hidden.new_zeros(())
        for modality, selected in scored.items():
            count = selected.sum()
            if count == 0:
                continue
            lo, hi = self.vocab.emits(modality)
            weight = self.head.proj.weight[lo:hi]  # (hi - lo, D)
            mean = linear_cross_entropy(hidden[selected], weight, targets[selected] - lo)
            loss = loss + self.loss_weights[modality] * mean * count / total
            losses[f"{modality}_loss"], losses[f"{modality}_tokens"] = mean, count
        losses["loss"] = loss
        return losses

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        losses = self.step_losses(batch)
        self.log_dict(
            {f"train/{k}": v for k, v in losses.items() if not k.endswith("_tokens")}, prog_bar=True
        )
        return losses["loss"]

    # validation and test: the same token-weighted sums (the two loops never run at the same time)
    def on_validation_epoch_start(self) -> None:
        self._reset_eval_sums()

    def on_test_epoch_start(self) -> None:
        self._reset_eval_sums()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._accumulate_eval_losses(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._accumulate_eval_losses(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_eval_means("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval_means("test")

    def _reset_eval_sums(self) -> None:
        self._val_sums = torch.zeros(len(MODALITIES), 2, dtype=torch.float64, device=self.device)

    def _accumulate_eval_losses(self, batch: dict, split: str) -> None:
        losses = self.step_losses(batch)
        self.log(f"{split}/loss", losses["loss"], prog_bar=True, sync_dist=True)
        for i, modality in enumerate(MODALITIES):
            if f"{modality}_loss" in losses:
                count = losses[f"{modality}_tokens"]
                self._val_sums[i] += torch.stack([losses[f"{modality}_loss"] * count, count.double()])

    def _log_eval_means(self, split: str) -> None:
        """Token-weighted epoch means per modality, and the text perplexity exp(mean text cross-entropy)."""
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
        for i, modality in enumerate(MODALITIES):
            if sums[i, 1] > 0:
                mean = (sums[i, 0] / sums[i, 1]).float()
                self.log(f"{split}/{modality}_loss", mean)
                if modality == TEXT:
                    self.log(f"{split}/perplexity", mean.exp(), prog_bar=True)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        """`mmar predict` with the `sampler` settings: captioned batches give text-to-image samples
        {"image": [B, C, H, W]} (a unified model), packed text gives continuations of each row's first
        `predict_prompt_tokens` tokens {"text": [prompt + continuation, ...]}."""
        sampler = batch_sampler(self.hparams.sampler, batch_idx)
        if "caption" in batch and self.image_tokenizer is not None:
            return {"image": self.generate(list(batch["caption"]), sampler).float().clamp(-1, 1)}
        ids, n = self.sequences_of(batch)[0].cpu(), self.hparams.predict_prompt_tokens
        specials = max(self.text_tokenizer.bos_id, self.text_tokenizer.eos_id)  # ids 0, 1: not prompt text
        prompts = [self.text_tokenizer.decode(row[row > specials][:n].tolist()) for row in ids]
        continued = self.continue_text(prompts, sampler, self.hparams.predict_max_tokens)
        return {"text": [prompt + text for prompt, text in zip(prompts, continued)]}

    def configure_optimizers(self):
        return configure_adamw(self, torch.nn.ModuleList([self.trunk, self.head]))

    # ---------------------------------------------------------------- generation

    @torch.no_grad()
    def decode(
        self,
        prompts: list[tuple[torch.Tensor, torch.Tensor]],
        new_positions: torch.Tensor,
        modality: str,
        sampler: Sampler,
        stop_at_eos: bool = False,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Continue prompts token by token with a KV cache.

        Args:
            prompts: (ids [n_i], positions [n_i, A]) per row; with guidance, B conditional rows then B
                null rows (the CFG batch `cat([cond, null])`), each generated token fed to both.
            new_positions: [rows, m, A] RoPE positions of the m tokens to generate.
            modality: what the new tokens are; logits cover only that modality's id range.
            sampler: temperature, top-k/p, min-p, CFG scale and schedule, seed.
            stop_at_eos: stop once every row has emitted EOS (later tokens of a row become EOS).
            use_cache: False recomputes the whole sequence every step (the reference the cache matches).

        Returns:
            ids [B, m'] (m' <= m when stopped early), in the stream vocabulary.
        """
        if sampler.speculative is not None:
            raise ConfigError(
                "the unified stream model decodes one token per pass; speculative decoding is for the "
                "next_token and random_order generators: drop --speculative"
            )
        ids, positions, valid = (t.to(self.device) for t in pad(prompts, self.vocab.eos, left=True))
        rows, n = ids.shape
        if n + new_positions.shape[1] > self.hparams.context_length:
            raise ConfigError(
                f"a prompt of {n} tokens plus {new_positions.shape[1]} new ones exceeds the model's context "
                f"of {self.hparams.context_length} tokens; shorten the prompt or generate fewer tokens"
            )
        positions = torch.cat([positions, new_positions.to(self.device)], dim=1)  # (rows, n + m, A)
        trunk = self.trunk.with_prefix_padding(valid)  # left padding is never attended to
        m = new_positions.shape[1]
        cache = self.trunk.make_cache(rows, n + m - 1, self.device) if use_cache else None
        lo, hi = self.vocab.emits(modality)
        weight = self.head.proj.weight[lo:hi]  # (hi - lo, D): this modality's logits only
        generator = sampler.generator(self.device)
        seq, out = self.head.embed(ids), []  # seq: what the next trunk call sees
        finished = torch.zeros(rows // (2 if sampler.guided else 1), dtype=torch.bool, device=self.device)
        for i in range(m):
            start = cache.length if use_cache else 0
            hidden = trunk(seq, positions[:, start : start + seq.shape[1]], Causal(), cache=cache)
            token = sampler.pick(F.linear(hidden[:, -1], weight), i / m, generator) + lo  # (B,)
            if stop_at_eos:
                token = token.masked_fill(finished, self.vocab.eos)
                finished |= token == self.vocab.eos
            out.append(token)
            if i == m - 1 or (stop_at_eos and bool(finished.all())):
                break
            fed = self.head.embed(torch.cat([token, token]) if sampler.guided else token)[:, None]
            seq = fed if use_cache else torch.cat([seq, fed], dim=1)
        return torch.stack(out, dim=1)

    def _text_ids(self, texts: list[str], what: str) -> list[list[int]]:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise ConfigError(f"{what} must be a list of strings")
        if any(not t.strip() for t in texts):
            raise ConfigError(f"empty {what[:-1]}: every {what[:-1]} needs some text")
        return self.text_tokenizer.encode_batch(list(texts))

    @torch.no_grad()
    def generate_image_tokens(self, captions: list[str], sampler: Sampler | None = None) -> torch.Tensor:
        """Text-to-image: captions -> image token grids [B, *grid]; guidance contrasts each caption with
        the dropped text ([BOS, BOI]), as Emu3 does."""
        sampler = sampler or Sampler()
        if self.image_tokenizer is None:
            raise ConfigError("this StreamModule is a text-only LM; it has no image tokenizer to draw with")
        prompts = [self.layout.text_to_image(ids) for ids in self._text_ids(captions, "captions")]
        if sampler.guided:
            prompts += [self.layout.text_to_image(None)] * len(captions)
        starts = [self.layout.next_position(pos) for _, pos in prompts]
        grid = self.layout.image_positions(0, self.device)  # (N, 2)
        new_positions = torch.stack([grid + s for s in starts])  # (rows, N, 2)
        ids = self.decode(prompts, new_positions, IMAGE, sampler)  # (B, N)
        return (ids - self.vocab.image_offset).unflatten(1, self.layout.grid)

    @torch.no_grad()
    def generate(self, captions: list[str], sampler: Sampler | None = None) -> torch.Tensor:
        """Text-to-image: captions -> images [B, C, H, W] in [-1, 1] (in `GeneratorModule.generate`'s
        place: one trunk pass per image token, the first with the prompt)."""
        return self.image_tokenizer.decode(self.generate_image_tokens(captions, sampler))

    @torch.no_grad()
    def caption_tokens(
        self, image_tokens: torch.Tensor, sampler: Sampler | None = None, max_tokens: int = 32
    ):
        """Image-to-text: image token grids [B, *grid] -> captions (list of B strings)."""
        sampler = self._unguided(sampler)
        if tuple(image_tokens.shape[1:]) != self.layout.grid:
            raise ConfigError(
                f"image tokens {tuple(image_tokens.shape)} are not on the grid {self.layout.grid}"
            )
        prompts = [self.layout.captioning(img) for img in image_tokens.flatten(1).cpu()]
        return self._continue(prompts, sampler, max_tokens)

    @torch.no_grad()
    def caption(
        self, images: torch.Tensor, sampler: Sampler | None = None, max_tokens: int = 32
    ) -> list[str]:
        """Image-to-text: images [B, C, H, W] in [-1, 1] -> captions."""
        if self.image_tokenizer is None:
            raise ConfigError("this StreamModule is a text-only LM; it cannot read images")
        return self.caption_tokens(self.image_tokenizer.encode(images.to(self.device)), sampler, max_tokens)

    @torch.no_grad()
    def continue_text(self, prompts: list[str], sampler: Sampler | None = None, max_tokens: int = 64):
        """Text continuation: prompts -> their continuations (until EOS or `max_tokens`)."""
        sampler = self._unguided(sampler)
        starts = [self.layout.document(ids, close=False) for ids in self._text_ids(prompts, "prompts")]
        return self._continue(starts, sampler, max_tokens)

    def _continue(self, prompts, sampler: Sampler, max_tokens: int) -> list[str]:
        """Generate text after each prompt until EOS, at most `max_tokens` tokens or the context's end."""
        longest = max(len(ids) for ids, _ in prompts)
        if longest >= self.hparams.context_length:
            raise ConfigError(
                f"a prompt of {longest} tokens does not fit the model's context of "
                f"{self.hparams.context_length} tokens; shorten it"
            )
        m = min(max_tokens, self.hparams.context_length - longest)
        new_positions = torch.stack(
            [self.layout.text_positions(self.layout.next_position(pos), m) for _, pos in prompts]
        )
        ids = self.decode(prompts, new_positions, TEXT, sampler, stop_at_eos=True)
        texts = []
        for row in ids.tolist():
            end = row.index(self.vocab.eos) if self.vocab.eos in row else len(row)
            texts.append(self.text_tokenizer.decode(row[:end]))
        return texts

    @staticmethod
    def _unguided(sampler: Sampler | None) -> Sampler:
        sampler = sampler or Sampler()
        if sampler.guided:
            raise ConfigError(
                f"cfg_scale={sampler.cfg_scale}: guidance contrasts a caption with the dropped text, so it "
                "applies to text-to-image only; sample text with cfg_scale 1"
            )
        return sampler
