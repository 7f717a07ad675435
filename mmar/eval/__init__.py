"""Evaluation: ADM-protocol FID / sFID / IS / precision-recall (`fid`, on `inception` features), StyleGAN-V
FVD (`fvd`), the Fréchet distance, tokenizer metrics and the embedded digits and moving-digits metrics
(`embedded`, `video`: not Inception FID or FVD). See docs/evaluation.md."""

from mmar.eval.embedded import (
    DigitsClassifier,
    DigitsMetrics,
    load_digits_classifier,
    train_digits_classifier,
)
from mmar.eval.fid import (
    image_metrics,
    inception_score,
    load_reference,
    precision_recall,
    save_reference,
    to_uint8,
)
from mmar.eval.frechet import feature_statistics, frechet_distance
from mmar.eval.fvd import I3DFeatures, fvd
from mmar.eval.inception import InceptionFeatures
from mmar.eval.tokenizer_metrics import (
    CodebookUsage,
    as_frames,
    perturbed_fd,
    psnr,
    reconstruction_fd,
    ssim,
)
from mmar.eval.video import (
    MovingDigitsClassifier,
    MovingDigitsMetrics,
    load_video_classifier,
    train_video_classifier,
)

__all__ = [
    "CodebookUsage",
    "DigitsClassifier",
    "DigitsMetrics",
    "I3DFeatures",
    "InceptionFeatures",
    "MovingDigitsClassifier",
    "MovingDigitsMetrics",
    "as_frames",
    "feature_statistics",
    "frechet_distance",
    "fvd",
    "image_metrics",
    "inception_score",
    "load_digits_classifier",
    "load_reference",
    "load_video_classifier",
    "perturbed_fd",
    "precision_recall",
    "psnr",
    "reconstruction_fd",
    "save_reference",
    "ssim",
    "to_uint8",
    "train_digits_classifier",
    "train_video_classifier",
]
