"""VGGish (Hershey et al. 2017, "CNN Architectures for Large-Scale Audio Classification"): the audio
embedding network behind the Fréchet Audio Distance (Kilgour et al. 2019), with its log-mel front end.

mmar does not download weights: give the path of a VGGish state dict (`.safetensors`, or `.pt` / `.pth`
read with `torch.load(weights_only=True)`) whose keys follow the widely used PyTorch port's layout:

    features.{0,3,6,8,11,13}.weight / .bias    the six 3x3 convs (64, 128, 256, 256, 512, 512 channels)
    embeddings.{0,2,4}.weight / .bias          fc 12288 -> 4096, 4096 -> 4096, 4096 -> 128

Keys of that port's postprocessor (`pproc.*`: the PCA whitening and 8-bit quantisation) are ignored: the
distance is computed on the raw 128-d embeddings. Any other missing, extra or mis-shaped key is a
ConfigError.

Network: four conv blocks (3x3 convs with ReLU; widths 64 | 128 | 256, 256 | 512, 512; a 2x2 max-pool
after each block) over log-mel examples [N, 1, 96, 64] (96 frames of 10 ms, 64 mel bands), giving
[N, 512, 6, 4]; flattened in TensorFlow's (height, width, channel) order, as the original weights expect,
then fc 4096 + ReLU, fc 4096 + ReLU, fc 128. The last fc has no ReLU by default: FAD uses that layer's
raw output (the PyTorch port appends a ReLU; `final_relu=True` keeps it).

Front end (`log_mel_examples`, as the original `vggish_input`): 16 kHz mono; frames of 25 ms (400
samples, periodic Hann window, 512-point FFT magnitude) every 10 ms, uncentred; 64 triangular mel bands
from 125 to 7500 Hz on the HTK mel scale (triangles in the mel domain, the DC bin zeroed, no area
normalisation); log(mel + 0.01); non-overlapping examples of 96 frames (0.96 s), an incomplete last one
dropped. Clips shorter than one example are zero-padded at the end to one (0.975 s).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from mmar.errors import ConfigError
from mmar.spectral import hz_to_mel

SAMPLE_RATE = 16000
WINDOW, HOP, N_FFT = 400, 160, 512  # 25 ms, 10 ms, 2 ** ceil(log2(400))
NUM_MELS, MEL_LOW, MEL_HIGH = 64, 125.0, 7500.0
LOG_OFFSET = 0.01
EXAMPLE_FRAMES = 96  # 0.96 s
EXAMPLE_SAMPLES = WINDOW + (EXAMPLE_FRAMES - 1) * HOP  # 15600: the shortest clip that gives one example
EMBEDDING_DIM = 128
CONV_WIDTHS = (64, 128, 256, 256, 512, 512)
POOL_AFTER = (0, 1, 3, 5)  # a max-pool after these convs (the end of each block)
IGNORED_PREFIXES = ("pproc.",)


def vggish_mel_matrix() -> torch.Tensor:
    """VGGish's mel weights [n_fft // 2 + 1, 64] (float32): HTK mel triangles built in the mel domain
    over 125-7500 Hz, the DC bin zeroed, unnormalised."""
    bins_mel = hz_to_mel(torch.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1, dtype=torch.float64), "htk")
    low, high = hz_to_mel(torch.tensor(MEL_LOW), "htk"), hz_to_mel(torch.tensor(MEL_HIGH), "htk")
    edges = torch.linspace(float(low), float(high), NUM_MELS + 2, dtype=torch.float64)  # [66]
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # [64, 1] each
    rising = (bins_mel[None] - lower) / (centre - lower)  # [64, F]
    falling = (upper - bins_mel[None]) / (upper - centre)
    weights = torch.minimum(rising, falling).clamp_min(0.0)
    weights[:, 0] = 0.0  # the DC bin
    return weights.T.float()  # [F, 64]


def log_mel_examples(audio: torch.Tensor) -> torch.Tensor:
    """16 kHz mono clips [N, samples] -> log-mel examples [N, E, 96, 64] (E = examples per clip, >= 1;
    clips shorter than one example are zero-padded at the end)."""
    if audio.ndim != 2:
        raise ConfigError(
            f"log_mel_examples expects 16 kHz mono clips [N, samples], got {tuple(audio.shape)}"
        )
    x = audio.float()
    if x.shape[-1] < EXAMPLE_SAMPLES:
        x = torch.nn.functional.pad(x, (0, EXAMPLE_SAMPLES - x.shape[-1]))
    window = torch.hann_window(WINDOW, periodic=True, device=x.device)
    frames = x.unfold(-1, WINDOW, HOP) * window  # [N, frames, 400], uncentred
    magnitude = torch.fft.rfft(frames, n=N_FFT).abs()  # [N, frames, 257]
    log_mel = torch.log(magnitude @ vggish_mel_matrix().to(x.device) + LOG_OFFSET)  # [N, frames, 64]
    return log_mel.unfold(1, EXAMPLE_FRAMES, EXAMPLE_FRAMES).transpose(-1, -2)  # [N, E, 96, 64]


class VGGish(nn.Module):
    """VGGish: log-mel examples [N, 1, 96, 64] -> embeddings [N, 128] (layout and keys in the module doc).

    Args:
        final_relu: apply a ReLU to the 128-d output (the PyTorch port does; FAD uses it without).
    """

    def __init__(self, final_relu: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for i, width in enumerate(CONV_WIDTHS):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            layers += [nn.MaxPool2d(2, 2)] if i in POOL_AFTER else []
            channels = width
        self.features = nn.Sequential(*layers)  # convs at indices 0, 3, 6, 8, 11, 13
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, EMBEDDING_DIM),
            *([nn.ReLU(inplace=True)] if final_relu else []),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, EXAMPLE_FRAMES, NUM_MELS):
            raise ConfigError(f"VGGish expects log-mel examples [N, 1, 96, 64], got {tuple(x.shape)}")
        x = self.features(x)  # [N, 512, 6, 4]
        x = x.permute(0, 2, 3, 1).flatten(1)  # TensorFlow's (height, width, channel) flattening order
        return self.embeddings(x)  # [N, 128]


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a `.safetensors` file, or a `.pt` / `.pth` one read with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"VGGish weights '{path}' not found; mmar does not download them: pass the path of a VGGish "
            "state dict (.safetensors / .pt / .pth with features.N.* and embeddings.N.* keys)"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file: a one-line error naming it
        reason = " ".join(str(err).split())[:200]
        raise ConfigError(f"cannot read VGGish weights '{path}' ({type(err).__name__}: {reason})") from err
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"VGGish weights '{path}' are not a state dict (a mapping of names to tensors)")
    return dict(state)


def load_vggish(weights_path: str | os.PathLike, final_relu: bool = False) -> VGGish:
    """A `VGGish` with the weights at `weights_path`, in eval mode (ConfigError on any key mismatch)."""
    state = {k: v for k, v in read_state_dict(weights_path).items() if not k.startswith(IGNORED_PREFIXES)}
    model = VGGish(final_relu)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = [
            f"missing {missing[:4]}" if missing else "",
            f"unexpected {unexpected[:4]}" if unexpected else "",
        ]
        parts += [f"mis-shaped {[(k, tuple(state[k].shape)) for k in wrong[:4]]}" if wrong else ""]
        raise ConfigError(
            f"'{weights_path}' is not a VGGish state dict in the PyTorch port's layout "
            f"({'; '.join(p for p in parts if p)}); expected features.N.* and embeddings.N.* keys"
        )
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()
