"""The Lightning CLI end to end: every YAML parses, bad input gets one line (every recipe running fit,
validate, test and predict: test_recipes.py)."""

import json
from pathlib import Path

import pytest
import yaml
from conftest import one_line_error

from mmar.cli import MMARCLI
from mmar.cli import main as mmar_main
from mmar.tokenizer import read_tokenizer_config
from mmar.units import UNITS

CONFIGS = sorted(Path("configs").rglob("*.yaml"))
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.logger=false"]
CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.strategy=auto"]  # GPU recipes too


def needs_tokenizer(config: Path) -> bool:
    return "GeneratorModule" in yaml.safe_load(config.read_text())["model"]["class_path"]


def is_stream(config: Path) -> bool:
    return yaml.safe_load(config.read_text())["model"]["class_path"].endswith("StreamModule")


def stream_overrides(config: Path, request) -> list[str]:
    """A StreamModule recipe's text (and image) tokenizer, and its text data's, at the fixtures' ones."""
    recipe = yaml.safe_load(config.read_text())
    text = request.getfixturevalue("debug_text_tokenizer")
    args = [f"--model.init_args.text_tokenizer={text}"]
    if recipe["model"]["init_args"].get("image_tokenizer"):
        args.append(f"--model.init_args.image_tokenizer={request.getfixturevalue('debug_rgb_tokenizer')}")
    if recipe["data"]["class_path"].endswith("TextDataModule"):
        args.append(f"--data.init_args.tokenizer={text}")
    return args


def fixture_overrides(config: Path, request) -> list[str]:
    """Point a recipe's trained inputs (tokenizer folder, token cache) at the tiny ones of the fixtures."""
    recipe = yaml.safe_load(config.read_text())
    init_args, args = recipe["model"]["init_args"], []
    if is_stream(config):
        args += stream_overrides(config, request)
    if needs_tokenizer(config) or isinstance(init_args.get("tokenizer"), str):  # a generator or post-training
        tokenizer = request.getfixturevalue(tokenizer_fixture(config))
        args.append(f"--model.init_args.tokenizer={tokenizer}")
        trained_size = read_tokenizer_config(tokenizer).get("trained_image_size")
        if trained_size and "image_size" in init_args:  # e.g. a 256px recipe over the 32px debug VQ
            args.append(f"--model.init_args.image_size={trained_size}")
    if recipe["data"]["class_path"].endswith("TokenCacheDataModule"):
        args.append(f"--data.init_args.path={request.getfixturevalue('debug_pairs_cache')}")
    return args


def tokenizer_fixture(config: Path) -> str:
    """The fixture whose tokenizer fits the recipe: a video tokenizer for video generators, a codec for audio
    generators, latents for
    continuous units, per-channel ids for the channel-AR head, the debug VQ otherwise."""
    init_args = yaml.safe_load(config.read_text())["model"]["init_args"]
    head = (init_args.get("unit_kwargs") or {}).get("head")
    if init_args.get("num_frames"):  # video generators
        return "debug_video_tokenizer"
    if init_args.get("duration"):  # audio generators: residual codes, or latents for continuous units
        kinds = UNITS[init_args.get("unit", "next_token")].token_kinds
        return "debug_audio_kl" if head == "flow" or kinds[0] == "continuous" else "debug_audio_codec"
    if head == "channel_ar":
        return "debug_tokenbridge_tokenizer"
    if "condition" in init_args:  # text-to-image recipes: RGB images
        return "debug_rgb_tokenizer"
    kinds = UNITS[init_args.get("unit", "next_token")].token_kinds
    return "debug_kl_tokenizer" if head == "flow" or kinds[0] == "continuous" else "debug_tokenizer"


def offline_overrides(config: Path) -> list[str]:
    """Keep recipes offline: a random VGG backbone for LPIPS has the same shapes, and text conditions get
    the packaged MiniLM encoder instead of a hub model (T5) that would download."""
    init_args = yaml.safe_load(config.read_text())["model"]["init_args"]
    args = ["--model.init_args.perceptual_pretrained=false"] if init_args.get("perceptual_weight") else []
    condition = init_args.get("condition")
    if condition and "encoder" in condition.get("init_args", {}):
        offline = {**condition, "init_args": {**condition["init_args"], "encoder": "all-MiniLM-L6-v2"}}
        args.append(f"--model.init_args.condition={json.dumps(offline)}")
    return args


@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_every_config_parses_and_instantiates(config, request, tmp_path):
    args = ["--config", str(config), f"--trainer.default_root_dir={tmp_path}", *QUIET, *CPU]
    args += offline_overrides(config) + fixture_overrides(config, request)
    cli = MMARCLI(args=args, run=False)
    assert cli.model is not None and cli.datamodule is not None


def test_unknown_config_key_is_named(tmp_path, capsys):
    config = yaml.safe_load(Path("configs/debug/vq.yaml").read_text())
    config["model"]["init_args"]["learning_rate"] = 0.1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as exit_info:
        mmar_main(["fit", "--config", str(bad)])
    assert exit_info.value.code != 0
    assert "learning_rate" in capsys.readouterr().err


def test_vocabulary_mismatch_is_one_line_error(debug_tokenizer, capsys):
    args = ["fit", "--config", "configs/debug/ar.yaml", f"--model.init_args.tokenizer={debug_tokenizer}"]
    err = one_line_error(capsys, *args, "--model.init_args.vocab_size=999", *QUIET)
    assert err.startswith("error: model.vocab_size=999 does not match")


def test_missing_tokenizer_path_is_one_line_error(capsys, tmp_path):
    args = ["fit", "--config", "configs/debug/ar.yaml", f"--model.init_args.tokenizer={tmp_path / 'nope'}"]
    with pytest.raises(SystemExit) as exit_info:
        mmar_main([*args, *QUIET])
    assert exit_info.value.code == 2
    assert "no tokenizer at" in capsys.readouterr().err


def test_predict_generates_for_class_labels(debug_tokenizer, tmp_path):
    common = ["--config", "configs/debug/ar.yaml", f"--model.init_args.tokenizer={debug_tokenizer}"]
    root = f"--trainer.default_root_dir={tmp_path}"
    mmar_main(["fit", *common, root, *QUIET])
    ckpt = next(tmp_path.rglob("*.ckpt"))
    predict = ["predict", *common]
    data = ["--data=mmar.data.ClassLabelsDataModule", "--data.per_class=2", "--data.batch_size=8"]
    cli = MMARCLI(args=[*predict, *data, f"--ckpt_path={ckpt}", root, *QUIET], save_config_callback=None)
    images = [batch["image"] for batch in cli.trainer.predict_loop.predictions]
    assert sum(len(batch) for batch in images) == 20
    assert images[0].shape[1:] == (1, 32, 32)
    assert len(list((tmp_path / "predictions").glob("*.png"))) == 20  # the writer is on by default
