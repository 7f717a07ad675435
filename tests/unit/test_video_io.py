"""mmar.video_io: exact GIF round trips, close MP4 round trips (libx264 and mpeg4, tiny and odd sizes),
frame slicing, frame counts, PNG strips, atomic writes, and ConfigErrors naming bad files."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from mmar.errors import ConfigError
from mmar.video_io import num_frames, read_video, save_strip, write_gif, write_mp4

av = pytest.importorskip("av")


def moving_square(t: int = 10, h: int = 16, w: int = 16, c: int = 1, size: int = 4) -> np.ndarray:
    """uint8 [T, H, W, C]: a bright square moving one pixel right and down per frame on a dark canvas."""
    video = np.full((t, h, w, c), 30, dtype=np.uint8)
    colour = [200] if c == 1 else [220, 60, 140]
    for i in range(t):
        y, x = i % (h - size), (2 * i) % (w - size)
        video[i, y : y + size, x : x + size] = colour
    return video


@pytest.mark.parametrize("channels", [1, 3])
def test_gif_round_trip_is_exact(tmp_path, channels):
    video = moving_square(t=11, h=16, w=24, c=channels)
    path = tmp_path / "clip.gif"
    write_gif(path, video, fps=8)
    back = read_video(path, channels=channels)
    assert back.shape == video.shape and back.dtype == np.uint8
    np.testing.assert_array_equal(back, video)
    assert num_frames(path) == 11
    with Image.open(path) as gif:
        assert gif.info["loop"] == 0 and gif.info["duration"] == 120  # loops forever; 1/8 s in 1/100 s
    if channels == 1:  # read as RGB by default: grey repeated
        np.testing.assert_array_equal(read_video(path), np.repeat(video, 3, axis=-1))


def test_gif_keeps_identical_frames_and_takes_torch(tmp_path):
    video = torch.zeros(9, 8, 8, 3, dtype=torch.uint8)  # a still clip: PIL's save_all would merge frames
    video[4:, 2:4, 2:4] = 255
    write_gif(tmp_path / "still.gif", video)
    assert num_frames(tmp_path / "still.gif") == 9
    np.testing.assert_array_equal(read_video(tmp_path / "still.gif"), video.numpy())


def test_gif_with_many_colours_is_quantised_without_error(tmp_path):
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 32 * 32 * 3).reshape(1, 32, 32, 3).repeat(3, 0)
    video = np.clip(smooth + rng.normal(0, 2, smooth.shape), 0, 255).astype(np.uint8)  # > 256 colours
    write_gif(tmp_path / "many.gif", video)
    back = read_video(tmp_path / "many.gif")
    assert back.shape == video.shape
    assert np.abs(back.astype(int) - video).mean() < 8


@pytest.mark.parametrize(
    ("size", "channels", "codec"),
    [((16, 16), 1, None), ((17, 13), 3, None), ((32, 32), 3, None), ((16, 16), 3, "mpeg4")],
)
def test_mp4_round_trip_is_close(tmp_path, size, channels, codec):
    video = moving_square(t=12, h=size[0], w=size[1], c=channels)
    path = tmp_path / "clip.mp4"
    write_mp4(path, video, fps=8, codec=codec)
    back = read_video(path, channels=channels)
    assert back.shape == video.shape and back.dtype == np.uint8
    assert np.abs(back.astype(np.float32) - video).mean() < 3
    assert num_frames(path) == 12


def test_mp4_upscales_tiny_and_pads_odd_frames(tmp_path):
    write_mp4(tmp_path / "tiny.mp4", moving_square(t=9, h=17, w=13, c=3))
    with av.open(str(tmp_path / "tiny.mp4")) as container:
        stream = container.streams.video[0]
        # k = ceil(64 / 13) = 5: 85 x 65 -> padded to even 86 x 66
        assert (stream.height, stream.width) == (86, 66)
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.codec_context.name == "h264"
        assert container.metadata["comment"] == "mmar_video_io size=17x13 scale=5"


def test_mp4_falls_back_to_mpeg4_without_libx264(tmp_path, monkeypatch):
    monkeypatch.setattr(av, "codecs_available", av.codecs_available - {"libx264"})
    write_mp4(tmp_path / "clip.mp4", moving_square(t=9, h=32, w=32, c=3))
    with av.open(str(tmp_path / "clip.mp4")) as container:
        assert container.streams.video[0].codec_context.name == "mpeg4"
    assert read_video(tmp_path / "clip.mp4").shape == (9, 32, 32, 3)


def test_read_video_slices_frames(tmp_path):
    video = moving_square(t=12, h=16, w=16, c=3)
    write_gif(tmp_path / "clip.gif", video)
    np.save(tmp_path / "clip.npy", video)
    write_mp4(tmp_path / "clip.mp4", video)
    for name in ("clip.gif", "clip.npy"):
        got = read_video(tmp_path / name, num_frames=4, stride=3, start=1)
        np.testing.assert_array_equal(got, video[1:11:3])
        np.testing.assert_array_equal(read_video(tmp_path / name, stride=5), video[::5])
    got = read_video(tmp_path / "clip.mp4", num_frames=4, stride=3, start=1)
    assert got.shape == (4, 16, 16, 3)
    assert np.abs(got.astype(np.float32) - video[1:11:3]).mean() < 3
    assert num_frames(tmp_path / "clip.npy") == 12


def test_webm_frames_are_counted_without_a_header_count(tmp_path):
    path = tmp_path / "clip.webm"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libvpx", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i, frame in enumerate(moving_square(t=10, h=32, w=32, c=3)):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            container.mux(stream.encode(vf))
        container.mux(stream.encode())
    assert num_frames(path) == 10
    assert read_video(path, num_frames=5, stride=2).shape == (5, 32, 32, 3)


def test_unreadable_files_and_too_few_frames_raise_config_errors_naming_the_file(tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(2000))
    truncated = tmp_path / "truncated.gif"
    write_gif(truncated, moving_square(t=10, h=32, w=32))
    truncated.write_bytes(truncated.read_bytes()[:300])
    for path in (corrupt, tmp_path / "missing.gif", tmp_path / "clip.txt"):
        for call in (num_frames, read_video):
            with pytest.raises(ConfigError, match=re.escape(path.name)):
                call(path)
    with pytest.raises(ConfigError, match=r"truncated\.gif"):
        read_video(truncated)
    write_gif(tmp_path / "short.gif", moving_square(t=5))
    with pytest.raises(ConfigError, match=r"short.gif' has 5 frames.*needs 9"):
        read_video(tmp_path / "short.gif", num_frames=5, stride=2)
    np.save(tmp_path / "float.npy", np.zeros((3, 4, 4), np.float32))
    with pytest.raises(ConfigError, match="uint8"):
        read_video(tmp_path / "float.npy")


def test_writers_reject_bad_videos(tmp_path):
    for bad in (
        np.zeros((4, 8, 8, 3), np.float32),
        np.zeros((4, 8, 8, 2), np.uint8),
        np.zeros((8, 8), np.uint8),
    ):
        for write in (write_gif, write_mp4):
            with pytest.raises(ConfigError, match=r"uint8 array \[T, H, W, C\]"):
                write(tmp_path / "bad", bad)
    with pytest.raises(ConfigError, match="fps"):
        write_gif(tmp_path / "bad.gif", moving_square(), fps=0)
    with pytest.raises(ConfigError, match="encoder"):
        write_mp4(tmp_path / "bad.mp4", moving_square(), codec="no_such_codec")
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary files left


def test_writes_are_atomic_and_replace(tmp_path):
    write_gif(tmp_path / "a.gif", moving_square(t=4))
    write_gif(tmp_path / "a.gif", moving_square(t=6))
    write_mp4(tmp_path / "sub" / "a.mp4", moving_square(t=4))
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.gif", "a.mp4", "sub"]
    assert num_frames(tmp_path / "a.gif") == 6


@pytest.mark.parametrize(("channels", "gap"), [(3, 2), (1, 0)])
def test_save_strip_lays_clips_out_as_rows(tmp_path, channels, gap):
    videos = np.stack(
        [moving_square(t=5, h=8, w=6, c=channels), 255 - moving_square(t=5, h=8, w=6, c=channels)]
    )
    save_strip(tmp_path / "strip.png", videos, gap=gap)
    with Image.open(tmp_path / "strip.png") as image:
        grid = np.asarray(image)
        assert image.mode == ("RGB" if channels == 3 else "L")
    if channels == 1:
        grid = grid[..., None]
    assert grid.shape == (2 * 8 + gap, 5 * 6 + 4 * gap, channels)
    for i in range(2):
        for j in range(5):
            top, left = i * (8 + gap), j * (6 + gap)
            np.testing.assert_array_equal(grid[top : top + 8, left : left + 6], videos[i, j])
    if gap:
        assert (grid[8 : 8 + gap] == 255).all()
