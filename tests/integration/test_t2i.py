"""Text-to-image end to end on the embedded shapes: a token cache with caption embeddings, a text-
conditional generator trained on it, its checkpoint (without the frozen encoder) and sampling."""

import pytest
import torch
from lightning.pytorch import Trainer

from mmar.data import ShapesDataset, TokenCacheDataModule
from mmar.errors import ConfigError
from mmar.lit import GeneratorModule
from mmar.lit.loading import load_generator
from mmar.sampling import Sampler

pytest.importorskip("transformers")
TEXT = {"class_path": "mmar.conditioning.TextCondition", "init_args": {"max_length": 16}}


@pytest.fixture(scope="module")
def caption_cache(debug_rgb_tokenizer, tmp_path_factory, load_script):
    out = tmp_path_factory.mktemp("t2i_cache")
    args = ["--tokenizer", debug_rgb_tokenizer, "--data", "shapes", "--num-items", "40", "--out", str(out)]
    load_script("cache_tokens").main([*args, "--text-encoder", "all-MiniLM-L6-v2", "--max-length", "16"])
    return str(out)


def trainer(root, **kwargs) -> Trainer:
    return Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, default_root_dir=root, **kwargs
    )


def test_cache_stores_each_caption_embedding_once(caption_cache, debug_rgb_tokenizer):
    data = TokenCacheDataModule(caption_cache, batch_size=40)
    assert data.meta["text_encoder"] == "all-MiniLM-L6-v2" and data.meta["max_length"] == 16
    data.setup()
    dataset = data.train_dataset
    captions = [ShapesDataset(40, compositions="seen")[i]["caption"] for i in range(40)]
    assert data.meta["num_captions"] == len(set(captions)) < 40  # repeated captions are stored once
    model = GeneratorModule(tokenizer=debug_rgb_tokenizer, condition=TEXT)
    hidden, valid = model.conditioning.encode_text(captions[:5])
    for i in range(5):
        item = dataset[i]
        assert item["caption_embedding"].dtype == torch.float16 and torch.equal(
            item["caption_valid"], valid[i]
        )
        torch.testing.assert_close(item["caption_embedding"].float(), hidden[i], atol=2e-3, rtol=2e-3)


def test_generator_trains_on_cached_captions_and_samples_from_prompts(
    caption_cache, debug_rgb_tokenizer, tmp_path
):
    torch.manual_seed(0)
    model = GeneratorModule(tokenizer=debug_rgb_tokenizer, condition=TEXT, warmup_steps=1)
    fit = trainer(tmp_path, max_steps=2, limit_val_batches=0)
    fit.fit(model, TokenCacheDataModule(caption_cache, batch_size=8))
    fit.save_checkpoint(tmp_path / "t2i.ckpt")
    saved = torch.load(tmp_path / "t2i.ckpt", weights_only=True)["state_dict"]
    conditioning = {key for key in saved if key.startswith("conditioning.")}
    assert conditioning == {
        "conditioning.null",
        *(f"conditioning.proj.{i}.{p}" for i in (0, 2) for p in ("weight", "bias")),
    }  # the frozen encoder reloads by name
    loaded = load_generator(tmp_path / "t2i.ckpt")
    prompts = ["a red circle on the left", "two blue squares in the middle"]
    sampler = Sampler(cfg_scale=2.0, seed=0)
    images = loaded.generate(prompts, sampler)
    assert images.shape == (2, 3, 32, 32) and images.isfinite().all()
    torch.testing.assert_close(images, model.eval().generate(prompts, sampler))


def test_cache_of_another_max_length_is_refused(caption_cache, debug_rgb_tokenizer, tmp_path):
    other = {**TEXT, "init_args": {"max_length": 12}}
    model = GeneratorModule(tokenizer=debug_rgb_tokenizer, condition=other)
    with pytest.raises(ConfigError, match="max_length 16"):
        trainer(tmp_path, max_steps=1).fit(model, TokenCacheDataModule(caption_cache, batch_size=8))


def test_class_data_for_a_text_generator_is_named(debug_rgb_tokenizer):
    model = GeneratorModule(tokenizer=debug_rgb_tokenizer, condition=TEXT)
    with pytest.raises(ConfigError, match=r"reads batch\['caption'\]"):
        model.step_losses({"image": torch.zeros(2, 3, 32, 32), "label": torch.zeros(2, dtype=torch.long)})
