"""Fréchet Video Distance (Unterthiner et al., 2018) in the StyleGAN-V convention (Skorokhodov et al.,
2022), which most recent video-generation tables use.

The detector is StyleGAN-V's TorchScript I3D (Kinetics-400), called on float videos [N, 3, T, H, W] with
values in [0, 255] as `detector(videos, rescale=True, resize=True, return_features=True)`: it rescales to
[-1, 1], resizes to 224 itself and returns the 400-d features before the softmax. One clip of the first
`frames` (16) frames per video; a shorter video is an error, not silently dropped. FVD is the Fréchet
distance of the two feature sets (`mmar.eval.frechet`). Weights: a local file (`--i3d-weights`) or the
StyleGAN-V URL, downloaded once into torch's hub cache.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from mmar.errors import ConfigError
from mmar.eval.frechet import feature_statistics, frechet_distance
from mmar.eval.inception import fetch_weights
from mmar.io import load_uint8_npz
from mmar.video_io import read_video

I3D_URL = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1"
FVD_FRAMES = 16


class I3DFeatures(nn.Module):
    """uint8 videos [N, C, T, H, W] (C = 1 or 3) -> I3D features [N, 400] of their first `frames` frames."""

    def __init__(self, weights: str | Path | None = None, frames: int = FVD_FRAMES):
        super().__init__()
        path = fetch_weights(weights, I3D_URL, "--i3d-weights", "I3D (StyleGAN-V TorchScript)")
        try:
            self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as err:
            raise ConfigError(
                f"{path} is not a TorchScript I3D detector ({err}); use the file at {I3D_URL}"
            ) from err
        self.frames, self.weights = frames, path

    @torch.no_grad()
    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        if videos.dtype != torch.uint8 or videos.ndim != 5 or videos.shape[1] not in (1, 3):
            raise ConfigError(
                f"I3D features take uint8 videos [N, C, T, H, W] with C = 1 or 3, got {tuple(videos.shape)} "
                f"{videos.dtype}; convert [-1, 1] videos with mmar.eval.fid.to_uint8"
            )
        if videos.shape[2] < self.frames:
            raise ConfigError(
                f"FVD takes clips of {self.frames} frames but the videos have {videos.shape[2]}; generate "
                "longer videos or pass --frames (numbers with other clip lengths are not comparable)"
            )
        clip = videos[:, :, : self.frames].expand(-1, 3, -1, -1, -1).float()  # (N, 3, T, H, W), [0, 255]
        device = next(iter(self.net.parameters()), clip).device
        features = self.net(clip.to(device), rescale=True, resize=True, return_features=True)
        return features.float()


def video_batches(source: str | Path, batch_size: int = 16) -> tuple[int, Iterator[torch.Tensor]]:
    """(count, uint8 batches [B, C, T, H, W]) of an `.npz` (`videos` or `arr_0`, uint8 [N, T, H, W, C])
    or of a folder of GIFs (sorted)."""
    source = Path(source)
    if source.suffix == ".npz":
        array = load_uint8_npz(source, ("videos", "arr_0"), "N, T, H, W, C")
        tensor = torch.from_numpy(array).permute(0, 4, 1, 2, 3)  # (N, C, T, H, W)
        return len(tensor), iter(tensor.split(batch_size))
    files = sorted(source.glob("*.gif")) if source.is_dir() else []
    if not files:
        raise ConfigError(f"{source} is neither an .npz of uint8 videos nor a folder of GIFs")
    return len(files), _read_gifs(files, batch_size)


def _read_gifs(files: list[Path], batch_size: int) -> Iterator[torch.Tensor]:
    for start in range(0, len(files), batch_size):
        batch = files[start : start + batch_size]
        videos = [torch.from_numpy(read_video(path, channels=3)) for path in batch]  # (T, H, W, 3) each
        yield torch.stack(videos).permute(0, 4, 1, 2, 3)  # (B, 3, T, H, W)


def i3d_features(
    detector: I3DFeatures, batches: Iterable[torch.Tensor], total: int | None = None
) -> np.ndarray:
    """Features [N, 400] (float64) of uint8 video batches, with a progress bar."""
    parts = []
    with tqdm(total=total, desc="i3d features", unit="video") as bar:
        for batch in batches:
            parts.append(detector(batch).cpu())
            bar.update(len(batch))
    if not parts:
        raise ConfigError("no videos to extract features from")
    return torch.cat(parts).double().numpy()


def fvd(features: np.ndarray, reference: np.ndarray) -> float:
    """The Fréchet distance between two sets of I3D features [N, 400] and [M, 400]."""
    return frechet_distance(*feature_statistics(features), *feature_statistics(reference))
