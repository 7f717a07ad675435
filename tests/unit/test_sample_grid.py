"""SampleGrid's pictures and texts, and the CLI's default loggers and callbacks (`mmar.lit.watch`)."""

import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.logger import DummyLogger

from mmar.errors import ConfigError
from mmar.lit import GeneratorModule, StreamModule
from mmar.lit.callbacks import SampleGrid
from mmar.lit.media import picture, picture_loggers
from mmar.lit.watch import RunProgressBar, watch_defaults


def test_pictures_of_images_videos_and_audio():
    images = picture(torch.rand(6, 1, 8, 8) * 2 - 1, "image", row=3)  # 2 rows of 3, 2-pixel padding
    assert images.dtype == torch.uint8 and images.shape == (3, 2 + 2 * 10, 2 + 3 * 10)
    strip = picture(torch.zeros(2, 3, 12, 8, 8), "video", row=5)  # a row per clip, 8 of its 12 frames
    assert strip.shape == (3, 2 + 2 * 10, 2 + 8 * 10)
    spectrograms = picture(torch.rand(4, 1, 4000) * 2 - 1, "audio", row=2, sample_rate=8000)
    assert spectrograms.shape[0] == 3 and spectrograms.shape[2] > spectrograms.shape[1] / 2


def test_generator_grid_is_the_same_draw_every_time(debug_tokenizer):
    torch.manual_seed(0)
    module = GeneratorModule(debug_tokenizer, num_classes=3).eval()
    grid = SampleGrid(per_class=2)
    first, texts = grid.samples(module, {"label": torch.tensor([0])})
    torch.manual_seed(1)  # the global RNG does not matter, the grid's seed does
    again, _ = grid.samples(module, {"label": torch.tensor([0])})
    assert texts == {} and torch.equal(first["generated"], again["generated"])
    assert first["generated"].shape == (3, 2 + 2 * 34, 2 + 3 * 34)  # 3 classes side by side, 2 rows


def test_text_model_logs_continuations(debug_text_tokenizer):
    module = StreamModule(debug_text_tokenizer, context_length=32).eval()
    tokens = torch.randint(0, 300, (5, 20))
    pictures, texts = SampleGrid(num_prompts=3, prompt_tokens=4, max_tokens=5).samples(
        module, {"tokens": tokens}
    )
    assert pictures == {} and len(texts["text"]) == 3
    assert texts["text"][0].startswith(module.text_tokenizer.decode(tokens[0, :4].tolist()) + " >>> ")


def test_bad_settings_are_one_line_errors():
    with pytest.raises(ConfigError, match="every_n_val_epochs must be >= 0"):
        SampleGrid(every_n_val_epochs=-1)
    with pytest.raises(ConfigError, match="the others >= 1"):
        SampleGrid(per_class=0)


def test_only_loggers_that_show_pictures_get_them(tmp_path):
    tensorboard, table = TensorBoardLogger(tmp_path), CSVLogger(tmp_path)
    assert picture_loggers([table, DummyLogger(), tensorboard]) == [tensorboard]


def test_default_loggers_and_callbacks(tmp_path):
    chosen = watch_defaults({"default_root_dir": str(tmp_path)})
    tensorboard, table = chosen["logger"]
    assert isinstance(tensorboard, TensorBoardLogger) and isinstance(table, CSVLogger)
    assert tensorboard.log_dir == table.log_dir == str(tmp_path / "lightning_logs" / "version_0")
    kinds = [type(cb) for cb in chosen["callbacks"]]
    assert kinds == [LearningRateMonitor, SampleGrid, RunProgressBar]


def test_config_choices_replace_the_defaults():
    assert watch_defaults({"logger": False, "enable_progress_bar": False}) == {
        "logger": False,
        "callbacks": [],
    }
    bar = TQDMProgressBar()
    chosen = watch_defaults({"logger": False, "callbacks": [bar]})
    assert chosen["callbacks"] == [bar]  # no second progress bar, no LR monitor without a logger


def test_fast_dev_run_makes_no_log_folder(tmp_path):
    chosen = watch_defaults({"default_root_dir": str(tmp_path), "fast_dev_run": True})
    assert chosen["logger"] is None and [type(cb) for cb in chosen["callbacks"]] == [RunProgressBar]
    assert not list(tmp_path.iterdir())


def test_counted_validation_runs_survive_a_resume():
    grid, resumed = SampleGrid(every_n_val_epochs=3), SampleGrid(every_n_val_epochs=3)
    grid.val_runs = 7
    resumed.load_state_dict(grid.state_dict())
    assert resumed.val_runs == 7
