"""Embedded quality metric for generated digits: a small classifier trained on the bundled digits.

NOT Inception FID. This is an embedded, digits-only metric that runs offline on CPU: a small CNN
(`DigitsClassifier`) is trained in seconds on the train split of scikit-learn's digits
(`mmar.data.digits.digits_split`) and cached on disk. From generated images and their intended labels
it reports

- `digits_class_accuracy`: the fraction of samples the classifier assigns to the intended class;
- `digits_classifier_fd`: the Fréchet distance (`mmar.eval.frechet`) between the classifier's
  penultimate (64-d) features of the samples and of the held-out val split.

Its numbers are not comparable to FID or to anything outside this codebase. To read them, the metric
also reports the classifier's own val accuracy (`classifier_val_accuracy`, the ceiling for
`digits_class_accuracy`), the FD between the train and the val split (`train_val_fd`, the floor on
real data) and, since FD is biased upwards for small sample sets, the FD of the same number of real
train images (`real_fd_at(n)`). Compare runs at equal sample counts.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from mmar.data.digits import NUM_CLASSES, digits_split, random_shift
from mmar.errors import ConfigError
from mmar.eval.frechet import feature_statistics, frechet_distance
from mmar.io import atomic_write

CLASSIFIER_VERSION = 1  # bump when the architecture or the training recipe changes (invalidates caches)
FEATURE_DIM = 64


def conv_stack(in_channels: int, width: int, out_channels: int) -> nn.Sequential:
    """3x3 conv -> two stride-2 3x3 convs (BatchNorm + ReLU each): [N, C, 16, 16] -> [N, out, 4, 4]."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, stride=2, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, out_channels, 3, stride=2, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class DigitsClassifier(nn.Module):
    """Small CNN for [B, 1, S, S] digits in [-1, 1]: conv features -> global pool (64-d) -> 10 logits.

    Inputs larger than `work_size` are first average-pooled to it: the digits hold 8x8 of detail, and
    the low-pass keeps the classifier equally cheap (and anti-aliased) at any image size.
    """

    def __init__(
        self,
        width: int = 32,
        feature_dim: int = FEATURE_DIM,
        num_classes: int = NUM_CLASSES,
        work_size: int = 16,
    ):
        super().__init__()
        self.work_size = work_size
        self.body = conv_stack(1, width, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, feature_dim] (global average pool of the last conv)."""
        if x.shape[-1] > self.work_size or x.shape[-2] > self.work_size:
            x = F.adaptive_avg_pool2d(x, self.work_size)  # [B, 1, S, S] -> [B, 1, 16, 16]
        return self.body(x).mean(dim=(2, 3))  # [B, D, 4, 4] -> [B, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # [B, 10]


def default_cache_dir() -> Path:
    """`$MMAR_CACHE` if set, else `~/.cache/mmar`."""
    return Path(os.environ.get("MMAR_CACHE") or Path.home() / ".cache" / "mmar")


def classifier_cache_path(
    image_size: int, val_fraction: float, seed: int, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Where the classifier for this digits split is cached."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = f"digits_classifier_v{CLASSIFIER_VERSION}_s{image_size}_val{val_fraction:g}_seed{seed}.safetensors"
    return root / "embedded" / name


def train_digits_classifier(
    image_size: int = 32,
    val_fraction: float = 0.1,
    seed: int = 0,
    epochs: int = 8,
    batch_size: int = 64,
    lr: float = 1e-2,
) -> tuple[DigitsClassifier, dict[str, float]]:
    """Train a `DigitsClassifier` on the digits train split (seeded; random shifts of ~1/4 digit pixel).

    Runs on one CPU thread (see `single_thread`), which also makes it deterministic.

    Returns:
        The classifier in eval mode and {"val_accuracy", "train_seconds"}.
    """
    train_x, train_y, val_x, val_y = digits_split(image_size, val_fraction, seed)
    start = time.perf_counter()
    with single_thread(), torch.random.fork_rng(), torch.enable_grad():  # caller's RNG kept
        torch.manual_seed(seed)
        model = DigitsClassifier()
        _fit(model, train_x, train_y, epochs, batch_size, lr, max_shift=max(1, image_size // 32))
        info = {"train_seconds": time.perf_counter() - start}
        info["val_accuracy"] = _accuracy(model, val_x, val_y) if len(val_y) else float("nan")
    return model, info


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch CPU ops on one thread, then restore the thread count.

    The classifier's convolutions are too small to gain from intra-op threads, and on a busy machine
    (tests running beside other jobs) the thread barriers make two threads ~5x slower than one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _fit(
    model: DigitsClassifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    max_shift: int,
) -> None:
    """AdamW + one-cycle schedule over shuffled batches of randomly shifted images; ends in eval mode."""
    steps_per_epoch = len(labels) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=epochs * steps_per_epoch)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            batch = torch.stack([random_shift(x, max_shift) for x in images[idx]])  # [B, 1, S, S]
            loss = F.cross_entropy(model(batch), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()


def load_digits_classifier(
    image_size: int = 32,
    val_fraction: float = 0.1,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[DigitsClassifier, dict[str, float]]:
    """The cached classifier for this split, training and caching it first when absent.

    Returns:
        The classifier in eval mode and {"val_accuracy", "train_seconds", "loaded_from_cache"}.
    """
    path = classifier_cache_path(image_size, val_fraction, seed, cache_dir)
    if path.is_file():
        model, info = load_cached_classifier(DigitsClassifier(), path)
        return model, {**info, "loaded_from_cache": True}
    model, info = train_digits_classifier(image_size, val_fraction, seed)
    save_classifier(model, info, path)
    return model, {**info, "loaded_from_cache": False}


class DigitsMetrics:
    """Embedded digits metrics (not Inception FID): class accuracy and classifier-feature FD.

    Args:
        image_size: side of the generated images (the classifier is trained at this size).
        val_fraction: digits split; must match the data the generator was trained on.
        seed: digits split seed.
        cache_dir: classifier cache folder (default `$MMAR_CACHE` or `~/.cache/mmar`).
        batch_size: images per classifier forward pass.

    Attributes:
        classifier_val_accuracy: the classifier's accuracy on the held-out val split (> 0.95).
        reference_mu, reference_sigma: feature statistics of the val split.
    """

    def __init__(
        self,
        image_size: int = 32,
        val_fraction: float = 0.1,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 256,
    ):
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction={val_fraction} must be in (0, 1): the FD needs a val split")
        self.image_size = image_size
        self.batch_size = batch_size
        self.classifier, self.classifier_info = load_digits_classifier(
            image_size, val_fraction, seed, cache_dir
        )
        self.classifier_val_accuracy = float(self.classifier_info["val_accuracy"])
        self._train_x, _, self.val_images, self.val_labels = digits_split(image_size, val_fraction, seed)
        self.reference_mu, self.reference_sigma = feature_statistics(self.features(self.val_images))
        self._train_val_fd: float | None = None
        self._real_fd_at: dict[int, float] = {}

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate classifier features [N, 64] of images [N, 1, S, S] in [-1, 1]."""
        self._check_images(images)
        with single_thread():
            chunks = [self.classifier.features(x.float().cpu()) for x in images.split(self.batch_size)]
        return torch.cat(chunks)  # [N, 64]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Predicted classes long [N]."""
        return self.classifier.head(self.features(images)).argmax(dim=-1)  # [N]

    def digits_class_accuracy(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Fraction of images [N, 1, S, S] the classifier assigns to their intended labels [N]."""
        if len(labels) != len(images):
            raise ConfigError(f"got {len(images)} images but {len(labels)} labels; pass one label per image")
        return (self.predict(images) == labels.cpu().long()).float().mean().item()

    def digits_classifier_fd(self, images: torch.Tensor) -> float:
        """Fréchet distance between classifier features of `images` and of the val split."""
        mu, sigma = feature_statistics(self.features(images))
        return frechet_distance(mu, sigma, self.reference_mu, self.reference_sigma)

    @property
    def train_val_fd(self) -> float:
        """FD of the whole train split vs the val split: what real digits score (a floor)."""
        if self._train_val_fd is None:
            self._train_val_fd = self.digits_classifier_fd(self._train_x)
        return self._train_val_fd

    def real_fd_at(self, num_samples: int, seed: int = 0) -> float:
        """FD of `num_samples` random real train images vs the val split: the floor at that sample count.

        FD is biased upwards for small sample sets, so compare a generator's FD with this number at the
        same count rather than with `train_val_fd`.
        """
        if num_samples not in self._real_fd_at:
            num = min(max(num_samples, 2), len(self._train_x))
            idx = torch.randperm(len(self._train_x), generator=torch.Generator().manual_seed(seed))[:num]
            self._real_fd_at[num_samples] = self.digits_classifier_fd(self._train_x[idx])
        return self._real_fd_at[num_samples]

    def compute(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """All numbers as a dict (e.g. for a metrics JSON), with the references needed to read them."""
        return {
            "digits_class_accuracy": self.digits_class_accuracy(images, labels),
            "digits_classifier_fd": self.digits_classifier_fd(images),
            "digits_classifier_val_accuracy": self.classifier_val_accuracy,
            "digits_classifier_fd_real_same_n": self.real_fd_at(len(images)),
            "digits_classifier_fd_train_vs_val": self.train_val_fd,
            "num_samples": len(images),
        }

    __call__ = compute

    def _check_images(self, images: torch.Tensor) -> None:
        expected = (1, self.image_size, self.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ConfigError(
                f"digits metrics expect images [N, {', '.join(map(str, expected))}] in [-1, 1], got "
                f"{tuple(images.shape)}; build DigitsMetrics(image_size=...) to match the samples"
            )
        if images.numel() and (images.min() < -1.5 or images.max() > 1.5):
            raise ConfigError(
                f"digits metrics expect images in [-1, 1], got values in [{images.min():.3g}, "
                f"{images.max():.3g}]; rescale them (uint8 x -> x / 127.5 - 1)"
            )


@torch.no_grad()
def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    return (model(images).argmax(dim=-1) == labels).float().mean().item()


def load_cached_classifier(model: nn.Module, path: Path) -> tuple[nn.Module, dict[str, float]]:
    """A classifier cached by `save_classifier`: (model with its weights, in eval mode; training info)."""
    from safetensors import safe_open

    model.load_state_dict(load_file(str(path)))
    with safe_open(str(path), framework="pt") as f:
        info = json.loads((f.metadata() or {})["info"])
    return model.eval(), {k: float(v) for k, v in info.items()}


def save_classifier(model: nn.Module, info: dict[str, float], path: Path) -> None:
    """Atomic safetensors write with the training info in the metadata (safe under concurrent runs)."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"info": json.dumps(info)}))
