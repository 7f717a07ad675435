"""Image and video tokenizers: the Tokenizer contract, its registry and the implementations.

Importing this package registers every tokenizer in `TOKENIZERS` (e.g. "vq"), so `load_tokenizer(path)`
can rebuild any of them from a folder written by `save_pretrained`.
"""

from tokenizers_visual.base import (
    TOKENIZERS,
    Tokenizer,
    load_tokenizer,
    read_tokenizer_config,
    register_tokenizer,
)
from tokenizers_visual.diffusers_vae import DiffusersVAETokenizer
from tokenizers_visual.fsq import FSQTokenizer, LFQTokenizer
from tokenizers_visual.kl_vae import KLVAETokenizer, LatentNormalization
from tokenizers_visual.post_quant import PostQuantTokenizer
from tokenizers_visual.robust_vq import RobustVQTokenizer
from tokenizers_visual.subobject import SubobjectTokenizer, SubobjectTokens
from tokenizers_visual.video import VideoFSQTokenizer
from tokenizers_visual.vq import VQTokenizer

__all__ = [
    "TOKENIZERS",
    "DiffusersVAETokenizer",
    "FSQTokenizer",
    "KLVAETokenizer",
    "LFQTokenizer",
    "LatentNormalization",
    "PostQuantTokenizer",
    "RobustVQTokenizer",
    "SubobjectTokenizer",
    "SubobjectTokens",
    "Tokenizer",
    "VQTokenizer",
    "VideoFSQTokenizer",
    "load_tokenizer",
    "read_tokenizer_config",
    "register_tokenizer",
]
