"""SampleGrid: what a model makes, logged as pictures (and text) every few validation runs.

- generators (`GeneratorModule`): `per_class` samples of each of the first `max_classes` classes (a
  column per class), or one per caption of the first validation batch (text conditions);
- tokenizers (`TokenizerModule`): inputs of the first validation batch above their reconstructions;
- stream models (`StreamModule`): continuations of the first validation texts, as text, or images drawn
  from the first validation captions (unified text + image models).

Images are grids, videos a strip of frames per clip, audio log-mel spectrograms. Every run draws with the
same seed, so the pictures of successive runs differ only by training, and the draws never touch the
global RNG that training uses. Loggers without pictures (CSV) get nothing, and nothing is sampled then.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from lightning.pytorch.callbacks import Callback

from mmar.conditioning import ClassCondition
from mmar.errors import ConfigError
from mmar.lit.media import log_picture, log_text, picture, picture_loggers
from mmar.sampling import Sampler, class_labels, sample_in_batches

TAG = "samples"


class SampleGrid(Callback):
    def __init__(
        self,
        every_n_val_epochs: int = 1,
        per_class: int = 2,
        max_classes: int = 10,
        num_prompts: int = 4,
        prompt_tokens: int = 16,
        max_tokens: int = 32,
        sampler: Sampler | None = None,
    ):
        """Log samples at the start of every `every_n_val_epochs`-th validation run (0: never).

        Args:
            every_n_val_epochs: validation runs between two logs (sanity checks not counted); 0 turns it off.
            per_class: samples per class of a class-conditional generator.
            max_classes: classes shown (the first ones).
            num_prompts: captions, texts or tokenizer inputs taken from the first validation batch.
            prompt_tokens: text tokens of each validation text that a text model continues.
            max_tokens: new text tokens of a continuation.
            sampler: the sampling settings (default: temperature 1, no guidance, seed 0); its seed is
                fixed whatever it says, so that every log draws the same noise.
        """
        if every_n_val_epochs < 0 or min(per_class, max_classes, num_prompts, prompt_tokens, max_tokens) < 1:
            raise ConfigError(
                f"SampleGrid(every_n_val_epochs={every_n_val_epochs}, per_class={per_class}, max_classes="
                f"{max_classes}, num_prompts={num_prompts}, prompt_tokens={prompt_tokens}, max_tokens="
                f"{max_tokens}): every_n_val_epochs must be >= 0 (0 = off) and the others >= 1"
            )
        self.every_n_val_epochs = every_n_val_epochs
        self.per_class, self.max_classes, self.num_prompts = per_class, max_classes, num_prompts
        self.prompt_tokens, self.max_tokens = prompt_tokens, max_tokens
        sampler = sampler or Sampler()
        self.sampler = replace(sampler, seed=0 if sampler.seed is None else sampler.seed)
        self.val_runs = 0

    def state_dict(self) -> dict:
        return {"val_runs": self.val_runs}  # a resumed run logs on the same validation runs

    def load_state_dict(self, state_dict: dict) -> None:
        self.val_runs = state_dict["val_runs"]

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        # the first batch's hook, not the epoch's end: the EMA weights are swapped in for the whole run,
        # and the batch gives the captions / texts / inputs to show
        if batch_idx or dataloader_idx or batch is None or trainer.sanity_checking:
            return
        self.val_runs += 1
        if not self.every_n_val_epochs or self.val_runs % self.every_n_val_epochs:
            return
        if not picture_loggers(trainer.loggers):
            return
        # every rank samples (lockstep for sharded weights); the loggers write on rank 0 only
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        precision = trainer.precision_plugin.forward_context()
        with torch.random.fork_rng(devices=devices), torch.no_grad(), precision:
            pictures, texts = self.samples(pl_module, batch)
        for name, image in pictures.items():
            log_picture(trainer.loggers, f"{TAG}/{name}", image, trainer.global_step)
        for name, lines in texts.items():
            log_text(trainer.loggers, f"{TAG}/{name}", lines, trainer.global_step)

    def samples(self, module, batch: dict) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
        """({name: picture uint8 [3, H, W]}, {name: text lines}) of a module, from a validation batch."""
        from mmar.lit import GeneratorModule, StreamModule, TokenizerModule  # they import this package

        if isinstance(module, GeneratorModule):
            return self._generator_samples(module, batch)
        if isinstance(module, TokenizerModule):
            return self._reconstructions(module, batch), {}
        if isinstance(module, StreamModule):
            return self._stream_samples(module, batch)
        return {}, {}

    def _generator_samples(self, module, batch: dict):
        tokenizer, condition, n = module.tokenizer, module.conditioning, self.num_prompts
        modality, rate = tokenizer.modality, getattr(tokenizer, "sample_rate", None)
        if tokenizer.variable_length:  # segment-level tokens: drawn on the geometry of validation inputs
            from mmar.lit.tokenizer_module import model_inputs

            layout = tokenizer.encode(model_inputs(batch)[:n].to(module.device))
            out = module.generate(_first(condition.values_of(batch), n), self.sampler, layout=layout)
            return {"generated": picture(out, modality, n, rate)}, {}
        if isinstance(condition, ClassCondition):
            classes = list(range(min(condition.num_classes, self.max_classes)))
            labels = class_labels(classes, condition.num_classes, 1).repeat(self.per_class)  # (N,)
            to_device = lambda ids: ids.to(module.device)
            out = sample_in_batches(module, labels, self.sampler, len(labels), conditions=to_device)[0]
            return {"generated": picture(out, modality, len(classes), rate)}, {}  # a column per class
        captions = _first(condition.values_of(batch), n)  # captions, or a cache's caption embeddings
        count = _count(captions)
        given = lambda ids: captions
        out = sample_in_batches(module, torch.arange(count), self.sampler, count, conditions=given)[0]
        lines = [f"{i}: {c}" for i, c in enumerate(captions)] if isinstance(captions, list) else []
        texts = {"captions": lines} if lines else {}
        return {"generated": picture(out, modality, count, rate)}, texts

    def _reconstructions(self, module, batch: dict) -> dict[str, torch.Tensor]:
        from mmar.lit.tokenizer_module import model_inputs

        tokenizer = module.tokenizer
        x = model_inputs(batch)[: self.num_prompts].to(module.device)
        recon = tokenizer.decode(tokenizer.encode(x)).float()
        n, rate = len(x), getattr(tokenizer, "sample_rate", None)
        if tokenizer.modality == "image":  # inputs on the first row, reconstructions on the second
            return {"reconstructions": picture(torch.cat([x.float(), recon]), "image", n)}
        pairs = torch.stack([x.float(), recon], 1).flatten(0, 1)  # (2n, ...): each input above its recon
        return {"reconstructions": picture(pairs, tokenizer.modality, 2, rate)}

    def _stream_samples(self, module, batch: dict):
        n = self.num_prompts
        if "caption" in batch:  # a unified model: images from the first captions
            captions = list(batch["caption"][:n])
            images = module.generate(captions, self.sampler)
            lines = [f"{i}: {c}" for i, c in enumerate(captions)]
            return {"generated": picture(images, "image", len(captions))}, {"captions": lines}
        tokens = batch["tokens"][:n, : self.prompt_tokens].tolist()
        prompts = [module.text_tokenizer.decode(ids) for ids in tokens]
        sampler = replace(self.sampler, cfg_scale=1.0)  # text is sampled unguided
        continued = module.continue_text(prompts, sampler, self.max_tokens)
        return {}, {"text": [f"{p} >>> {c}" for p, c in zip(prompts, continued)]}


def _count(values) -> int:
    return len(values[0]) if isinstance(values, tuple) else len(values)


def _first(values, n: int):
    """The first n conditions: of a list (captions), a tensor (labels) or a tuple of them (embeddings)."""
    if isinstance(values, tuple):
        return tuple(v[:n] for v in values)
    return values[:n]
