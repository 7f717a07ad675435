"""Every recipe in configs/ runs `mmar fit` (fast_dev_run), `validate`, `test` and `predict` at debug sizes,
and `predict` leaves files on disk.

Each recipe runs from its own YAML, with command-line overrides only for what cannot run here: trained
inputs under runs/ (tokenizers, token caches) point at the tiny ones of the session fixtures, external data
(ImageNet, captioned or video folders, token caches) becomes embedded data of the same modality, trunks
and tokenizers shrink to debug widths, GPU trainer settings become one CPU process in fp32, and hub text
encoders become the packaged MiniLM. The recipe's model, unit, data class (where embedded), callbacks and
everything else stay as written. Every generator samples with guidance and a seed, so `predict` runs the
CFG batch of every unit.
"""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from mmar.cli import main as mmar_main
from mmar.units import UNITS

CONFIGS = sorted(Path("configs").rglob("*.yaml"))
PARSE_ONLY: dict[str, str] = {}  # recipe -> why it cannot run offline on a CPU (none today)
RUN = [
    "--trainer.enable_progress_bar=false",
    "--trainer.logger=false",
    "--trainer.accelerator=cpu",
    "--trainer.devices=1",
    "--trainer.strategy=auto",
    "--trainer.precision=32-true",  # bf16-mixed GPU recipes: fp32 on the CPU
]
STAGES = {
    "fit": ["--trainer.fast_dev_run=true"],
    "validate": ["--trainer.limit_val_batches=1"],
    "test": ["--trainer.limit_test_batches=1"],
    "predict": ["--trainer.limit_predict_batches=1"],
}
BATCH = 2
GUIDED = {"cfg_scale": 2.0, "seed": 0}
# debug sizes of the embedded data (the recipe's data class where it is embedded, else the modality's)
# (a digits train split of 179 images: a tokenizer's export fits its statistics on the whole train split)
DIGITS = {"class_path": "mmar.data.DigitsDataModule", "init_args": {"image_size": 32, "val_fraction": 0.9}}
SHAPES = {
    "class_path": "mmar.data.ShapesDataModule",
    "init_args": {"image_size": 32, "num_train": 8, "num_val": 2},
}
MOVING = {
    "class_path": "mmar.data.MovingDigitsDataModule",
    "init_args": {
        "image_size": 16,
        "digit_size": 8,
        "num_frames": 9,
        "num_clips_train": 8,
        "num_clips_val": 2,
    },
}
NOTES = {
    "class_path": "mmar.data.EmbeddedNotesDataModule",
    "init_args": {"duration": 0.25, "num_clips_train": 8, "num_clips_val": 2},
}
TEXT = {"class_path": "mmar.data.TextDataModule", "init_args": {"num_captions": 50, "val_fraction": 0.2}}


def recipe_of(config: Path) -> dict:
    return yaml.safe_load(config.read_text())


def generator_tokenizer(init_args: dict) -> str:
    """The fixture of a tiny tokenizer of the kind the generator recipe needs."""
    head = (init_args.get("unit_kwargs") or {}).get("head")
    continuous = head == "flow" or UNITS[init_args.get("unit", "next_token")].token_kinds[0] == "continuous"
    if init_args.get("num_frames"):
        return "debug_video_tokenizer"
    if init_args.get("duration"):
        return "debug_audio_kl" if continuous else "debug_audio_codec"
    if "subobject" in init_args["tokenizer"]:
        return "recipe_subobject_tokenizer"
    if head == "channel_ar":
        return "debug_tokenbridge_tokenizer"
    if "condition" in init_args:  # text-to-image: RGB captioned images
        return "debug_rgb_tokenizer"
    return "debug_kl_tokenizer" if continuous else "debug_tokenizer"


def debug_tokenizer_spec(spec: dict) -> dict:
    """A tokenizer recipe's constructor kwargs at debug widths (the architecture's depth and kind kept)."""
    spec = dict(spec)
    for key, debug in (
        ("ch", 8),
        ("channels", 4),
        ("z_channels", 8),
        ("num_res_blocks", 1),
        ("codebook_size", 64),
    ):
        if key in spec:
            spec[key] = min(spec[key], debug)
    if spec.get("boundary_path"):  # a boundary predictor trained under runs/: an untrained one here
        spec["boundary_path"] = None
    return spec


def model_overrides(recipe: dict, request) -> tuple[list[str], dict | None]:
    """(model arguments, the data the model needs instead of the recipe's, or None to keep it)."""
    model, init_args = recipe["model"]["class_path"], recipe["model"]["init_args"]
    if model.endswith("GeneratorModule"):
        fixture = generator_tokenizer(init_args)
        args = [
            f"--model.init_args.tokenizer={request.getfixturevalue(fixture)}",
            "--model.init_args.trunk=debug",
            f"--model.init_args.sampler={json.dumps(GUIDED)}",
            "--model.init_args.test_samples_per_class=0",  # metrics: test_embedded_test_metrics.py
        ]
        condition = init_args.get("condition")
        if condition and "encoder" in condition.get("init_args", {}):  # a hub encoder: the packaged one
            offline = {**condition, "init_args": {**condition["init_args"], "encoder": "all-MiniLM-L6-v2"}}
            args.append(f"--model.init_args.condition={json.dumps(offline)}")
        if fixture == "debug_video_tokenizer":
            return [*args, "--model.init_args.image_size=16", "--model.init_args.num_frames=9"], MOVING
        if init_args.get("duration"):
            return [*args, "--model.init_args.duration=0.25"], NOTES
        args.append("--model.init_args.image_size=32")
        rgb = fixture in ("debug_rgb_tokenizer", "recipe_subobject_tokenizer")
        return args, SHAPES if rgb else DIGITS
    if model.endswith("StreamModule"):
        text = request.getfixturevalue("debug_text_tokenizer")
        args = [f"--model.init_args.text_tokenizer={text}", "--model.init_args.trunk=debug"]
        if not init_args.get("image_tokenizer"):
            return args, {**TEXT, "init_args": {**TEXT["init_args"], "tokenizer": text}}
        image = request.getfixturevalue("debug_rgb_tokenizer")
        args += [f"--model.init_args.image_tokenizer={image}", "--model.init_args.image_size=32"]
        return [*args, f"--model.init_args.sampler={json.dumps(GUIDED)}"], SHAPES
    tokenizer = init_args.get("tokenizer")  # a TokenizerModule
    args = ["--model.init_args.perceptual_pretrained=false"] if init_args.get("perceptual_weight") else []
    if isinstance(tokenizer, str):  # post-training an exported tokenizer on (tokens, image) pairs
        pairs = request.getfixturevalue("debug_pairs_cache")
        # 4 pairs per class: a recipe's val_fraction of 0.1 holds none of them out
        data = {"class_path": recipe["data"]["class_path"], "init_args": {"path": pairs, "val_fraction": 0.5}}
        return [*args, f"--model.init_args.tokenizer={request.getfixturevalue('debug_tokenizer')}"], data
    spec = debug_tokenizer_spec(tokenizer)
    args.append(f"--model.init_args.tokenizer={json.dumps(spec)}")
    return args, None


def data_overrides(recipe: dict, needed: dict | None, request) -> list[str]:
    """The recipe's data at debug sizes: embedded data modules keep their class and settings (only the
    sizes shrink); folders and token caches become the embedded data of their modality."""
    data = recipe["data"]
    embedded = {spec["class_path"]: spec for spec in (DIGITS, SHAPES, MOVING, NOTES, TEXT)}
    if needed is None:  # a tokenizer recipe: the embedded data of its modality
        needed = embedded.get(data["class_path"]) or folder_stand_in(recipe, request)
    init_args = {**needed["init_args"], "batch_size": BATCH, "num_workers": 0}
    if needed["class_path"] != data["class_path"]:  # init_args the new class shares are kept: all set here
        return [f"--data={json.dumps({'class_path': needed['class_path'], 'init_args': init_args})}"]
    return [
        f"--data.init_args.{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in init_args.items()
    ]


def folder_stand_in(recipe: dict, request) -> dict:
    """Real-data tokenizer recipes: a tiny video folder for video folders, the shapes for RGB images."""
    if recipe["data"]["class_path"].endswith("VideoFolderDataModule"):
        root = request.getfixturevalue("recipe_video_folder")
        return {
            "class_path": recipe["data"]["class_path"],
            "init_args": {"root": root, "num_frames": 9, "image_size": 16, "val_fraction": 0.5},
        }
    return SHAPES


@pytest.fixture(scope="session")
def recipe_subobject_tokenizer(tmp_path_factory) -> str:
    """Folder of a tiny untrained subobject tokenizer (SLIC segments, statistics fitted on 8 scenes)."""
    from mmar.data import ShapesDataset
    from tokenizers_visual import SubobjectTokenizer

    torch.manual_seed(0)
    tokenizer = SubobjectTokenizer(
        in_channels=3, latent_dim=8, max_tokens=4, crop_size=8, ch=8, segmenter="slic"
    )
    tokenizer.fit_statistics([torch.stack([ShapesDataset(8, seed=1)[i]["image"] for i in range(8)])])
    path = tmp_path_factory.mktemp("recipe_subobject") / "tokenizer"
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def recipe_video_folder(tmp_path_factory) -> str:
    """8 GIF clips (17 frames) of moving digits in two class folders, what `VideoFolderDataModule` reads."""
    from mmar.data import MovingDigitsDataset
    from mmar.data.digits import load_digits_images
    from mmar.video_io import write_gif

    images, labels = load_digits_images(8)
    clips = MovingDigitsDataset(images[:8], labels[:8], 8, image_size=16, num_frames=17)  # stride 2 reads 9
    root = tmp_path_factory.mktemp("recipe_videos")
    for i in range(len(clips)):
        video = ((clips[i]["video"][0] + 1) * 127.5).round().to(torch.uint8)  # (T, H, W)
        write_gif(root / f"class{i % 2}" / f"clip{i}.gif", video)
    return str(root)


def recipe_id(config: Path) -> str:
    return str(config.relative_to("configs"))


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")  # pytest's own argv
@pytest.mark.parametrize("config", CONFIGS, ids=recipe_id)
def test_recipe_fits_validates_tests_and_predicts(config, request, tmp_path, capsys):
    if recipe_id(config) in PARSE_ONLY:
        pytest.skip(PARSE_ONLY[recipe_id(config)])
    recipe = recipe_of(config)
    model_args, needed_data = model_overrides(recipe, request)
    args = [
        "--config",
        str(config),
        f"--trainer.default_root_dir={tmp_path}",
        *RUN,
        *model_args,
        *data_overrides(recipe, needed_data, request),
    ]
    if "export_dir" in recipe["model"]["init_args"]:
        args.append(f"--model.init_args.export_dir={tmp_path / 'export'}")
    for stage, stage_args in STAGES.items():
        mmar_main([stage, *args, *stage_args])
    out = capsys.readouterr().out
    for stage, split in (("validate", "val"), ("test", "test")):  # the results tables Lightning prints
        assert re.search(rf"│\s+{split}/\w+", out), f"{config}: `mmar {stage}` printed no {split}/ metric"
    written = sorted(p.name for p in (tmp_path / "predictions").iterdir())
    assert len(written) == BATCH, f"{config}: predict wrote {written}"
