"""Output heads that turn trunk hidden states into predictions and losses."""

from mmar.heads.categorical import CategoricalHead

__all__ = ["CategoricalHead"]
