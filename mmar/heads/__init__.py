"""Output heads that turn trunk hidden states into predictions and losses, registered by name."""

from __future__ import annotations

from torch import nn

from mmar.errors import ConfigError
from mmar.heads.categorical import CategoricalHead
from mmar.heads.channel_ar import ChannelARHead
from mmar.heads.parallel import ParallelCategoricalHead

TOKEN_HEADS: dict[str, type[nn.Module]] = {
    "categorical": CategoricalHead,
    "channel_ar": ChannelARHead,
    "parallel": ParallelCategoricalHead,
}


def build_token_head(name: str, d_model: int, vocab_size: int, **kwargs) -> nn.Module:
    """The discrete token head registered as `name` (embed + loss + sample for one token type)."""
    if name not in TOKEN_HEADS:
        raise ConfigError(f"unknown token head '{name}'; registered heads: {sorted(TOKEN_HEADS)}")
    return TOKEN_HEADS[name](d_model, vocab_size, **kwargs)


__all__ = [
    "TOKEN_HEADS",
    "CategoricalHead",
    "ChannelARHead",
    "ParallelCategoricalHead",
    "build_token_head",
]
