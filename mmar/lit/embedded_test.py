"""The embedded metric a generator reports at the end of `mmar test`: samples drawn with its `sampler`
settings, scored by the metric its data module names (`embedded_metrics`, see `mmar.eval.sample_metrics`)."""

from __future__ import annotations

import torch
from lightning.pytorch.utilities import rank_zero_info

from mmar.lit.predict_sampler import batch_sampler
from mmar.sampling import sample_in_batches


def embedded_test_metrics(model, datamodule, per_class: int) -> dict[str, float]:
    """{name: value} of `per_class` samples per class (or benchmark prompt) of `model`, a GeneratorModule;
    empty when `per_class` is 0 or the data has no embedded metric for the model's condition.

    Batch i of the samples draws with the sampler's seed + i (0 + i unseeded), so the numbers are
    reproducible; every device computes the same ones.
    """
    find = getattr(datamodule, "embedded_metrics", None)
    metric = find(model.conditioning.batch_key) if per_class > 0 and find is not None else None
    if metric is None:
        return {}
    if model.tokenizer.variable_length:  # it samples onto a given segmentation, which classes do not give
        rank_zero_info(f"no embedded test metric: the {model.tokenizer.name} tokenizer needs layouts")
        return {}
    targets = metric.targets(per_class)  # (N,)
    sampler = batch_sampler(model.hparams.sampler, 0)
    batch_size = getattr(datamodule, "batch_size", 64)
    samples, _, _ = sample_in_batches(model, targets, sampler, batch_size, conditions=metric.conditions)
    with torch.inference_mode(False), torch.enable_grad():  # a classifier trained on first use needs autograd
        return metric.score(samples.clone(), targets)
