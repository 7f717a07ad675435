"""Reading and writing video files: the one place for GIF, MP4 (and other PyAV containers), `.npy` clips
and PNG frame strips.

Videos are uint8 arrays [T, H, W, C] with C = 1 (grey) or 3 (RGB), numpy or torch.

* GIF (`write_gif`, PIL): loops forever; frames are stored exactly. A frame with at most 256 distinct
  colours (every grey frame) gets its own palette of exactly those colours, so reading it back gives the
  same pixel values; a frame with more colours is quantised to 256 without dithering. Every frame is
  written whole: PIL's `save_all` would merge identical consecutive frames (a still clip would lose
  frames), so the file is assembled from PIL's per-frame GIF blocks.
* MP4 (`write_mp4`, PyAV): H.264 (libx264, yuv420p, `crf`), or FFmpeg's built-in `mpeg4` encoder when
  libx264 is missing. yuv420p needs even sizes and encoders handle tiny frames badly, so frames whose
  shorter side is under `MIN_MP4_SIDE` (64) px are first upscaled by the integer nearest-neighbour factor
  k = ceil(64 / min(H, W)), then the bottom/right edges are replicated to even sizes. k and the original
  size are recorded in the file's `comment` metadata, and `read_video` undoes both (k x k mean pooling,
  crop), so a round trip returns the written shape; other players show the upscaled clip.
* `read_video` reads .gif (PIL), .mp4/.webm/.mov/.avi/.mkv (PyAV) and .npy (uint8 [T, H, W(, C)]); any
  unreadable or corrupt file, or one with too few frames, is a `ConfigError` naming the file.

Writes are atomic (`mmar.io.atomic_write`): a temporary file next to the target, then `os.replace`.
"""

from __future__ import annotations

import io
import math
import os
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from PIL import GifImagePlugin, Image, ImageSequence

from mmar.errors import ConfigError
from mmar.io import atomic_write

GIF_EXTENSIONS = (".gif",)
AV_EXTENSIONS = (".mp4", ".webm", ".mov", ".avi", ".mkv")
NPY_EXTENSIONS = (".npy",)
VIDEO_EXTENSIONS = GIF_EXTENSIONS + AV_EXTENSIONS + NPY_EXTENSIONS
MIN_MP4_SIDE = 64
_MP4_TAG = re.compile(r"mmar_video_io size=(\d+)x(\d+) scale=(\d+)")
# errors PIL raises for unreadable, truncated or malicious files
_PIL_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


# ------------------------------------------------------------------------------------------- inputs


def as_uint8_video(video, what: str = "video") -> np.ndarray:
    """A uint8 numpy video [T, H, W, C] (C = 1 or 3) from numpy/torch [T, H, W(, C)]; ConfigError else."""
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().numpy()
    video = np.asarray(video)
    if video.ndim == 3:
        video = video[..., None]
    if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] not in (1, 3) or 0 in video.shape:
        raise ConfigError(
            f"{what} must be a non-empty uint8 array [T, H, W, C] with C = 1 or 3, got {video.dtype} "
            f"{tuple(video.shape)}; convert [-1, 1] floats with ((x + 1) * 127.5).round().clamp(0, 255)"
        )
    return np.ascontiguousarray(video)


def _av():
    """The PyAV module (imported on first use); ConfigError when it is not installed."""
    try:
        import av
    except ImportError as err:
        raise ConfigError(
            "reading or writing MP4/WebM/MOV/AVI/MKV needs PyAV: pip install av (GIF and .npy work without)"
        ) from err
    return av


def _suffix(path: str | os.PathLike) -> str:
    return Path(path).suffix.lower()


# ---------------------------------------------------------------------------------------------- GIF


def _palette_frame(frame: np.ndarray) -> Image.Image:
    """A mode "P" image of a uint8 frame [H, W, C]: its exact colours when there are at most 256, else a
    256-colour median-cut quantisation without dithering."""
    if frame.shape[-1] == 1:
        frame = np.repeat(frame, 3, axis=-1)
    packed = (frame[..., 0].astype(np.uint32) << 16) | (frame[..., 1].astype(np.uint32) << 8) | frame[..., 2]
    colours, index = np.unique(packed.ravel(), return_inverse=True)
    if len(colours) > 256:
        rgb = Image.fromarray(frame, "RGB")
        return rgb.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    image = Image.fromarray(index.reshape(packed.shape).astype(np.uint8), "P")
    palette = np.stack([colours >> 16, (colours >> 8) & 255, colours & 255], axis=-1).astype(np.uint8)
    image.putpalette(palette.ravel().tobytes(), "RGB")
    return image


def write_gif(path: str | os.PathLike, video, fps: float = 8) -> None:
    """Write uint8 [T, H, W, C] (C = 1 or 3) as a GIF that loops forever, every frame whole and exact
    (up to 256 colours per frame; more are quantised without dithering). GIF delays are in 1/100 s."""
    video = as_uint8_video(video)
    if fps <= 0:
        raise ConfigError(f"fps={fps} must be > 0")
    duration = max(10, round(1000 / fps))  # ms; GIF stores centiseconds
    frames = [_palette_frame(frame) for frame in video]
    buffer = io.BytesIO()
    header, _ = GifImagePlugin.getheader(frames[0].copy(), info={"loop": 0, "duration": duration})
    for part in header:
        buffer.write(part)
    for frame in frames:
        for part in GifImagePlugin.getdata(frame, duration=duration, include_color_table=True):
            buffer.write(part)
    buffer.write(b";")  # trailer
    data = buffer.getvalue()

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def _read_gif(path: Path, indices: range | None, start: int, stride: int) -> tuple[list[np.ndarray], int]:
    """(RGB frames [H, W, 3] at start, start + stride, ... (all, or `indices`), frames seen)."""
    frames, seen = [], 0
    last = None if indices is None else indices[-1]
    with Image.open(path) as gif:
        if gif.format != "GIF":
            raise OSError(f"not a GIF file (PIL reads it as {gif.format})")
        for i, frame in enumerate(ImageSequence.Iterator(gif)):
            seen = i + 1
            if last is not None and i > last:
                break
            if i >= start and (i - start) % stride == 0:
                frames.append(np.asarray(frame.convert("RGB")))
    return frames, seen


# ---------------------------------------------------------------------------------------------- MP4


def _mp4_geometry(height: int, width: int) -> tuple[int, int, int]:
    """(scale k, padded height, padded width) that `write_mp4` encodes an H x W clip at."""
    scale = math.ceil(MIN_MP4_SIDE / min(height, width)) if min(height, width) < MIN_MP4_SIDE else 1
    return scale, height * scale + (height * scale) % 2, width * scale + (width * scale) % 2


def default_mp4_codec() -> str:
    """ "libx264" when this PyAV build has it, else FFmpeg's built-in "mpeg4"."""
    return "libx264" if "libx264" in _av().codecs_available else "mpeg4"


def write_mp4(
    path: str | os.PathLike, video, fps: float = 8, codec: str | None = None, crf: int = 18
) -> None:
    """Write uint8 [T, H, W, C] (C = 1 or 3) as an MP4 (yuv420p).

    Args:
        path: target file (written atomically).
        video: uint8 [T, H, W, C], numpy or torch.
        fps: frames per second (integer or fractional).
        codec: "libx264" or "mpeg4"; default libx264, or mpeg4 when libx264 is missing.
        crf: libx264 constant rate factor (lower = better; 18 is visually near lossless).

    Frames under 64 px on the shorter side are upscaled by an integer nearest factor and sizes padded to
    even (replicated edges); `read_video` undoes both (see the module docstring).
    """
    av = _av()
    video = as_uint8_video(video)
    if fps <= 0:
        raise ConfigError(f"fps={fps} must be > 0")
    codec = codec or default_mp4_codec()
    if codec not in av.codecs_available:
        raise ConfigError(f"this PyAV build has no '{codec}' encoder; use codec='mpeg4' (built into FFmpeg)")
    _, h, w, _ = video.shape
    scale, height, width = _mp4_geometry(h, w)
    rate = Fraction(fps).limit_denominator(1001)

    def frames():
        for frame in video:
            if frame.shape[-1] == 1:
                frame = np.repeat(frame, 3, axis=-1)
            if scale > 1:
                frame = frame.repeat(scale, axis=0).repeat(scale, axis=1)
            pad = ((0, height - frame.shape[0]), (0, width - frame.shape[1]), (0, 0))
            yield np.ascontiguousarray(np.pad(frame, pad, mode="edge"))

    def write(tmp: str) -> None:
        with av.open(tmp, mode="w", format="mp4") as container:
            container.metadata["comment"] = f"mmar_video_io size={h}x{w} scale={scale}"
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            if codec == "libx264":
                stream.options = {"crf": str(crf), "preset": "medium"}
            else:  # mpeg4: fixed low quantiser, high bit-rate ceiling
                stream.bit_rate = 20_000_000
                stream.options = {"qmin": "1", "qmax": "4"}
            for i, array in enumerate(frames()):
                frame = av.VideoFrame.from_ndarray(array, format="rgb24")
                frame.pts = i
                container.mux(stream.encode(frame))
            container.mux(stream.encode())  # flush

    atomic_write(path, write)


def _read_av(path: Path, indices: range | None, start: int, stride: int) -> tuple[list[np.ndarray], int]:
    """(RGB frames [H, W, 3] at start, start + stride, ... (all, or `indices`), frames seen) via PyAV,
    undoing `write_mp4`'s upscaling and padding when its tag is in the metadata."""
    av = _av()

    frames, seen = [], 0
    last = None if indices is None else indices[-1]
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise OSError("no video stream")
        tag = _MP4_TAG.fullmatch(container.metadata.get("comment", ""))
        stream = container.streams.video[0]
        for i, frame in enumerate(container.decode(stream)):
            seen = i + 1
            if last is not None and i > last:
                break
            if i >= start and (i - start) % stride == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
    h, w, k = (int(v) for v in tag.groups()) if tag else (0, 0, 1)
    if tag and frames and frames[0].shape[0] >= h * k and frames[0].shape[1] >= w * k:  # our own file
        stack = np.stack(frames)[:, : h * k, : w * k].astype(np.float32)
        if k > 1:
            stack = stack.reshape(len(stack), h, k, w, k, 3).mean(axis=(2, 4))
        frames = list(np.clip(np.round(stack), 0, 255).astype(np.uint8))
    return frames, seen


# --------------------------------------------------------------------------------------------- read


def _to_channels(video: np.ndarray, channels: int | None) -> np.ndarray:
    """[T, H, W, C] as stored (None), grey (1: ITU-R 601 luma, exact for grey frames) or RGB (3)."""
    if channels is None or video.shape[-1] == channels:
        return video
    if channels == 3:
        return np.repeat(video, 3, axis=-1)
    luma = video.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(np.round(luma), 0, 255).astype(np.uint8)[..., None]


def read_video(
    path: str | os.PathLike,
    num_frames: int | None = None,
    stride: int = 1,
    start: int = 0,
    channels: int | None = None,
) -> np.ndarray:
    """Frames start, start + stride, ... of a video file as uint8 [T, H, W, C].

    Args:
        path: a .gif, .mp4/.webm/.mov/.avi/.mkv, or .npy (uint8 [T, H, W] or [T, H, W, C]) file.
        num_frames: how many frames to return (None: every frame from `start` on, every `stride`).
        stride: step between returned frames (>= 1).
        start: index of the first returned frame (>= 0).
        channels: None: as decoded (RGB for GIF and PyAV files, as stored for .npy); 1: grey (luma);
            3: RGB.

    Raises ConfigError naming the file when it is missing, unreadable or corrupt, or has too few frames.
    """
    path = Path(path)
    if num_frames is not None and num_frames < 1:
        raise ConfigError(f"num_frames={num_frames} must be >= 1 (or None for all frames)")
    if stride < 1 or start < 0:
        raise ConfigError(f"stride={stride} must be >= 1 and start={start} >= 0")
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels={channels} must be None, 1 (grey) or 3 (RGB)")
    suffix = _suffix(path)
    if suffix not in VIDEO_EXTENSIONS:
        raise ConfigError(f"'{path}' is not a video file this reader knows ({list(VIDEO_EXTENSIONS)})")
    if not path.is_file():
        raise ConfigError(f"video file '{path}' does not exist")
    indices = None if num_frames is None else range(start, start + (num_frames - 1) * stride + 1, stride)
    try:
        if suffix in NPY_EXTENSIONS:
            video, total = _read_npy(path, indices, start, stride)
        else:
            read = _read_gif if suffix in GIF_EXTENSIONS else _read_av
            frames, total = read(path, indices, start, stride)
            video = np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)
    except ConfigError:
        raise
    except Exception as err:  # PIL, PyAV (av.FFmpegError is an OSError/ValueError) and numpy errors
        raise ConfigError(f"unreadable video '{path}' ({type(err).__name__}: {err})") from err
    wanted = num_frames if num_frames is not None else 1
    if len(video) < wanted:
        need = start + (wanted - 1) * stride + 1
        raise ConfigError(
            f"video '{path}' has {total} frames, too few for {wanted} frame(s) from frame {start} every "
            f"{stride} (needs {need})"
        )
    return np.ascontiguousarray(_to_channels(video, channels))


def _read_npy(path: Path, indices: range | None, start: int, stride: int) -> tuple[np.ndarray, int]:
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if array.ndim == 3:
        array = array[..., None]
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise ConfigError(
            f"'{path}' holds {array.dtype} {tuple(array.shape)}; a .npy video must be uint8 [T, H, W] or "
            "[T, H, W, C] with C = 1 or 3"
        )
    stop = None if indices is None else min(indices.stop, len(array))
    return np.array(array[start:stop:stride]), len(array)


def num_frames(path: str | os.PathLike) -> int:
    """Frame count of a video file: PIL's n_frames (GIF), the stream's frame count from the container
    header, else a count of its packets (PyAV; demuxing only, no decoding), or the first axis (.npy).
    ConfigError naming the file when it is unreadable."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in VIDEO_EXTENSIONS:
        raise ConfigError(f"'{path}' is not a video file this reader knows ({list(VIDEO_EXTENSIONS)})")
    try:
        if suffix in NPY_EXTENSIONS:
            return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
        if suffix in GIF_EXTENSIONS:
            with Image.open(path) as gif:
                if gif.format != "GIF":
                    raise OSError(f"not a GIF file (PIL reads it as {gif.format})")
                return int(gif.n_frames)
        with _av().open(str(path)) as container:
            if not container.streams.video:
                raise OSError("no video stream")
            stream = container.streams.video[0]
            if stream.frames > 0:
                return int(stream.frames)
            return sum(1 for packet in container.demux(stream) if packet.size > 0)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"unreadable video '{path}' ({type(err).__name__}: {err})") from err


# -------------------------------------------------------------------------------------------- strip


def save_strip(path: str | os.PathLike, videos, gap: int = 2, gap_value: int = 255) -> None:
    """Save clips as one PNG grid: one row per clip, frames left to right, `gap` px of `gap_value`
    between frames and rows.

    Args:
        path: target PNG (written atomically).
        videos: uint8 [N, T, H, W, C] (C = 1 or 3), or one clip [T, H, W, C]; numpy or torch.
        gap: pixels between neighbouring frames and rows (0 for none).
        gap_value: grey level of the gaps.
    """
    if isinstance(videos, torch.Tensor):
        videos = videos.detach().cpu().numpy()
    videos = np.asarray(videos)
    if videos.ndim == 4:
        videos = videos[None]
    if videos.ndim != 5:
        raise ConfigError(f"save_strip takes uint8 [N, T, H, W, C] clips, got {tuple(videos.shape)}")
    clips = [as_uint8_video(v, "each clip") for v in videos]
    n, (t, h, w, c) = len(clips), clips[0].shape
    if gap < 0:
        raise ConfigError(f"gap={gap} must be >= 0")
    grid = np.full((n * h + (n - 1) * gap, t * w + (t - 1) * gap, c), gap_value, dtype=np.uint8)
    for i, clip in enumerate(clips):
        for j, frame in enumerate(clip):
            grid[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = frame
    image = Image.fromarray(grid[..., 0] if c == 1 else grid, "L" if c == 1 else "RGB")
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
