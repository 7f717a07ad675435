"""Captioned image folders: sidecar and manifest layouts, skipping and counting, strict mode, batches."""

import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from mmar.data import CaptionedImageFolderDataModule, CaptionedImageFolderDataset
from mmar.errors import ConfigError

LOGGER = "mmar.data.captioned_folder"


def save_png(path, seed: int, size=(20, 14)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def sidecar_root(tmp_path):
    """4 captioned PNGs (txt, json str, json list, nested txt), 1 corrupt captioned file, 3 caption-less."""
    root = tmp_path / "images"
    save_png(root / "a.png", 0)
    (root / "a.txt").write_text("  a red cube\n")
    save_png(root / "b.png", 1)
    (root / "b.json").write_text(json.dumps({"caption": "a blue ball", "width": 20}))
    save_png(root / "sub" / "c.png", 2)
    (root / "sub" / "c.json").write_text(json.dumps({"caption": ["first caption", "second caption"]}))
    save_png(root / "sub" / "deeper" / "d.png", 3)
    (root / "sub" / "deeper" / "d.txt").write_text("a green cone")
    (root / "e.jpg").write_bytes(b"not a jpeg at all")  # corrupt image with a caption
    (root / "e.txt").write_text("a broken picture")
    save_png(root / "nocap.png", 4)  # no sidecar
    save_png(root / "empty.png", 5)
    (root / "empty.txt").write_text("   \n")  # empty caption
    save_png(root / "badjson.png", 6)
    (root / "badjson.json").write_text("{not json")  # unreadable sidecar
    return root


def test_sidecar_listing_drops_and_counts_uncaptioned(sidecar_root, caplog):
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dataset = CaptionedImageFolderDataset(sidecar_root, image_size=8)
    assert len(dataset) == 5 and dataset.num_uncaptioned == 3
    warnings = [r for r in caplog.records if r.name == LOGGER]
    assert len(warnings) == 1 and "dropped 3 of 8" in warnings[0].getMessage()
    captions = {os.path.basename(p): c for p, c in dataset.samples}
    assert captions == {
        "a.png": "a red cube",
        "b.png": "a blue ball",
        "c.png": "first caption",
        "d.png": "a green cone",
        "e.jpg": "a broken picture",
    }


def test_corrupt_image_is_skipped_and_counted(sidecar_root, caplog):
    dataset = CaptionedImageFolderDataset(sidecar_root, image_size=8)
    reader = "mmar.data.image_folder"  # image files are read (and skipped) by its ImageFiles
    with caplog.at_level(logging.WARNING, logger=reader):
        caplog.clear()
        items = [dataset[i] for i in range(len(dataset))]
        items += [dataset[i] for i in range(len(dataset))]  # second pass: counted once, warned once
    assert sum(item is None for item in items) == 2 and dataset.num_skipped == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == reader]
    assert len(warnings) == 1 and "e.jpg" in warnings[0]
    good = [item for item in items if item is not None]
    assert all(item["image"].shape == (3, 8, 8) and isinstance(item["caption"], str) for item in good)
    assert all("label" not in item for item in good)


def test_strict_raises_on_uncaptioned_and_on_corrupt(sidecar_root, tmp_path):
    with pytest.raises(ConfigError, match="strict=False"):
        CaptionedImageFolderDataset(sidecar_root, strict=True)
    clean = tmp_path / "clean"
    save_png(clean / "x.png", 7)
    (clean / "x.txt").write_text("fine")
    (clean / "y.png").write_bytes(b"\x89PNG broken")
    (clean / "y.txt").write_text("broken")
    dataset = CaptionedImageFolderDataset(clean, image_size=8, strict=True)
    assert dataset[0]["caption"] == "fine"
    with pytest.raises(ConfigError, match="unreadable image"):
        dataset[1]


def test_manifest_layout_relative_and_absolute_paths(tmp_path, caplog):
    data = tmp_path / "data"
    save_png(data / "imgs" / "p.png", 8)
    save_png(tmp_path / "elsewhere" / "q.png", 9)
    rows = [
        json.dumps({"image": "imgs/p.png", "caption": "a relative path"}),
        "",
        json.dumps({"image": str(tmp_path / "elsewhere" / "q.png"), "caption": ["an absolute path", "x"]}),
        json.dumps({"image": "imgs/p.png", "caption": ""}),  # empty caption
        json.dumps({"caption": "no image"}),  # no image key
        "{broken json",  # unreadable line
        json.dumps({"image": "imgs/missing.png", "caption": "file is gone"}),  # missing at read time
    ]
    manifest = data / "train.jsonl"
    manifest.write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        dataset = CaptionedImageFolderDataset(manifest=manifest, image_size=8, channels=1)
    assert len(dataset) == 3 and dataset.num_uncaptioned == 3
    assert "dropped 3 of 6" in caplog.text
    first, second, missing = dataset[0], dataset[1], dataset[2]
    assert first["caption"] == "a relative path" and first["image"].shape == (1, 8, 8)
    assert second["caption"] == "an absolute path"
    assert missing is None and dataset.num_skipped == 1
    with pytest.raises(ConfigError, match=r"train\.jsonl:4"):
        CaptionedImageFolderDataset(manifest=manifest, strict=True)


def test_datamodule_batches_and_val_split(sidecar_root):
    dm = CaptionedImageFolderDataModule(root=str(sidecar_root), image_size=16, batch_size=8, random_flip=True)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"image", "caption"}
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image"].dtype == torch.float32  # corrupt dropped
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["image"].min() < 0 < batch["image"].max()
    assert isinstance(batch["caption"], list) and all(isinstance(c, str) and c for c in batch["caption"])
    assert dm.val_dataloader() == [] and dm.image_shape == (3, 16, 16)

    def split(seed):
        dm = CaptionedImageFolderDataModule(root=str(sidecar_root), val_fraction=0.4, split_seed=seed)
        dm.setup()
        return [p for p, _ in dm.train_dataset.samples], [p for p, _ in dm.val_dataset.samples]

    train, val = split(0)
    assert len(val) == 2 and len(train) == 3 and not set(train) & set(val)
    assert split(0) == (train, val)
    assert any(split(seed)[1] != val for seed in range(1, 6))


def test_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        CaptionedImageFolderDataModule(root=str(tmp_path / "nope")).setup()
    with pytest.raises(ConfigError, match=r"manifest=.*does not exist"):
        CaptionedImageFolderDataModule(manifest=str(tmp_path / "nope.jsonl")).setup()
    with pytest.raises(ConfigError, match="exactly one of"):
        CaptionedImageFolderDataModule()
    with pytest.raises(ConfigError, match="exactly one of"):
        CaptionedImageFolderDataset(root=tmp_path, manifest=tmp_path / "m.jsonl")
    with pytest.raises(ConfigError, match="val_fraction"):
        CaptionedImageFolderDataModule(root=str(tmp_path), val_fraction=1.0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"no captioned images.*\.txt"):
        CaptionedImageFolderDataModule(root=str(empty)).setup()
    save_png(empty / "lonely.png", 0)
    with pytest.raises(ConfigError, match=r"no captioned images.*\(1 without a caption\)"):
        CaptionedImageFolderDataset(empty)
    one = tmp_path / "one"
    save_png(one / "x.png", 1)
    (one / "x.txt").write_text("only one")
    with pytest.raises(ConfigError, match="leaves no training images"):
        CaptionedImageFolderDataModule(root=str(one), val_fraction=0.5).setup()
