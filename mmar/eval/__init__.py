"""Evaluation: ADM-protocol FID / sFID / IS / precision-recall (`fid`, on `inception` features), StyleGAN-V
FVD (`fvd`), the Fréchet distance, tokenizer metrics, audio metrics (`audio`: codec reconstruction
metrics, the Fréchet Audio Distance on `vggish` features) and the embedded digits, moving-digits and notes
metrics (`embedded`, `video`, `audio`: not Inception FID, FVD or FAD). See docs/evaluation.md."""

from mmar.eval.audio import (
    NotesClassifier,
    NotesMetrics,
    VGGishFeatures,
    codebook_usage,
    frechet_audio_distance,
    load_notes_classifier,
    mel_distance,
    reconstruction_report,
    si_sdr,
    stft_distance,
    train_notes_classifier,
)
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
from mmar.eval.frechet import bootstrap_fd_se, feature_statistics, frechet_distance
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
    "NotesClassifier",
    "NotesMetrics",
    "VGGishFeatures",
    "as_frames",
    "bootstrap_fd_se",
    "codebook_usage",
    "feature_statistics",
    "frechet_audio_distance",
    "frechet_distance",
    "fvd",
    "image_metrics",
    "inception_score",
    "load_digits_classifier",
    "load_notes_classifier",
    "load_reference",
    "load_video_classifier",
    "mel_distance",
    "perturbed_fd",
    "precision_recall",
    "psnr",
    "reconstruction_fd",
    "reconstruction_report",
    "save_reference",
    "si_sdr",
    "ssim",
    "stft_distance",
    "to_uint8",
    "train_digits_classifier",
    "train_notes_classifier",
    "train_video_classifier",
]
