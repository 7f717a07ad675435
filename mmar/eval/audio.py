"""Audio metrics: codec reconstruction metrics, an embedded pitch classifier, and the Fréchet Audio Distance.

Reconstruction (audio [B, C, samples], every channel scored as a signal of its own):

- `mel_distance`: DAC's multi-scale mel distance (Kumar et al., 2023), the formula of its mel loss (and of
  `tokenizers_audio.losses.MultiScaleMelLoss`'s defaults): the sum over windows w = 32 ... 2048 (hop w / 4,
  5 w / 32 Slaney mel bands) of the mean |log10 max(mel(x), 1e-5)^2 - log10 max(mel(y), 1e-5)^2|;
- `stft_distance`: the same log-power L1 on linear STFT magnitudes, summed over windows 2048, 512, 128
  (hop w / 4);
- `si_sdr`: scale-invariant SDR in dB (Le Roux et al., 2019), signals made zero-mean, per clip;
- `codebook_usage`: per quantizer level, the fraction of the K codes that occur and the perplexity of their
  distribution (exp of its entropy; K when all codes are equally used, 1 when one code is);
- `reconstruction_report(tokenizer, clips)`: all of the above for a tokenizer, plus its bitrate.

Embedded pitch metric (`NotesMetrics`): NOT FAD. A small classifier (`NotesClassifier`) is trained in
seconds on train clips of `mmar.data.audio.EmbeddedNotesDataModule` and cached on disk; from generated
notes and the pitch classes they were asked for it reports the class accuracy and the Fréchet distance in
the classifier's penultimate features against held-out val clips, with the references needed to read
them (the classifier's val accuracy, the ceiling; the FD of as many real train clips, the floor). Its
numbers are comparable only within this codebase, at equal sample counts.

Fréchet Audio Distance (Kilgour et al., 2019): `frechet_audio_distance` on the 128-d embeddings of
`mmar.eval.vggish.VGGish`, whose weights the user provides by path (mmar downloads nothing).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import soxr
import torch
import torch.nn.functional as F
from torch import nn

from mmar.data import audio as notes
from mmar.errors import ConfigError
from mmar.eval.embedded import default_cache_dir, load_cached_classifier, save_classifier, single_thread
from mmar.eval.frechet import ReferenceFD, feature_statistics, frechet_distance
from mmar.eval.vggish import SAMPLE_RATE as VGGISH_SAMPLE_RATE
from mmar.eval.vggish import VGGish, load_vggish, log_mel_examples
from mmar.spectral import as_mono_batch, log_frequency_filterbank, mel_filterbank, stft

MEL_WINDOWS = (32, 64, 128, 256, 512, 1024, 2048)
STFT_WINDOWS = (2048, 512, 128)
CLAMP_EPS = 1e-5

CLASSIFIER_VERSION = 1  # bump when the architecture or the training recipe changes (invalidates caches)
NUM_CLASSES = 12  # len(mmar.data.audio.PITCH_CLASSES)
FEATURE_DIM = 64
BINS_PER_OCTAVE = 36  # three per semitone
LOWEST_CENTRE_MIDI = 45  # a minor third below the lowest note (mmar.data.audio.LOWEST_MIDI = 48)
HIGHEST_CENTRE_MIDI = 108  # C8: the fundamentals reach B5 (83); the rest shows the partials (timbre)
FLOOR_DB = 80.0
NOISE_SNR_DB = (5.0, 40.0)  # training augmentation: a noisy copy of every train clip, SNR drawn from here
TRAIN_OPTIONS = ("num_clips", "num_val_clips", "epochs", "batch_size", "lr")


# ------------------------------------------------------------------------------------ reconstruction


def _pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two audio batches [B, C, samples] of one shape -> signals [B * C, samples] each (fp32)."""
    if x.ndim != 3 or x.shape != y.shape:
        raise ConfigError(
            f"expected two audio batches [B, C, samples] of the same shape, got {tuple(x.shape)} and "
            f"{tuple(y.shape)}"
        )
    return as_mono_batch(x), as_mono_batch(y)


def _log_power(magnitude: torch.Tensor, eps: float) -> torch.Tensor:
    return magnitude.clamp_min(eps).pow(2).log10()


@lru_cache(maxsize=64)
def _mel_bank(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    return mel_filterbank(sample_rate, n_fft, n_mels)  # [n_mels, F], Slaney scale and norm


@torch.no_grad()
def mel_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    sample_rate: int,
    window_lengths: Sequence[int] = MEL_WINDOWS,
    clamp_eps: float = CLAMP_EPS,
) -> float:
    """DAC's multi-scale mel distance between audio x and y [B, C, samples] (0 when identical).

    The sum over window sizes w of the mean L1 between log10 of the clamped, squared mel magnitudes
    (hop w / 4, max(1, 5 w / 32) Slaney mel bands from 0 Hz to sample_rate / 2).
    """
    x, y = _pair(x, y)
    total = 0.0
    for w in window_lengths:
        bank = _mel_bank(int(sample_rate), w, max(1, 5 * w // 32)).to(x.device)
        mx = bank @ stft(x, w, w // 4, w).abs()  # [N, n_mels, frames]
        my = bank @ stft(y, w, w // 4, w).abs()
        total += F.l1_loss(_log_power(mx, clamp_eps), _log_power(my, clamp_eps)).item()
    return total


@torch.no_grad()
def stft_distance(
    x: torch.Tensor,
    y: torch.Tensor,
    window_lengths: Sequence[int] = STFT_WINDOWS,
    clamp_eps: float = CLAMP_EPS,
) -> float:
    """Multi-resolution log-magnitude STFT distance between audio x and y [B, C, samples] (0 when
    identical): the sum over window sizes w (hop w / 4) of the mean L1 between log10 of the clamped,
    squared STFT magnitudes."""
    x, y = _pair(x, y)
    total = 0.0
    for w in window_lengths:
        mx, my = stft(x, w, w // 4, w).abs(), stft(y, w, w // 4, w).abs()  # [N, F, frames]
        total += F.l1_loss(_log_power(mx, clamp_eps), _log_power(my, clamp_eps)).item()
    return total


@torch.no_grad()
def si_sdr(estimate: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale-invariant SDR in dB per clip [B] of `estimate` against `reference` (both [B, C, samples]).

    Both signals are made zero-mean; the reference is scaled by the optimal a = <e, r> / (|r|^2 + eps)
    and SI-SDR = 10 log10((|a r|^2 + eps) / (|e - a r|^2 + eps)): invariant to the scale of either
    signal, large (~10 log10(|r|^2 / eps)) for a perfect estimate, finite for silence. Channels are
    scored separately and averaged per clip; take `.mean()` for the usual mean over clips.
    """
    e, r = _pair(estimate, reference)
    e, r = e.double(), r.double()
    e = e - e.mean(dim=-1, keepdim=True)
    r = r - r.mean(dim=-1, keepdim=True)
    scale = (e * r).sum(dim=-1, keepdim=True) / (r.square().sum(dim=-1, keepdim=True) + eps)
    target = scale * r
    noise = e - target
    ratio = (target.square().sum(dim=-1) + eps) / (noise.square().sum(dim=-1) + eps)
    return (10 * torch.log10(ratio)).reshape(estimate.shape[:2]).mean(dim=1).float()  # [B]


def codebook_usage(ids: torch.Tensor, codebook_size: int) -> dict[str, list[float]]:
    """Per quantizer level of ids [N, frames, Q] (or [N, frames] for one codebook): the fraction of the
    `codebook_size` codes that occur ("usage") and the perplexity of their empirical distribution
    ("perplexity", exp of its entropy in nats: between 1 and codebook_size)."""
    if ids.is_floating_point() or ids.ndim not in (2, 3):
        raise ConfigError(
            f"codebook_usage expects integer ids [N, frames, Q] or [N, frames], got {ids.dtype} "
            f"{tuple(ids.shape)}"
        )
    if codebook_size < 1:
        raise ConfigError(f"codebook_size={codebook_size} must be >= 1")
    levels = ids.reshape(-1, ids.shape[-1] if ids.ndim == 3 else 1).long().cpu()  # [N * frames, Q]
    if levels.numel() and (levels.min() < 0 or levels.max() >= codebook_size):
        raise ConfigError(
            f"ids must lie in [0, {codebook_size}), got values in [{int(levels.min())}, {int(levels.max())}]"
        )
    usage, perplexity = [], []
    for level in levels.T:
        counts = torch.bincount(level, minlength=codebook_size).double()  # [K]
        p = counts / counts.sum().clamp_min(1)
        entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
        usage.append((counts > 0).sum().item() / codebook_size)
        perplexity.append(math.exp(entropy) if len(level) else 0.0)
    return {"usage": usage, "perplexity": perplexity}


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters(), torch.empty(0)).device


@torch.no_grad()
def reconstruction_report(
    tokenizer,
    clips: torch.Tensor,
    num_quantizers: int | None = None,
    sample_rate: int | None = None,
    batch_size: int = 32,
) -> dict:
    """Encode and decode `clips` [N, C, samples] with `tokenizer` and score the reconstructions.

    Args:
        tokenizer: an audio tokenizer (`mmar.tokenizer` contract), e.g. `tokenizers_audio.RVQCodec`; run
            in eval mode, then put back in the mode it was in.
        clips: audio [N, C, samples] in [-1, 1], samples a length the tokenizer accepts.
        num_quantizers: code with the first q levels only (`encode(x, num_quantizers=q)`, tokenizers with
            a `num_quantizers` attribute); None: all of them.
        sample_rate: the clips' rate, for the mel scale (default: the tokenizer's `sample_rate`).
        batch_size: clips encoded and decoded at once.

    Returns:
        {"num_clips", "sample_rate", "mel_distance", "si_sdr" (dB, mean over clips), "stft_distance"}; for
        discrete tokenizers also "num_quantizers" (levels coded), "codebook_usage" and
        "codebook_perplexity" (one entry per level) and "bitrate" (bits/s, when the tokenizer has
        `bitrate`). Continuous tokenizers report no usage or bitrate. The decodes are scored as they come
        (not clipped to [-1, 1]); a decode longer than its clip is cut to the clip's length.
    """
    sample_rate = sample_rate if sample_rate is not None else getattr(tokenizer, "sample_rate", None)
    if sample_rate is None:
        raise ConfigError(f"the '{tokenizer.name}' tokenizer has no sample_rate; pass sample_rate=...")
    if clips.ndim != 3 or len(clips) < 1:
        raise ConfigError(
            f"reconstruction_report expects clips [N >= 1, C, samples], got {tuple(clips.shape)}"
        )
    kwargs = {}
    if num_quantizers is not None:
        if not hasattr(tokenizer, "num_quantizers"):
            raise ConfigError(
                f"the '{tokenizer.name}' tokenizer has no quantizer levels to choose from; "
                "leave num_quantizers=None"
            )
        kwargs["num_quantizers"] = int(num_quantizers)
    discrete = tokenizer.kind == "discrete"
    device = _device_of(tokenizer)
    recons, ids = [], []
    was_training = tokenizer.training
    tokenizer.eval()  # no quantizer dropout, no codebook updates
    try:
        for x in clips.split(batch_size):
            tokens = tokenizer.encode(x.to(device), **kwargs)
            recon = tokenizer.decode(tokens).float().cpu()
            if recon.shape[:2] != x.shape[:2] or recon.shape[-1] < x.shape[-1]:
                raise ConfigError(
                    f"the '{tokenizer.name}' tokenizer decoded {tuple(x.shape)} to {tuple(recon.shape)}; it "
                    "must give back [B, C, >= samples]"
                )
            recons.append(recon[..., : x.shape[-1]])
            if discrete:
                ids.append(tokens.cpu())
    finally:
        tokenizer.train(was_training)
    recon, clips = torch.cat(recons), clips.float().cpu()
    report: dict = {"num_clips": len(clips), "sample_rate": int(sample_rate)}
    if discrete and hasattr(tokenizer, "bitrate"):
        report["bitrate"] = float(tokenizer.bitrate(**kwargs))
    report |= {
        "mel_distance": mel_distance(recon, clips, sample_rate),
        "si_sdr": si_sdr(recon, clips).mean().item(),
        "stft_distance": stft_distance(recon, clips),
    }
    if discrete:
        tokens = torch.cat(ids)
        usage = codebook_usage(tokens, tokenizer.vocab_size)
        report |= {
            "num_quantizers": tokens.shape[-1] if tokens.ndim == 3 else 1,
            "codebook_usage": usage["usage"],
            "codebook_perplexity": usage["perplexity"],
        }
    return report


# ---------------------------------------------------------------------------- embedded pitch metric


class LogFrequencySpectrogram(nn.Module):
    """Notes [B, 1, samples] -> log-frequency spectrogram [B, n_bins, frames] in [0, 1].

    A long-window STFT (n_fft = the power of two >= sample_rate / 4, ~0.26 s: bins ~4 Hz apart, while a
    semitone at the lowest note, MIDI 48 ~ 131 Hz, is ~7.8 Hz wide; hop n_fft / 4) read through
    `mmar.spectral.log_frequency_filterbank` with three filters per semitone, centred from MIDI 45 to
    C8 (capped at 0.45 * sample_rate). Why this and not a mel spectrogram: mel bands are about linear
    below 1 kHz and, at usual band counts, tens of Hz wide there, several semitones at MIDI 48; a short
    window cannot tell 131 Hz from 139 Hz at all. The log-frequency axis keeps every semitone 3 bins wide
    at every octave, so a small MLP needs few inputs to find the pitch class, and the partials above the
    fundamental (timbre) keep their pattern. Magnitudes are in dB relative to the clip's loudest bin,
    floored at -80 dB and mapped to [0, 1]: loudness-invariant.
    """

    def __init__(self, sample_rate: int):
        super().__init__()
        self.n_fft = 2 ** math.ceil(math.log2(sample_rate / 4))
        self.hop_length = self.n_fft // 4
        fmin = notes.midi_frequency(LOWEST_CENTRE_MIDI)
        fmax = min(notes.midi_frequency(HIGHEST_CENTRE_MIDI), 0.45 * sample_rate)
        highest_note = notes.midi_frequency(notes.LOWEST_MIDI + 12 * notes.NUM_OCTAVES - 1)
        if fmax < 2 * highest_note:
            raise ConfigError(
                f"sample_rate={sample_rate} is too low for the notes (up to {highest_note:.0f} Hz and their "
                "second partial); use >= 4400 Hz, e.g. 16000"
            )
        bank = log_frequency_filterbank(sample_rate, self.n_fft, fmin, fmax, BINS_PER_OCTAVE)
        self.register_buffer("filterbank", bank, persistent=False)  # [n_bins, F]; rebuilt, never saved

    @property
    def num_bins(self) -> int:
        return self.filterbank.shape[0]

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        magnitude = stft(as_mono_batch(audio), self.n_fft, self.hop_length, self.n_fft).abs()  # [B, F, T]
        db = 20 * torch.log10(self.filterbank @ magnitude + 1e-10)  # [B, n_bins, T]
        db = db - db.amax(dim=(1, 2), keepdim=True)
        return (db.clamp_min(-FLOOR_DB) + FLOOR_DB) / FLOOR_DB


class NotesClassifier(nn.Module):
    """Pitch-class classifier for notes [B, 1, samples]: log-frequency spectrogram, pooled over time
    (mean and max per bin), -> MLP -> penultimate features [B, 64] -> 12 logits.

    An MLP rather than a CNN over the spectrogram: the pitch class is a matter of where (which bins, modulo
    36) the partials sit, which a dense layer reads directly, and pooling over time makes it cheap (it
    trains in seconds on one thread) and indifferent to the note's onset.
    """

    def __init__(self, sample_rate: int = 16000, hidden: int = 256, feature_dim: int = FEATURE_DIM):
        super().__init__()
        self.sample_rate = sample_rate
        self.front_end = LogFrequencySpectrogram(sample_rate)
        self.body = nn.Sequential(
            nn.Linear(2 * self.front_end.num_bins, hidden),
            nn.ReLU(),
            nn.Linear(hidden, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, NUM_CLASSES)

    def pooled(self, audio: torch.Tensor) -> torch.Tensor:
        """Time-pooled spectra [B, 2 n_bins] (mean, then max over frames) of notes [B, 1, samples]."""
        spec = self.front_end(audio)  # [B, n_bins, T]
        return torch.cat([spec.mean(dim=-1), spec.amax(dim=-1)], dim=1)

    def features(self, audio: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, 64]."""
        return self.body(self.pooled(audio))

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(audio))  # [B, 12]


def classifier_cache_path(
    sample_rate: int = 16000,
    duration: float = 0.5,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    train_options: Mapping[str, float] | None = None,
) -> Path:
    """Where the classifier for these notes (and training recipe) is cached; non-default `train_options`
    add a suffix, so that a classifier trained differently (e.g. a quick one for tests) never stands in
    for the default one."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = f"notes_classifier_v{CLASSIFIER_VERSION}_sr{sample_rate}_d{duration:g}_seed{seed}"
    if train_options:
        digest = hashlib.sha1(json.dumps(dict(train_options), sort_keys=True).encode()).hexdigest()[:10]
        name += f"_opts{digest}"
    return root / "embedded" / f"{name}.safetensors"


def _notes(
    dataset: notes.EmbeddedNotesDataset, stop: int, start: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips `start` to `stop` of `dataset` as (audio [n, 1, samples], pitch classes long [n])."""
    items = [dataset[i] for i in range(start, min(stop, len(dataset)))]
    if not items:
        return torch.zeros(0, 1, dataset.num_samples), torch.zeros(0, dtype=torch.long)
    return torch.stack([it["audio"] for it in items]), torch.stack([it["label"] for it in items])


def _data_module(sample_rate: int, duration: float, seed: int, num_train: int, num_val: int):
    data = notes.EmbeddedNotesDataModule(
        sample_rate, duration, num_clips_train=max(num_train, 1), num_clips_val=num_val, seed=seed
    )
    data.setup()
    return data


def train_notes_classifier(
    sample_rate: int = 16000,
    duration: float = 0.5,
    seed: int = 0,
    num_clips: int = 1536,
    num_val_clips: int = 512,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 3e-3,
) -> tuple[NotesClassifier, dict[str, float]]:
    """Train a `NotesClassifier` on train clips of `EmbeddedNotesDataModule` (seeded, one CPU thread).

    The front end has no parameters, so the time-pooled spectra of the clips are computed once and the
    MLP trains on them (AdamW, one-cycle schedule, light dropout on the inputs). Each train clip is also
    seen with white noise added at an SNR drawn from `NOISE_SNR_DB`, so that artefacts of generated
    audio do not hide an audible pitch from the classifier.

    Args:
        sample_rate, duration, seed: the notes; must match the audio the metric will score.
        num_clips: train clips; num_val_clips: val clips (a disjoint split) to measure the accuracy on.
        epochs, batch_size, lr: the training recipe.

    Returns:
        The classifier in eval mode and {"val_accuracy", "train_seconds", "data_seconds"}.
    """
    if num_clips < batch_size:
        raise ConfigError(f"num_clips={num_clips} must be >= batch_size={batch_size}")
    start = time.perf_counter()
    data = _data_module(sample_rate, duration, seed, num_clips, num_val_clips)
    with single_thread(), torch.random.fork_rng(), torch.enable_grad():  # caller's RNG kept
        torch.manual_seed(seed)
        model = NotesClassifier(sample_rate)
        train_audio, train_y = _notes(data.train_dataset, num_clips)
        noisy = add_noise(train_audio, torch.empty(len(train_y), 1, 1).uniform_(*NOISE_SNR_DB))
        train_x = torch.cat([_pooled(model, train_audio), _pooled(model, noisy)])
        train_y = torch.cat([train_y, train_y])
        val_audio, val_y = _notes(data.val_dataset, num_val_clips)
        val_x = _pooled(model, val_audio)
        info = {"data_seconds": time.perf_counter() - start}
        start = time.perf_counter()
        _fit(model, train_x, train_y, epochs, batch_size, lr)
        info["train_seconds"] = time.perf_counter() - start
        with torch.no_grad():
            hits = (model.head(model.body(val_x)).argmax(dim=-1) == val_y).float()
        info["val_accuracy"] = hits.mean().item() if len(val_y) else float("nan")
    return model, info


@torch.no_grad()
def _pooled(model: NotesClassifier, audio: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Time-pooled spectra [N, 2 n_bins] of notes [N, 1, samples]."""
    if not len(audio):
        return torch.zeros(0, 2 * model.front_end.num_bins)
    return torch.cat([model.pooled(x) for x in audio.split(chunk)])


def add_noise(audio: torch.Tensor, snr_db: torch.Tensor | float, generator=None) -> torch.Tensor:
    """`audio` [N, C, samples] plus white Gaussian noise at `snr_db` (per clip [N, 1, 1], or one number)
    below each clip's RMS."""
    rms = audio.float().square().mean(dim=(1, 2), keepdim=True).sqrt()  # [N, 1, 1]
    noise = torch.randn(audio.shape, generator=generator, dtype=torch.float32)
    return audio + noise * rms * 10.0 ** (-torch.as_tensor(snr_db, dtype=torch.float32) / 20)


def _fit(model: NotesClassifier, x: torch.Tensor, y: torch.Tensor, epochs: int, batch_size: int, lr: float):
    """AdamW + one-cycle schedule on time-pooled spectra [N, 2 n_bins]; input dropout 0.1; ends in eval."""
    steps_per_epoch = len(y) // batch_size
    params = [*model.body.parameters(), *model.head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            logits = model.head(model.body(F.dropout(x[idx], 0.1)))
            loss = F.cross_entropy(logits, y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


def load_notes_classifier(
    sample_rate: int = 16000,
    duration: float = 0.5,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    train_options: Mapping[str, float] | None = None,
) -> tuple[NotesClassifier, dict[str, float]]:
    """The cached classifier for these notes, training and caching it first when absent.

    Args:
        train_options: keyword arguments of `train_notes_classifier`'s recipe (`TRAIN_OPTIONS`, e.g. a
            quick {"num_clips": 256, "epochs": 10} for tests); they get a cache file of their own.

    Returns:
        The classifier in eval mode and {"val_accuracy", "train_seconds", "data_seconds",
        "loaded_from_cache"}.
    """
    train_options = dict(train_options or {})
    unknown = sorted(set(train_options) - set(TRAIN_OPTIONS))
    if unknown:
        raise ConfigError(f"unknown train_options {unknown}; the recipe options are {list(TRAIN_OPTIONS)}")
    path = classifier_cache_path(sample_rate, duration, seed, cache_dir, train_options)
    if path.is_file():
        model, info = load_cached_classifier(NotesClassifier(sample_rate), path)
        return model, {**info, "loaded_from_cache": True}
    model, info = train_notes_classifier(sample_rate, duration, seed, **train_options)
    save_classifier(model, info, path)
    return model, {**info, "loaded_from_cache": False}


class NotesMetrics(ReferenceFD):
    """Embedded notes metrics (not FAD): pitch-class accuracy and classifier-feature FD.

    Args:
        sample_rate, duration, seed: the notes of `EmbeddedNotesDataModule`; must match the data the
            generator was trained on (the classifier is trained on it and the reference clips are drawn
            from its val split).
        cache_dir: classifier cache folder (default `$MMAR_CACHE` or `~/.cache/mmar`).
        batch_size: clips per classifier forward pass.
        num_reference: val clips the FD compares against.
        train_options: the classifier's training recipe, see `load_notes_classifier` (default: the
            standard one; only tests should change it).

    Attributes:
        classifier_val_accuracy: the classifier's accuracy on held-out val clips (>= 0.95 with the
            standard recipe): the ceiling for `audio_class_accuracy`.
        val_audio, val_labels: the reference clips and their pitch classes.
        reference_mu, reference_sigma: feature statistics of the reference clips.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        duration: float = 0.5,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 256,
        num_reference: int = 512,
        train_options: Mapping[str, float] | None = None,
    ):
        if num_reference < 2:
            raise ConfigError(f"num_reference={num_reference} must be >= 2 (e.g. 512) for the FD statistics")
        self.sample_rate, self.duration, self.seed = sample_rate, duration, seed
        self.batch_size = batch_size
        self.classifier, self.classifier_info = load_notes_classifier(
            sample_rate, duration, seed, cache_dir, train_options
        )
        self.classifier_val_accuracy = float(self.classifier_info["val_accuracy"])
        self._data = _data_module(sample_rate, duration, seed, 1, num_reference)
        self.num_samples = self._data.audio_shape[-1]
        self.val_audio, self.val_labels = _notes(self._data.val_dataset, num_reference)
        self.reference_mu, self.reference_sigma = feature_statistics(self.features(self.val_audio))
        self._real_fd_at: dict[int, float] = {}

    @torch.no_grad()
    def features(self, audio: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """Penultimate classifier features [N, 64] of notes [N, 1, samples] in [-1, 1]."""
        self._check_audio(audio, sample_rate)
        with single_thread():
            chunks = [self.classifier.features(x.float().cpu()) for x in audio.split(self.batch_size)]
        return torch.cat(chunks)  # [N, 64]

    @torch.no_grad()
    def predict(self, audio: torch.Tensor, sample_rate: int | None = None) -> torch.Tensor:
        """Predicted pitch classes long [N] (indices into `PITCH_CLASSES`)."""
        return self.classifier.head(self.features(audio, sample_rate)).argmax(dim=-1)

    def class_accuracy(
        self, audio: torch.Tensor, labels: torch.Tensor, sample_rate: int | None = None
    ) -> float:
        """Fraction of notes whose predicted pitch class is the intended one (labels long [N] in 0..11)."""
        self._check_labels(audio, labels)
        return (self.predict(audio, sample_rate) == labels.cpu().long()).float().mean().item()

    def classifier_fd(self, audio: torch.Tensor, sample_rate: int | None = None) -> float:
        """Fréchet distance between classifier features of `audio` and of the reference val clips."""
        return self._fd(self.features(audio, sample_rate))

    def _train_dataset(self, num: int) -> notes.EmbeddedNotesDataset:
        return _data_module(self.sample_rate, self.duration, self.seed, num, 0).train_dataset

    @staticmethod
    def _clips(dataset: notes.EmbeddedNotesDataset, stop: int, start: int) -> torch.Tensor:
        return _notes(dataset, stop, start)[0]

    def compute(self, audio: torch.Tensor, labels: torch.Tensor, sample_rate: int | None = None) -> dict:
        """All numbers as a dict (e.g. for a metrics JSON), with the references needed to read them.

        Args:
            audio: generated notes [N, 1, samples] in [-1, 1] at the metric's sample rate and duration.
            labels: the pitch classes they were asked for, long [N] in 0..11.
            sample_rate: the audio's sample rate, checked against the metric's when given.
        """
        self._check_labels(audio, labels)
        features = self.features(audio, sample_rate)
        predicted = self.classifier.head(features).argmax(dim=-1)
        return {
            "audio_class_accuracy": (predicted == labels.cpu().long()).float().mean().item(),
            "audio_classifier_fd": self._fd(features),
            "audio_classifier_fd_real_same_n": self.real_fd_at(len(audio)),
            "audio_classifier_val_accuracy": self.classifier_val_accuracy,
            "num_samples": len(audio),
        }

    __call__ = compute

    def _check_audio(self, audio: torch.Tensor, sample_rate: int | None) -> None:
        if sample_rate is not None and sample_rate != self.sample_rate:
            raise ConfigError(
                f"notes metrics built for {self.sample_rate} Hz got audio at {sample_rate} Hz; resample it "
                f"or build NotesMetrics(sample_rate={sample_rate}, ...)"
            )
        if audio.ndim != 3 or tuple(audio.shape[1:]) != (1, self.num_samples):
            raise ConfigError(
                f"notes metrics expect mono notes [N, 1, {self.num_samples}] ({self.duration:g} s at "
                f"{self.sample_rate} Hz) in [-1, 1], got {tuple(audio.shape)}; build "
                "NotesMetrics(sample_rate=..., duration=...) to match the samples"
            )
        if audio.numel() and not torch.isfinite(audio).all():
            raise ConfigError("notes metrics got non-finite audio (NaN or inf)")
        if audio.numel() and audio.abs().max() > 1.5:
            raise ConfigError(
                f"notes metrics expect audio in [-1, 1], got peak {audio.abs().max():.3g}; clip or rescale it"
            )

    @staticmethod
    def _check_labels(audio: torch.Tensor, labels: torch.Tensor) -> None:
        if labels.ndim != 1 or len(labels) != len(audio):
            raise ConfigError(
                f"got {len(audio)} notes but labels of shape {tuple(labels.shape)}; pass one per note"
            )
        if labels.is_floating_point() or (
            len(labels) and not 0 <= labels.min() <= labels.max() < NUM_CLASSES
        ):
            raise ConfigError(
                f"labels must be pitch classes, integers in [0, {NUM_CLASSES}), got {labels[:8].tolist()}..."
            )


# ------------------------------------------------------------------------------ Fréchet Audio Distance


def to_vggish_rate(audio, sample_rate: int) -> list[torch.Tensor]:
    """Clips as 16 kHz mono float32 signals [samples]: from a tensor (or array) [N, C, samples] or
    [N, samples], or a sequence of clips [C, samples] / [samples] whose lengths may differ. Channels are
    averaged, then the clips are resampled with soxr (HQ) when `sample_rate` is not 16000."""
    if sample_rate <= 0:
        raise ConfigError(f"sample_rate={sample_rate} must be > 0 (Hz)")
    if isinstance(audio, torch.Tensor | np.ndarray) and audio.ndim not in (2, 3):
        raise ConfigError(f"expected audio [N, C, samples] or [N, samples], got {tuple(audio.shape)}")
    out = []
    for clip in audio:
        x = torch.as_tensor(np.asarray(clip.detach().cpu() if isinstance(clip, torch.Tensor) else clip))
        x = x.float().mean(dim=0) if x.ndim == 2 else x.float()
        if x.ndim != 1 or x.numel() == 0:
            raise ConfigError(
                f"every clip must be [C, samples] or [samples], samples > 0, got {tuple(x.shape)}"
            )
        if sample_rate != VGGISH_SAMPLE_RATE:
            x = torch.from_numpy(
                soxr.resample(x.numpy(), sample_rate, VGGISH_SAMPLE_RATE, quality="HQ").copy()
            )
        out.append(x)
    return out


class VGGishFeatures:
    """VGGish embeddings of audio clips; loads the weights at `weights_path` once (see `mmar.eval.vggish`).

    Args:
        weights_path: a VGGish state dict in the PyTorch port's layout (.safetensors / .pt / .pth).
        device: where the network runs.
        batch_size: 0.96 s examples per forward pass.
    """

    def __init__(
        self, weights_path: str | os.PathLike, device: str | torch.device = "cpu", batch_size: int = 64
    ):
        self.weights_path = Path(weights_path)
        self.model: VGGish = load_vggish(weights_path).to(device)
        self.device, self.batch_size = torch.device(device), batch_size

    @torch.no_grad()
    def __call__(self, audio, sample_rate: int) -> torch.Tensor:
        """Embeddings [M, 128] of every 0.96 s example of every clip (see `to_vggish_rate` for `audio`)."""
        clips = to_vggish_rate(audio, sample_rate)
        embeddings = []
        for begin in range(0, len(clips), self.batch_size):  # a chunk of clips at a time: bounded memory
            chunk = clips[begin : begin + self.batch_size]
            groups = [torch.stack(chunk)] if len({len(c) for c in chunk}) == 1 else [c[None] for c in chunk]
            examples = torch.cat([log_mel_examples(g).flatten(0, 1) for g in groups])  # [M, 96, 64]
            embeddings += [
                self.model(x[:, None].to(self.device)).float().cpu() for x in examples.split(self.batch_size)
            ]
        return torch.cat(embeddings)


def frechet_audio_distance(
    real_audio,
    fake_audio,
    sample_rate: int,
    weights_path: str | os.PathLike | VGGishFeatures,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
) -> float:
    """Fréchet Audio Distance between two sets of clips (Kilgour et al., 2019): the Fréchet distance
    (`mmar.eval.frechet`) between Gaussians fitted to the VGGish embeddings of all their 0.96 s examples.

    Args:
        real_audio, fake_audio: clips [N, C, samples] or [N, samples] (or sequences of [C, samples]
            clips), both at `sample_rate`; resampled to 16 kHz mono.
        sample_rate: their sample rate in Hz.
        weights_path: the VGGish weights (mmar downloads nothing; see `mmar.eval.vggish` for the keys),
            or a `VGGishFeatures` already loaded (to score several sets with one load).
        device, batch_size: where and how many examples at a time VGGish runs (with a path).
    """
    features = (
        weights_path
        if isinstance(weights_path, VGGishFeatures)
        else VGGishFeatures(weights_path, device, batch_size)
    )
    real, fake = features(real_audio, sample_rate), features(fake_audio, sample_rate)
    if len(real) < 2 or len(fake) < 2:
        raise ConfigError(f"FAD needs at least 2 VGGish examples per set, got {len(real)} and {len(fake)}")
    return frechet_distance(*feature_statistics(real), *feature_statistics(fake))
