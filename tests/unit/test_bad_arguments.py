"""Impossible optimiser and trainer numbers are one-line ConfigErrors before anything is built or read."""

import pytest

from mmar.cli import main as mmar_main
from mmar.data import DigitsDataModule
from mmar.errors import ConfigError
from mmar.lit import GeneratorModule, StreamModule, TokenizerModule

BAD_OPTIMISER = [
    ({"lr": -1e-3}, r"lr=-0.001 must be a positive number"),
    ({"lr": 0.0}, r"lr=0.0 must be a positive number"),
    ({"lr": float("nan")}, r"lr=nan must be a positive number"),
    ({"betas": (0.9, 1.5)}, r"betas=\[0.9, 1.5\] must be two numbers in \[0, 1\)"),
    ({"weight_decay": -0.1}, r"weight_decay=-0.1 must be >= 0"),
    ({"warmup_steps": -1}, r"warmup_steps=-1 must be >= 0"),
    ({"lr_schedule": "linear"}, r"unknown lr_schedule 'linear'"),
    ({"min_lr_ratio": 2.0}, r"min_lr_ratio=2.0 must lie in \[0, 1\]"),
]
# the checks come first: a missing tokenizer folder shows they run before anything is loaded
MODULES = {
    "generator": lambda **kw: GeneratorModule(tokenizer="no/such/folder", **kw),
    "tokenizer": lambda **kw: TokenizerModule(tokenizer="no/such/folder", **kw),
    "stream": lambda **kw: StreamModule(text_tokenizer="no/such/folder", **kw),
}


@pytest.mark.parametrize("module", sorted(MODULES))
@pytest.mark.parametrize("kwargs, match", BAD_OPTIMISER, ids=lambda x: str(x)[:24])
def test_impossible_optimiser_settings_fail_at_construction(module, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MODULES[module](**kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"image_size": 0}, r"model.image_size=0"), ({"num_classes": 0}, r"model.num_classes=0 must be >= 1")],
)
def test_impossible_generator_sizes_fail_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        GeneratorModule(tokenizer="no/such/folder", **kwargs)


def test_tokenizer_module_numbers():
    with pytest.raises(ConfigError, match=r"grad_clip=-1.0 and gan_start_step=0 must be >= 0"):
        TokenizerModule(grad_clip=-1.0)


def test_negative_num_workers_is_refused():
    with pytest.raises(ConfigError, match=r"num_workers=-1 must be >= 0"):
        DigitsDataModule(num_workers=-1)


@pytest.mark.parametrize(
    "arg, match",
    [
        ("--trainer.max_steps=-5", "trainer.max_steps=-5 must be >= -1"),
        ("--trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1 must be >= 0"),  # flips gradients
        ("--trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0 must be >= 1"),
        ("--trainer.val_check_interval=0", "trainer.val_check_interval=0 must be > 0"),
        ("--trainer.check_val_every_n_epoch=0", "trainer.check_val_every_n_epoch=0 must be >= 1"),
        ("--trainer.limit_train_batches=-1", "invalid value -1 for limit_train_batches"),  # Lightning's own
    ],
)
def test_impossible_trainer_numbers_are_one_line_errors(arg, match, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        mmar_main(["fit", "--config", "configs/debug/vq.yaml", f"--trainer.default_root_dir={tmp_path}", arg])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and match in last and "Traceback" not in err


@pytest.mark.parametrize(
    "arg, match",
    [
        ("--model.init_args.lr=null", "model.init_args.lr=null is not allowed (it takes a float); drop it"),
        ("--data.init_args.batch_size=null", "batch_size=null is not allowed (it takes a int)"),
    ],
)
def test_null_for_a_value_that_cannot_be_none_is_one_line_error(arg, match, capsys):
    with pytest.raises(SystemExit) as exit_info:
        mmar_main(["--config", "configs/debug/vq.yaml", arg], run=False)
    assert exit_info.value.code == 2 and match in capsys.readouterr().err


def test_unknown_unit_kwargs_are_named():
    from mmar.units import build_unit

    with pytest.raises(ConfigError, match=r"unknown argument\(s\) \['bogus'\] of the next_token unit"):
        build_unit("next_token", d_model=8, grid=(2, 2), vocab_size=4, bogus=1)
