"""The Tokenizer contract and registry live in `mmar.tokenizer`; this module keeps the old imports
(`from tokenizers_visual.base import load_tokenizer`, ...) working."""

from mmar.tokenizer import (
    CONFIG_NAME,
    TOKENIZERS,
    WEIGHTS_NAME,
    Tokenizer,
    build_tokenizer,
    load_tokenizer,
    read_tokenizer_config,
    register_tokenizer,
)

__all__ = [
    "CONFIG_NAME",
    "TOKENIZERS",
    "WEIGHTS_NAME",
    "Tokenizer",
    "build_tokenizer",
    "load_tokenizer",
    "read_tokenizer_config",
    "register_tokenizer",
]
