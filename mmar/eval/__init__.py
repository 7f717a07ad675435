"""Evaluation: the Fréchet distance, tokenizer metrics and the embedded digits metric (not Inception FID)."""

from mmar.eval.embedded import (
    DigitsClassifier,
    DigitsMetrics,
    load_digits_classifier,
    train_digits_classifier,
)
from mmar.eval.frechet import feature_statistics, frechet_distance
from mmar.eval.tokenizer_metrics import (
    CodebookUsage,
    as_frames,
    perturbed_fd,
    psnr,
    reconstruction_fd,
    ssim,
)

__all__ = [
    "CodebookUsage",
    "DigitsClassifier",
    "DigitsMetrics",
    "as_frames",
    "feature_statistics",
    "frechet_distance",
    "load_digits_classifier",
    "perturbed_fd",
    "psnr",
    "reconstruction_fd",
    "ssim",
    "train_digits_classifier",
]
