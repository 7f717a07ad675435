"""DataModules: embedded digits, image folders with corrupt files, and the token cache round trip."""

import io
import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader

from mmar.data import (
    DigitsDataModule,
    ImageFolderDataModule,
    ImageFolderDataset,
    TokenCacheDataModule,
    cache_tokens,
    collate_skip_none,
    digits_split,
    load_digits_images,
)
from mmar.errors import ConfigError
from tokenizers_visual.base import Tokenizer, register_tokenizer

# ---------------------------------------------------------------- digits


def test_digits_shapes_range_labels():
    images, labels = load_digits_images(32)
    assert images.shape == (1797, 1, 32, 32) and images.dtype == torch.float32
    assert labels.dtype == torch.long and set(labels.tolist()) == set(range(10))
    assert images.min() >= -1 and images.max() <= 1
    assert images.min() == -1 and images.max() > 0.9  # background and full ink both present
    native, _ = load_digits_images(8)
    # upsampling keeps each digit: pooled back to 8x8 it is far closer to its own source than to another
    assert (F.avg_pool2d(images, 4) - native).abs().mean() < 0.2
    assert (F.avg_pool2d(images, 4) - native.roll(1, 0)).abs().mean() > 0.4


def test_digits_split_deterministic_disjoint_stratified():
    train_x, train_y, val_x, val_y = digits_split(16, 0.1, seed=0)
    again = digits_split(16, 0.1, seed=0)
    assert torch.equal(val_x, again[2]) and torch.equal(train_y, again[1])
    assert len(train_y) + len(val_y) == 1797
    flat_train = {tuple(x.flatten().tolist()) for x in train_x}
    assert not any(tuple(x.flatten().tolist()) in flat_train for x in val_x)  # digits has no duplicates
    all_counts = torch.bincount(torch.cat([train_y, val_y]), minlength=10)
    val_counts = torch.bincount(val_y, minlength=10)
    assert torch.equal(val_counts, torch.round(all_counts * 0.1).long())
    other = digits_split(16, 0.1, seed=1)
    assert not torch.equal(val_x, other[2])


def test_digits_datamodule_batches():
    dm = DigitsDataModule(image_size=16, batch_size=32, augment=True)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (32, 1, 16, 16) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (32,) and batch["label"].dtype == torch.long
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert dm.train_dataloader().drop_last and not dm.val_dataloader().drop_last
    assert sum(len(b["label"]) for b in dm.val_dataloader()) == len(dm.val_dataset)
    assert dm.image_shape == (1, 16, 16)
    with pytest.raises(ConfigError, match="val_fraction"):
        DigitsDataModule(val_fraction=1.5).setup()


# ---------------------------------------------------------------- image folder


def write_png(path, size=(40, 30), color=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "train"
    for i in range(3):
        write_png(root / "cat" / f"{i}.png", color=(250, 0, 0))
        write_png(root / "dog" / f"{i}.PNG", size=(20, 50), color=(0, 0, 250))
    (root / "dog" / "notes.txt").write_text("not an image")  # ignored by extension
    (root / "cat" / "corrupt.png").write_bytes(np.random.default_rng(0).bytes(200))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (root / "dog" / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return root


def test_image_folder_skips_and_counts_corrupt_files(image_root, caplog):
    dataset = ImageFolderDataset(image_root, image_size=16)
    assert dataset.classes == ["cat", "dog"] and len(dataset) == 8
    with caplog.at_level(logging.WARNING, logger="mmar.data.image_folder"):
        items = [dataset[i] for i in range(len(dataset))]
        _ = [dataset[i] for i in range(len(dataset))]  # second pass: no new warnings
    good = [item for item in items if item is not None]
    assert len(good) == 6 and dataset.num_skipped == 2
    assert {p.rsplit("/", 1)[-1] for p in dataset.skipped_paths} == {"corrupt.png", "truncated.jpg"}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and any("truncated.jpg" in w for w in warnings)
    for item in good:
        assert item["image"].shape == (3, 16, 16) and -1 <= item["image"].min() <= item["image"].max() <= 1
    red = [item for item in good if item["label"] == 0]
    assert len(red) == 3 and red[0]["image"][0].mean() > 0.9 and red[0]["image"][2].mean() < -0.9


def test_image_folder_collate_drops_skipped(image_root):
    dataset = ImageFolderDataset(image_root, image_size=8, channels=1)
    batches = list(DataLoader(dataset, batch_size=4, collate_fn=collate_skip_none))
    assert sum(len(b["label"]) for b in batches) == 6
    assert batches[0]["image"].shape[1:] == (1, 8, 8)
    assert collate_skip_none([None, None]) is None


def test_image_folder_strict_raises(image_root):
    dataset = ImageFolderDataset(image_root, image_size=16, strict=True)
    with pytest.raises(ConfigError, match=r"corrupt\.png"):
        [dataset[i] for i in range(len(dataset))]


def test_image_folder_bad_roots(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist.*root/<class_name>"):
        ImageFolderDataset(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    write_png(tmp_path / "flat" / "a.png")
    with pytest.raises(ConfigError, match="no class folders"):
        ImageFolderDataset(tmp_path / "flat")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "readme.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"without images.*\['cat'\]"):
        ImageFolderDataset(tmp_path / "empty")


def test_image_folder_datamodule_val_uses_train_classes(image_root, tmp_path):
    write_png(tmp_path / "val" / "dog" / "0.png")
    dm = ImageFolderDataModule(str(image_root), str(tmp_path / "val"), image_size=16, batch_size=4)
    assert dm.num_classes == 2 and dm.image_shape == (3, 16, 16)
    val = next(iter(dm.val_dataloader()))
    assert val["label"].tolist() == [1]  # "dog" keeps its train id although val has one class
    train_labels = torch.cat([b["label"] for b in dm.train_dataloader()])
    assert len(train_labels) <= 6
    assert ImageFolderDataModule(str(image_root)).val_dataloader() == []
    write_png(tmp_path / "val" / "bird" / "0.png")
    with pytest.raises(ConfigError, match="bird"):
        ImageFolderDataset(tmp_path / "val", classes=["cat", "dog"])


# ---------------------------------------------------------------- token cache


@register_tokenizer
class PoolBucketTokenizer(Tokenizer):
    """Stand-in discrete tokenizer: average-pool by `downsample`, then bucketise into `vocab_size` bins."""

    name = "test_pool_bucket"
    kind = "discrete"

    def __init__(self, in_channels: int = 1, downsample: int = 4, vocab_size: int = 8):
        super().__init__()
        self.config = {"in_channels": in_channels, "downsample": downsample, "vocab_size": vocab_size}
        self.in_channels, self.downsample, self.vocab_size = in_channels, downsample, vocab_size
        self.register_buffer("edges", torch.linspace(-1, 1, vocab_size + 1)[1:-1])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        pooled = F.avg_pool2d(x.mean(1, keepdim=True), self.downsample)[:, 0]  # [B, h, w]
        return torch.bucketize(pooled, self.edges)


def test_token_cache_round_trip(tmp_path):
    dm = DigitsDataModule(image_size=16, batch_size=100)
    dm.setup()
    loader = DataLoader(dm.val_dataset, batch_size=50)
    tokenizer = PoolBucketTokenizer()
    meta = cache_tokens(tokenizer, loader, tmp_path / "cache", tokenizer_path="tok", progress=False)
    assert meta["grid"] == [4, 4] and meta["vocab_size"] == 8 and meta["num_items"] == len(dm.val_dataset)
    assert json.loads((tmp_path / "cache" / "meta.json").read_text())["tokenizer_path"] == "tok"

    cache = TokenCacheDataModule(str(tmp_path / "cache"), batch_size=1000)
    assert cache.meta == meta and cache.grid == (4, 4) and cache.vocab_size == 8
    batch = next(iter(cache.train_dataloader()))
    # the train loader shuffles: compare as multisets of (tokens, label) rows
    expected = torch.cat([tokenizer.encode(b["image"]) for b in loader])  # [N, 4, 4]
    labels = torch.cat([b["label"] for b in loader])
    assert batch["tokens"].dtype == torch.long and batch["label"].dtype == torch.long
    assert sorted(zip(batch["tokens"].flatten(1).tolist(), batch["label"].tolist())) == sorted(
        zip(expected.flatten(1).tolist(), labels.tolist())
    )
    assert cache.val_dataloader() == []

    split = TokenCacheDataModule(str(tmp_path / "cache"), batch_size=8, val_fraction=0.2, seed=0)
    split.setup()
    assert len(split.train_dataset) + len(split.val_dataset) == meta["num_items"]


def test_token_cache_missing_gives_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"no token cache.*scripts/cache_tokens\.py"):
        TokenCacheDataModule(str(tmp_path / "nowhere"))


def test_cache_tokens_script(tmp_path, capsys, load_script):
    main = load_script("cache_tokens").main
    PoolBucketTokenizer(downsample=8, vocab_size=4).save_pretrained(tmp_path / "tok")
    main(
        [
            "--tokenizer",
            str(tmp_path / "tok"),
            "--data",
            "digits",
            "--image-size",
            "16",
            "--out",
            str(tmp_path / "c"),
        ]
    )
    meta = TokenCacheDataModule(str(tmp_path / "c")).meta
    assert meta["grid"] == [2, 2] and meta["num_items"] == len(digits_split(16)[1]) == 1618
    assert "cached 1618 items" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["--tokenizer", str(tmp_path / "missing"), "--data", "digits", "--out", str(tmp_path / "d")])
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("error: no tokenizer at")
