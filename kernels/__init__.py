"""mmar.kernels: attention, sampling and cross-entropy ops, each a torch reference plus dispatch.

Import this package as `mmar.kernels` (setuptools maps the top-level `kernels/` folder to that name).
"""

from mmar.kernels.attention import attention, attention_reference
from mmar.kernels.cross_entropy import linear_cross_entropy, linear_cross_entropy_reference
from mmar.kernels.masks import BlockCausal, Causal, Dense, KeyPadding, Mask, Prefix, proximity
from mmar.kernels.sample import cfg_mix, filter_logits, sample, sample_reference

__all__ = [
    "BlockCausal",
    "Causal",
    "Dense",
    "KeyPadding",
    "Mask",
    "Prefix",
    "attention",
    "attention_reference",
    "cfg_mix",
    "filter_logits",
    "linear_cross_entropy",
    "linear_cross_entropy_reference",
    "proximity",
    "sample",
    "sample_reference",
]
