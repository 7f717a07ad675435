"""What `mmar predict` writes: each modality's samples as files that read back to the same values."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from mmar.errors import ConfigError
from mmar.lit.prediction_writer import PredictionWriter, to_uint8, write_sample
from mmar.video_io import read_video


class FakeTrainer:
    """The two attributes the writer reads."""

    def __init__(self, root: Path):
        self.log_dir, self.default_root_dir, self.num_predict_batches = None, str(root), [1]


def test_images_clips_audio_and_text_read_back(tmp_path):
    torch.manual_seed(0)
    image = torch.rand(3, 8, 6) * 2 - 1  # (C, H, W)
    write_sample(tmp_path / "a.png", "image", image)
    assert np.array_equal(
        np.asarray(Image.open(tmp_path / "a.png")), to_uint8(image).permute(1, 2, 0).numpy()
    )

    grey = torch.rand(1, 8, 6) * 2 - 1
    write_sample(tmp_path / "g.png", "image", grey)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "g.png")), to_uint8(grey)[0].numpy())

    clip = torch.rand(1, 3, 8, 8).round() * 2 - 1  # (C, T, H, W), two grey levels: exact in a GIF
    write_sample(tmp_path / "c.gif", "video", clip)
    assert np.array_equal(read_video(tmp_path / "c.gif", channels=1)[..., 0], to_uint8(clip)[0].numpy())

    audio = torch.linspace(-0.5, 0.5, 800)[None]  # (C, samples)
    write_sample(tmp_path / "s.wav", "audio", audio, sample_rate=8000)
    data, rate = sf.read(tmp_path / "s.wav")
    assert rate == 8000 and np.allclose(data, audio[0].numpy(), atol=1e-4)

    write_sample(tmp_path / "t.txt", "text", "a red circle")
    assert (tmp_path / "t.txt").read_text() == "a red circle\n"


def test_files_are_named_by_sample_index_under_the_run_folder(tmp_path):
    writer = PredictionWriter()
    images = {"image": torch.zeros(2, 1, 4, 4)}
    writer.write_on_batch_end(FakeTrainer(tmp_path), None, images, [4, 5], None, 2, 0)
    writer.write_on_batch_end(FakeTrainer(tmp_path), None, None, None, None, 3, 0)  # all files unreadable
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == ["000004.png", "000005.png"]

    PredictionWriter(str(tmp_path / "out")).write_on_batch_end(
        FakeTrainer(tmp_path), None, {"text": ["x"]}, None, None, 1, 0
    )
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["000001.txt"]


def test_an_unknown_prediction_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="predict_step must return a dict"):
        PredictionWriter().write_on_batch_end(
            FakeTrainer(tmp_path), object(), torch.zeros(1), None, None, 0, 0
        )
