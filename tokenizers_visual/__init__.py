"""Image and video tokenizers on the `mmar.tokenizer` contract.

Importing this package registers every tokenizer here in `mmar.tokenizer.TOKENIZERS` (e.g. "vq"), which
`mmar.tokenizer.load_tokenizer(path)` does by itself the first time it meets a name it does not know. The
contract's names are re-exported for the imports that predate `mmar.tokenizer`.
"""

from mmar.tokenizer import (
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
