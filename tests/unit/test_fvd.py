"""FVD plumbing: a randomly initialised TorchScript detector with StyleGAN-V's I3D call convention
(conftest's `RandomI3D`), saved and loaded through the local-path route; the clip length, input formats
and errors."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mmar.errors import ConfigError
from mmar.eval.frechet import feature_statistics, frechet_distance
from mmar.eval.fvd import I3DFeatures, fvd, i3d_features, video_batches


def videos(seed: int, n: int = 10, frames: int = 16, speed: float = 1.0) -> torch.Tensor:
    """uint8 [n, 3, T, 20, 20]: a bright square moving right at `speed` pixels per frame."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, 3, frames, 20, 20, dtype=torch.uint8)
    for i in range(n):
        y, x0 = torch.randint(0, 14, (2,), generator=g).tolist()
        for t in range(frames):
            x = int(x0 + speed * t) % 14
            out[i, :, t, y : y + 6, x : x + 6] = 255
    return out


def test_fvd_is_the_frechet_distance_of_the_detector_features(detector_path):
    detector = I3DFeatures(detector_path)
    real, fake = videos(0), videos(1, speed=2.5)
    features = {
        name: i3d_features(detector, [v[:6], v[6:]], len(v)) for name, v in [("r", real), ("f", fake)]
    }
    assert features["r"].shape == (10, 400)
    direct = torch.jit.load(detector_path)  # the network itself, called without I3DFeatures
    with torch.no_grad():
        expected = direct(real.float(), rescale=True, resize=True, return_features=True).double().numpy()
    np.testing.assert_allclose(features["r"], expected, rtol=1e-5, atol=1e-5)
    distance = fvd(features["f"], features["r"])
    assert distance == pytest.approx(
        frechet_distance(*feature_statistics(expected), *feature_statistics(features["f"])), rel=1e-6
    )
    assert distance > 0 and fvd(features["r"], features["r"]) == pytest.approx(0.0, abs=1e-6)


def test_clip_is_the_first_frames_and_grey_is_repeated(detector_path):
    detector = I3DFeatures(detector_path, frames=16)
    long = videos(0, n=3, frames=20)
    torch.testing.assert_close(detector(long), detector(long[:, :, :16].contiguous()))
    grey = long[:, :1]
    torch.testing.assert_close(detector(grey), detector(grey.expand(-1, 3, -1, -1, -1)))
    with pytest.raises(ConfigError, match="clips of 16 frames but the videos have 9"):
        detector(videos(0, n=2, frames=9))
    with pytest.raises(ConfigError, match="uint8 videos"):
        detector(long.float())


def test_npz_and_gif_inputs(tmp_path):
    clips = videos(0, n=3, frames=5)
    np.savez(tmp_path / "v.npz", videos=clips.permute(0, 2, 3, 4, 1).numpy())  # [N, T, H, W, C]
    total, batches = video_batches(tmp_path / "v.npz", batch_size=2)
    assert total == 3 and torch.equal(torch.cat(list(batches)), clips)
    (tmp_path / "gifs").mkdir()
    for i, clip in enumerate(clips):
        frames = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in clip.transpose(0, 1)]
        frames[0].save(tmp_path / "gifs" / f"{i}.gif", save_all=True, append_images=frames[1:], duration=100)
    total, batches = video_batches(tmp_path / "gifs")
    assert total == 3 and torch.equal(next(batches), clips)  # black and white survive the GIF palette
    with pytest.raises(ConfigError, match=r"neither an \.npz of uint8 videos nor a folder of GIFs"):
        video_batches(tmp_path / "nothing")


def test_missing_detector_names_the_option(tmp_path):
    with pytest.raises(ConfigError, match="--i3d-weights"):
        I3DFeatures(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="not a TorchScript I3D detector"):
        I3DFeatures(tmp_path / "bad.pt")


def test_eval_fvd_script_writes_json(detector_path, tmp_path, load_script):
    script = load_script("eval_fvd")
    for name, clips in [("fake", videos(1, speed=2.5)), ("real", videos(0))]:
        np.savez(tmp_path / f"{name}.npz", videos=clips.permute(0, 2, 3, 4, 1).numpy())
    args = ["--samples", str(tmp_path / "fake.npz"), "--ref", str(tmp_path / "real.npz")]
    script.main([*args, "--i3d-weights", detector_path, "--out", str(tmp_path / "fvd.json")])
    metrics = json.loads((tmp_path / "fvd.json").read_text())
    assert metrics["fvd"] > 0 and metrics["frames"] == 16 and metrics["num_samples"] == 10
