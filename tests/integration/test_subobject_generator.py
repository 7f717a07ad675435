"""A generator over subobject tokens: MaskedAR trains on the padded segment embeddings and generates the
embeddings of a given segmentation, which the tokenizer decodes back to pixels."""

import pytest
import torch
from lightning.pytorch import Trainer

from mmar.data import ShapesDataModule, ShapesDataset
from mmar.errors import ConfigError
from mmar.lit import GeneratorModule
from mmar.sampling import Sampler
from tokenizers_visual import SubobjectTokenizer

UNIT = {"steps": 3, "head_width": 32, "head_depth": 1, "head_steps": 3}


@pytest.fixture(scope="module")
def subobject_tokenizer(tmp_path_factory) -> str:
    torch.manual_seed(0)
    tokenizer = SubobjectTokenizer(
        in_channels=3, latent_dim=8, max_tokens=6, crop_size=8, ch=8, segmenter="slic"
    )
    images = torch.stack([ShapesDataset(16, seed=1)[i]["image"] for i in range(16)])
    tokenizer.fit_statistics([images])
    path = tmp_path_factory.mktemp("subobject") / "tokenizer"
    tokenizer.save_pretrained(path)
    return str(path)


def test_masked_ar_trains_on_padded_segments_and_fills_a_layout(subobject_tokenizer, tmp_path):
    model = GeneratorModule(
        tokenizer=subobject_tokenizer,
        unit="masked_ar",
        unit_kwargs=UNIT,
        image_size=32,
        num_classes=3,
        warmup_steps=1,
    )
    assert model.grid == (6,)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, ShapesDataModule(image_size=32, batch_size=8, num_train=16, num_val=8))
    model.eval()
    reference = torch.stack([ShapesDataset(4, seed=2, split="val")[i]["image"] for i in range(2)])
    layout = model.tokenizer.encode(reference)
    images = model.generate(torch.tensor([0, 2]), Sampler(cfg_scale=2.0, seed=0), layout=layout)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    with pytest.raises(ConfigError, match=r"pass layout=model\.tokenizer\.encode"):
        model.generate(torch.tensor([0]))


def test_units_without_padding_are_rejected(subobject_tokenizer):
    with pytest.raises(
        ConfigError, match=r"variable-length padded tokens, which the next_x unit cannot model"
    ):
        GeneratorModule(tokenizer=subobject_tokenizer, unit="next_x", image_size=32, num_classes=3)
