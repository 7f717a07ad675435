"""DataModules and datasets: embedded digits and shapes, image folders (ImageNet layout), captioned
image folders, token caches, labels, packed text.

Image batches are {"image": float32 [B, C, H, W] in [-1, 1], "label": long [B]}, or with "caption":
list[str] instead of labels (captioned folders; the shapes give both); token-cache batches are
{"tokens": long [B, h, w], "label": long [B]} and, for captions, their cached encoder states; text
batches are {"tokens": long [B, L]} packed text ids (`TextDataModule`).
"""

from mmar.data.audio import (
    AudioFolderDataModule,
    AudioFolderDataset,
    EmbeddedNotesDataModule,
    EmbeddedNotesDataset,
)
from mmar.data.captioned_folder import CaptionedImageFolderDataModule, CaptionedImageFolderDataset
from mmar.data.digits import (
    DigitsDataModule,
    DigitsDataset,
    digits_split,
    load_digits_images,
    stratified_split,
)
from mmar.data.image_folder import ImageFolderDataModule, ImageFolderDataset, collate_skip_none
from mmar.data.labels import ClassLabelsDataModule
from mmar.data.shapes import ShapesDataModule, ShapesDataset
from mmar.data.text import TextDataModule, TextDataset
from mmar.data.token_cache import (
    TokenCacheDataModule,
    TokenCacheDataset,
    cache_tokens,
    load_token_cache,
    read_token_cache_meta,
)
from mmar.data.video import MovingDigitsDataModule, MovingDigitsDataset
from mmar.data.video_folder import VideoFolderDataModule, VideoFolderDataset

__all__ = [
    "AudioFolderDataModule",
    "AudioFolderDataset",
    "CaptionedImageFolderDataModule",
    "CaptionedImageFolderDataset",
    "ClassLabelsDataModule",
    "DigitsDataModule",
    "DigitsDataset",
    "EmbeddedNotesDataModule",
    "EmbeddedNotesDataset",
    "ImageFolderDataModule",
    "ImageFolderDataset",
    "MovingDigitsDataModule",
    "MovingDigitsDataset",
    "ShapesDataModule",
    "ShapesDataset",
    "TextDataModule",
    "TextDataset",
    "TokenCacheDataModule",
    "TokenCacheDataset",
    "VideoFolderDataModule",
    "VideoFolderDataset",
    "cache_tokens",
    "collate_skip_none",
    "digits_split",
    "load_digits_images",
    "load_token_cache",
    "read_token_cache_meta",
    "stratified_split",
]
