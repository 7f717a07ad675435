"""Inception-v3 features of the ADM evaluator (Dhariwal & Nichol, 2021), through torch-fidelity's port.

torch-fidelity's `FeatureExtractorInceptionV3` is the 2015 TensorFlow graph (pt_inception-2015-12-05)
with its TF1-exact bilinear resize to 299 inside the forward; ADM's evaluator runs that graph, so its
numbers and these agree. From one forward pass over uint8 images [N, 3, H, W]:

- `pool` [N, 2048]: pool_3, for FID and precision/recall;
- `logits` [N, 1008]: pool_3 times the softmax weights without the bias, as ADM (and the original IS
  code) computes the Inception Score;
- `spatial` [N, 2023]: the first 7 channels of `mixed_6/conv` (Mixed_6d's 1x1 branch, after its ReLU) at
  17 x 17, ADM's sFID features.

Weights: a local file (`weights=`), or the standard URL downloaded once into torch's hub cache; the file
must load with `weights_only=True` (it is a plain state dict) before torch-fidelity reads it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from mmar.errors import ConfigError
from mmar.io import atomic_write

INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
    "weights-inception-2015-12-05-6726825d.pth"
)
SPATIAL_CHANNELS = 7  # ADM: mixed_6/conv[..., :7]


def cached_weights_path(url: str) -> Path:
    """Where a download of `url` is kept: torch's hub cache (TORCH_HOME), checkpoints/<file name>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])


def fetch_weights(weights: str | Path | None, url: str, option: str, what: str) -> Path:
    """A local weights file: `weights` if given, else the cached download of `url` (downloading it once).
    Raises ConfigError naming both routes (`option` is the command-line flag) when neither works."""
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(f"{what} weights not found at {path}; pass an existing file to {option}")
        return path
    path = cached_weights_path(url)
    if path.is_file():
        return path
    try:
        atomic_write(path, lambda tmp: torch.hub.download_url_to_file(url, tmp, progress=True))
    except Exception as err:  # no network, a proxy, a moved file: say how to get it by hand
        raise ConfigError(
            f"could not download the {what} weights from {url} ({type(err).__name__}: {err}). Download "
            f"the file yourself and pass it with {option} PATH, or put it at {path}"
        ) from err
    return path


class InceptionFeatures(nn.Module):
    """uint8 images [N, 3, H, W] (or [N, 1, H, W], repeated to RGB) -> {"pool", "logits", "spatial"}."""

    def __init__(self, weights: str | Path | None = None):
        super().__init__()
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as err:
            raise ConfigError("Inception metrics need torch-fidelity: pip install 'mmar[eval]'") from err
        path = fetch_weights(weights, INCEPTION_URL, "--inception-weights", "Inception-v3 (2015)")
        try:
            torch.load(path, map_location="cpu", weights_only=True)  # a plain state dict, nothing to run
        except Exception as err:
            raise ConfigError(
                f"{path} is not an Inception-v3 state dict loadable with weights_only=True ({err}); use "
                f"the file at {INCEPTION_URL}"
            ) from err
        self.net = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=str(path)
        )
        self.weights = path
        self._spatial: torch.Tensor | None = None
        self.net.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module, inputs, output: torch.Tensor) -> None:
        self._spatial = output[:, :SPATIAL_CHANNELS].flatten(1).float()  # (N, 7 * 17 * 17)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ConfigError(
                f"Inception features take uint8 images [N, 3, H, W], got {tuple(images.shape)} "
                f"{images.dtype}; convert with mmar.eval.fid.to_uint8 (rounds, as ADM)"
            )
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        pool, logits = self.net(images.to(next(self.net.parameters()).device))
        return {"pool": pool, "logits": logits, "spatial": self._spatial}
