"""A token cache: encode a dataset once with a frozen tokenizer, then train generators on the ids.

As in LlamaGen's `extract_codes` step, images (or video clips) go through the tokenizer a single time and
the discrete ids are stored, so generator training never runs the tokenizer. A cache is a folder with

- `tokens.safetensors`: "tokens" int32 [N, *grid] ([N, h, w], or [N, t, h, w] for videos) and "labels"
  int64 [N] (when the data has labels),
  optionally "images" float32 [N, C, H, W] (pairs of images and tokens, e.g. generated tokens for
  RobusTok's decoder post-training); for captioned data "caption_index" int64 [N] (item -> its
  caption), and when encoded with a text condition's frozen encoder, each distinct caption's states
  once: "caption_embeddings" float16 [U, n, E] and "caption_valid" bool [U, n], so generator training
  never runs the text encoder either
- `captions.json` (captioned data): the U distinct caption strings, in `caption_index` order
- `meta.json`: tokenizer_path, tokenizer_name, vocab_size, grid, num_items, num_classes, image_shape
  (the input's (C, H, W) or (C, T, H, W); and text_encoder, max_length for captions)

`meta.json` is written last, so a folder with it holds a complete cache. Build one with
`scripts/cache_tokens.py` (or `cache_tokens` from Python); serve it with `TokenCacheDataModule`.

Batches: {"tokens": long [B, *grid], "label": long [B]} (and "image" [B, C, H, W] when stored;
"caption": list[str] for captioned data, with "caption_embedding" [B, n, E] and "caption_valid" [B, n]
when their encoder states were cached).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mmar.data.base import SplitDataModule
from mmar.data.captioned_folder import CaptionedImageFolderDataset
from mmar.data.digits import DigitsDataModule, stratified_split
from mmar.data.image_folder import ImageFolderDataset
from mmar.data.shapes import ShapesDataset
from mmar.data.video import MovingDigitsDataModule
from mmar.errors import ConfigError
from mmar.io import atomic_write

TOKENS_NAME = "tokens.safetensors"
CAPTIONS_NAME = "captions.json"
META_NAME = "meta.json"
INT32_MAX = 2**31 - 1


@torch.no_grad()
def cache_tokens(
    tokenizer: torch.nn.Module,
    dataloader: Iterable[dict[str, torch.Tensor] | None],
    path: str | os.PathLike,
    tokenizer_path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    text: torch.nn.Module | None = None,
) -> dict[str, Any]:
    """Encode every image (or video) batch of `dataloader` and save the ids and labels as a cache in `path`.

    Args:
        tokenizer: a discrete `mmar.tokenizer.Tokenizer` (put in eval mode here).
        dataloader: yields {"image": [B, C, H, W] in [-1, 1], "label": [B]} (or "video" [B, C, T, H, W] for a
            video tokenizer; None batches are skipped);
            it should not shuffle, so item i of the cache is item i of the dataset.
        path: output folder (created).
        tokenizer_path: where the tokenizer was loaded from, recorded in `meta.json`.
        device: device to encode on.
        progress: show a tqdm bar.
        text: a `mmar.conditioning.TextCondition` whose frozen encoder embeds the batches' "caption"
            entries (each distinct caption once); None: captions are not cached.

    Returns:
        The metadata written to `meta.json`.
    """
    if getattr(tokenizer, "kind", "discrete") != "discrete":
        raise ConfigError(
            f"the token cache stores discrete ids, but tokenizer '{getattr(tokenizer, 'name', '?')}' is "
            f"{tokenizer.kind}; use a discrete tokenizer (VQ/LFQ/FSQ)"
        )
    vocab_size = int(tokenizer.vocab_size)
    if vocab_size > INT32_MAX:
        raise ConfigError(f"vocab_size={vocab_size} does not fit the cache's int32 ids")
    was_training = tokenizer.training
    tokenizer.eval().to(device)
    tokens, labels, captions, image_shape = [], [], [], None
    try:
        for batch in tqdm(dataloader, desc="caching tokens", disable=not progress):
            if batch is None:  # every item of the batch was unreadable and skipped
                continue
            key = "video" if getattr(tokenizer, "modality", "image") == "video" else "image"
            if key not in batch:
                raise ConfigError(
                    f"the {tokenizer.name} tokenizer encodes {key}s but the data gives {sorted(batch)}; "
                    f"cache {key} data with it"
                )
            images = batch[key].to(device)  # [B, C, H, W] or [B, C, T, H, W]
            ids = tokenizer.encode(images)  # [B, *grid]
            if tokens and ids.shape[1:] != tokens[0].shape[1:]:
                raise ConfigError(
                    f"token grid changed from {tuple(tokens[0].shape[1:])} to {tuple(ids.shape[1:])} "
                    "between batches; resize every image to one size before caching"
                )
            image_shape = list(images.shape[1:])
            tokens.append(ids.to("cpu", torch.int32))
            if "label" in batch:
                labels.append(batch["label"].to("cpu", torch.int64))
            if "caption" in batch:
                captions.extend(batch["caption"])
            elif text is not None:
                raise ConfigError("a text encoder was given but the data has no captions to cache")
    finally:
        tokenizer.train(was_training)
    if not tokens:
        raise ConfigError("the dataloader yielded no images; nothing to cache (check the data root)")
    all_tokens = torch.cat(tokens)  # [N, h, w] int32
    if labels and len(labels) != len(tokens):
        raise ConfigError("some batches have labels and some do not; cache a dataset of one kind")
    all_labels = torch.cat(labels) if labels else None  # [N] int64
    meta = {
        "tokenizer_path": None if tokenizer_path is None else str(tokenizer_path),
        "tokenizer_name": getattr(tokenizer, "name", type(tokenizer).__name__),
        "vocab_size": vocab_size,
        "grid": list(all_tokens.shape[1:]),
        "num_items": len(all_tokens),
        "num_classes": None if all_labels is None else int(all_labels.max()) + 1,
        "image_shape": image_shape,
    }
    extra, distinct = {}, None
    if captions:
        distinct = sorted(set(captions))
        index = {caption: i for i, caption in enumerate(distinct)}
        extra["caption_index"] = torch.tensor([index[c] for c in captions], dtype=torch.int64)
        meta["num_captions"] = len(distinct)
    if text is not None:
        extra.update(embed_captions(text, distinct, progress))
        meta.update(
            text_encoder=text.encoder_name,
            max_length=text.max_length,
        )
    save_token_cache(path, all_tokens, all_labels, meta, captions=distinct, **extra)
    return meta


def embed_captions(text: torch.nn.Module, distinct: list[str], progress: bool, batch: int = 256) -> dict:
    """Each distinct caption through the frozen encoder once: the cache's caption tensors."""
    hidden, valid = [], []
    for start in tqdm(range(0, len(distinct), batch), desc="embedding captions", disable=not progress):
        h, v = text.encode_text(distinct[start : start + batch])  # (b, n, E), (b, n)
        hidden.append(h.to("cpu", torch.float16))
        valid.append(v.cpu())
    return {
        "caption_embeddings": torch.cat(hidden),
        "caption_valid": torch.cat(valid),
    }


DATASETS = ("digits", "image_folder", "shapes", "captioned_folder", "moving_digits")


def ordered_dataset(
    data: str,
    root: str | None = None,
    image_size: int | None = None,
    channels: int = 3,
    split: str = "train",
    val_fraction: float = 0.1,
    seed: int = 0,
    num_items: int = 20000,
    compositions: str = "seen",
    num_frames: int = 9,
    labels: str = "digit",
) -> Dataset:
    """The images to encode, in a fixed order (no shuffling, no augmentation).

    `data` is "digits" (the embedded digits, `split` of a seeded `val_fraction` split, 32x32 by default),
    "image_folder" (`root`/<class>/<images>, 256x256 by default, `channels` 1 or 3), "shapes" (`num_items`
    captioned scenes of `split`, only the `compositions` given, 32x32 by default) or "captioned_folder"
    (`root` with caption sidecars or a .jsonl manifest, 256x256 by default) or "moving_digits" (`num_items`
    clips of `num_frames` frames of `split`, 32x32 by default, "label" as `labels`).
    """
    if data == "moving_digits":
        dm = MovingDigitsDataModule(
            image_size=image_size or 32,
            num_frames=num_frames,
            num_clips_train=max(num_items, 1),
            num_clips_val=num_items,
            val_fraction=val_fraction,
            seed=seed,
            labels=labels,
        )
        dm.setup()
        return dm.train_dataset if split == "train" else dm.val_dataset
    if data == "shapes":
        size = image_size or 32
        return ShapesDataset(num_items, image_size=size, seed=seed, split=split, compositions=compositions)
    if data == "captioned_folder":
        if not root:
            raise ConfigError(
                "--data captioned_folder needs --root (a folder with caption sidecars or a .jsonl)"
            )
        source = {"manifest": root} if str(root).endswith(".jsonl") else {"root": root}
        return CaptionedImageFolderDataset(**source, image_size=image_size or 256, channels=channels)
    if data == "digits":
        dm = DigitsDataModule(
            image_size=image_size or 32, val_fraction=val_fraction, seed=seed, augment=False
        )
        dm.setup()
        return dm.train_dataset if split == "train" else dm.val_dataset
    if data != "image_folder":
        raise ConfigError(f"unknown data '{data}'; choose one of {DATASETS}")
    if not root:
        raise ConfigError("--data image_folder needs --root pointing at root/<class_name>/<image files>")
    return ImageFolderDataset(root, image_size=image_size or 256, channels=channels)


def save_token_cache(
    path: str | os.PathLike,
    tokens: torch.Tensor,
    labels: torch.Tensor | None,
    meta: dict[str, Any],
    images: torch.Tensor | None = None,
    captions: list[str] | None = None,
    **caption_tensors: torch.Tensor,
) -> None:
    """Write `tokens.safetensors` (and `captions.json`, the distinct `captions`) then `meta.json` into
    `path`, each atomically; `caption_tensors` are caption_index and the tensors of `embed_captions`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {
        "tokens": tokens.to(torch.int32).contiguous(),
        **{k: v.contiguous() for k, v in caption_tensors.items()},
    }
    if labels is not None:
        tensors["labels"] = labels.to(torch.int64).contiguous()
    if images is not None:
        tensors["images"] = images.to(torch.float32).contiguous()
    atomic_write(path / TOKENS_NAME, lambda tmp: save_file(tensors, tmp))
    if captions is not None:
        atomic_write(path / CAPTIONS_NAME, lambda tmp: Path(tmp).write_text(json.dumps(captions)))
    atomic_write(path / META_NAME, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))


def read_token_cache_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The `meta.json` of a token cache; ConfigError when `path` does not hold a cache."""
    path = Path(path)
    if not (path / META_NAME).is_file() or not (path / TOKENS_NAME).is_file():
        raise ConfigError(
            f"no token cache at '{path}' (expected {META_NAME} and {TOKENS_NAME}); build one with "
            f"`python scripts/cache_tokens.py --tokenizer TOKENIZER_DIR --data digits --out {path}`"
        )
    return json.loads((path / META_NAME).read_text())


def load_token_cache(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """({"tokens": long [N, h, w], "labels": long [N], "images"?: [N, C, H, W]}, meta) from a cache."""
    meta = read_token_cache_meta(path)
    tensors = load_file(str(Path(path) / TOKENS_NAME))
    tensors["tokens"] = tensors["tokens"].long()
    if "labels" in tensors:
        tensors["labels"] = tensors["labels"].long()
    tokens = tensors["tokens"]
    if len(tokens) != meta["num_items"] or list(tokens.shape[1 : 1 + len(meta["grid"])]) != meta["grid"]:
        raise ConfigError(
            f"token cache '{path}' is inconsistent: {TOKENS_NAME} holds {tuple(tokens.shape)} but "
            f"{META_NAME} says {meta['num_items']} items on grid {meta['grid']}; rebuild it with "
            "scripts/cache_tokens.py"
        )
    return tensors, meta


def read_captions(path: str | os.PathLike) -> list[str] | None:
    """The distinct caption strings of a captioned cache (None when the cache has no captions)."""
    file = Path(path) / CAPTIONS_NAME
    return json.loads(file.read_text()) if file.is_file() else None


ITEM_KEYS = {"tokens": "tokens", "labels": "label", "images": "image"}  # stored name -> batch key
CAPTION_KEYS = ("caption_embeddings", "caption_valid")  # per distinct caption, looked up by caption_index


class TokenCacheDataset(Dataset):
    """Cached ids; each item is {"tokens": long [*grid], "label"?: long scalar, "image"?: [C, H, W],
    "caption"?: str, "caption_embedding"?: float16 [n, E], "caption_valid"?: bool [n]}."""

    def __init__(self, tensors: dict[str, torch.Tensor], captions: list[str] | None = None):
        self.tensors = {ITEM_KEYS[name]: value for name, value in tensors.items() if name in ITEM_KEYS}
        self.embeddings = {name: tensors[name] for name in CAPTION_KEYS if name in tensors}
        self.caption_index = tensors.get("caption_index")
        self.caption_strings = captions

    def __len__(self) -> int:
        return len(self.tensors["tokens"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {key: value[index] for key, value in self.tensors.items()}  # tokens [*grid], ...
        if self.caption_index is None:
            return item
        row = self.caption_index[index]
        if self.caption_strings is not None:
            item["caption"] = self.caption_strings[row]
        if self.embeddings:
            item["caption_embedding"] = self.embeddings["caption_embeddings"][row]
            item["caption_valid"] = self.embeddings["caption_valid"][row]
        return item


class TokenCacheDataModule(SplitDataModule):
    """Serves a token cache built by `cache_tokens` (test split = val split).

    Args:
        path: the cache folder (with `tokens.safetensors` and `meta.json`).
        batch_size: items per batch.
        val_fraction: fraction of each class held out for validation (0: no validation).
        seed: seed of the stratified split.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 64,
        val_fraction: float = 0.0,
        seed: int = 0,
        num_workers: int = 0,
    ):
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        self.path = path
        self.meta = read_token_cache_meta(path)  # fail early, before the trainer starts
        self.val_fraction = val_fraction
        self.seed = seed

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.meta["grid"])

    @property
    def num_classes(self) -> int | None:
        return self.meta["num_classes"]

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        tensors, _ = load_token_cache(self.path)
        per_item = {k: v for k, v in tensors.items() if k not in CAPTION_KEYS}
        shared = {k: v for k, v in tensors.items() if k in CAPTION_KEYS}
        labels = tensors.get("labels", torch.zeros(len(tensors["tokens"]), dtype=torch.long))
        train_idx, val_idx = stratified_split(labels, self.val_fraction, self.seed)
        captions = read_captions(self.path)
        train = {**{k: v[train_idx] for k, v in per_item.items()}, **shared}
        self.train_dataset = TokenCacheDataset(train, captions)
        val = {**{k: v[val_idx] for k, v in per_item.items()}, **shared}
        self.val_dataset = TokenCacheDataset(val, captions) if len(val_idx) else None
