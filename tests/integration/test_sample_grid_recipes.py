"""SampleGrid on the debug recipes of each model kind and modality: generators of images (class and text
conditions), videos and audio, tokenizers of each, text and unified stream models."""

from pathlib import Path

import pytest
import torch
from test_cli import CPU, QUIET, fixture_overrides, offline_overrides

from mmar.cli import MMARCLI
from mmar.data import ShapesDataset
from mmar.lit import GeneratorModule
from mmar.lit.callbacks import SampleGrid
from tokenizers_visual import SubobjectTokenizer

KINDS = [
    "ar",
    "t2i",
    "video_generator",
    "audio_generator",
    "vq",
    "video",
    "audio_codec",
    "text_lm",
    "unified",
]
DEBUG = [Path(f"configs/debug/{kind}.yaml") for kind in KINDS]


@pytest.mark.parametrize("config", DEBUG, ids=str)
def test_every_debug_recipe_has_something_to_show(config, request, tmp_path):
    args = ["--config", str(config), f"--trainer.default_root_dir={tmp_path}", *QUIET, *CPU]
    cli = MMARCLI(args=args + offline_overrides(config) + fixture_overrides(config, request), run=False)
    cli.datamodule.setup("fit")
    batch = next(iter(cli.datamodule.val_dataloader()))
    torch.manual_seed(0)
    pictures, texts = SampleGrid(per_class=1, max_classes=2, num_prompts=2).samples(cli.model.eval(), batch)
    assert pictures or texts
    for image in pictures.values():
        assert image.dtype == torch.uint8 and image.shape[0] == 3 and image.float().std() > 0


def test_segment_generator_draws_on_the_validation_layouts(tmp_path):
    torch.manual_seed(0)
    tokenizer = SubobjectTokenizer(
        in_channels=3, latent_dim=8, max_tokens=6, crop_size=8, ch=8, segmenter="slic"
    )
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    unit = {"steps": 2, "head_width": 16, "head_depth": 1, "head_steps": 2}
    module = GeneratorModule(str(tmp_path / "tokenizer"), unit="masked_ar", unit_kwargs=unit, num_classes=3)
    items = [ShapesDataset(4, seed=2, split="val")[i] for i in range(3)]
    batch = {"image": torch.stack([it["image"] for it in items]), "label": torch.tensor([0, 1, 2])}
    pictures, _ = SampleGrid(num_prompts=2).samples(module.eval(), batch)
    assert pictures["generated"].shape == (3, 2 + 34, 2 + 2 * 34)  # one per layout, side by side
