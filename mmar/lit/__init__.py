"""LightningModules: TokenizerModule (trains a tokenizer), GeneratorModule (trains a generator) and
StreamModule (a text LM, or one model over a stream of text and image tokens)."""

from mmar.lit.generator_module import GeneratorModule
from mmar.lit.stream_module import StreamModule
from mmar.lit.tokenizer_module import TokenizerModule

__all__ = ["GeneratorModule", "StreamModule", "TokenizerModule"]
