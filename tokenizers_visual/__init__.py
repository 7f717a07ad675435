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
from tokenizers_visual.vq import VQTokenizer

__all__ = [
    "TOKENIZERS",
    "Tokenizer",
    "VQTokenizer",
    "load_tokenizer",
    "read_tokenizer_config",
    "register_tokenizer",
]
