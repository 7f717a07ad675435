"""LightningModules: TokenizerModule (trains a tokenizer) and GeneratorModule (trains a generator)."""

from mmar.lit.generator_module import GeneratorModule
from mmar.lit.tokenizer_module import TokenizerModule

__all__ = ["GeneratorModule", "TokenizerModule"]
