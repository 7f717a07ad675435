"""The KV-cached decoding of next_token, random_order, next_block and next_neighbor (and speculative
decoding, the channel-AR and parallel heads) samples the same tokens, bit for bit, as the per-unit loops
it replaced: tokens recorded from tiny randomly initialised models with fixed seeds.

Re-record (only when a change of the sampled tokens is intended):
`python tests/unit/test_decoding_golden.py`.
"""

import json
from pathlib import Path

import pytest
import torch

from mmar.conditioning import ClassCondition
from mmar.sampling import Sampler
from mmar.trunk import Trunk, trunk_config
from mmar.units import build_unit

GOLDEN = Path(__file__).parents[1] / "data" / "decoding_golden.json"
D = 32
CHANNEL_AR = {"head": "channel_ar", "head_kwargs": {"channels": 3, "width": 16, "depth": 1, "heads": 2}}

# name -> (unit, grid, vocab, unit kwargs, sampler kwargs, generate kwargs, padded condition)
CASES = {
    "next_token": ("next_token", (3, 4), 17, {}, {}, {}, False),
    "next_token_cfg_topk": ("next_token", (3, 4), 17, {}, {"cfg_scale": 2.0, "top_k": 5}, {}, False),
    "next_token_uncached": ("next_token", (3, 4), 17, {}, {"cfg_scale": 2.0}, {"use_cache": False}, False),
    "next_token_prefix": (
        "next_token",
        (3, 4),
        17,
        {},
        {"cfg_scale": 3.0, "cfg_schedule": "linear"},
        {"prefix": 1},
        False,
    ),
    "next_token_teacher": ("next_token", (3, 4), 17, {}, {"temperature": 1.0}, {"teacher": 0.5}, False),
    "next_token_fixed": ("next_token", (3, 4), 17, {}, {"cfg_scale": 2.0}, {"fixed": True}, False),
    "next_token_padded": ("next_token", (3, 4), 17, {}, {"cfg_scale": 2.0}, {}, True),
    "next_token_channel_ar": ("next_token", (2, 3), 5, CHANNEL_AR, {"cfg_scale": 2.0}, {}, False),
    "next_token_parallel": (
        "next_token",
        (2, 3),
        5,
        {"head": "parallel", "head_kwargs": {"levels": 2}},
        {"cfg_scale": 2.0},
        {},
        False,
    ),
    "next_token_sjd": (
        "next_token",
        (3, 4),
        17,
        {},
        {"cfg_scale": 2.0, "speculative": "sjd", "window": 4},
        {},
        False,
    ),
    "next_token_lantern": (
        "next_token",
        (3, 4),
        17,
        {},
        {"temperature": 1.0, "speculative": "lantern", "window": 4, "lantern_k": 3, "lantern_delta": 0.3},
        {},
        False,
    ),
    "random_order": ("random_order", (3, 4), 17, {}, {"cfg_scale": 2.0}, {}, False),
    "random_order_uncached": ("random_order", (3, 4), 17, {}, {}, {"use_cache": False}, False),
    "random_order_sjd": ("random_order", (3, 4), 17, {}, {"speculative": "sjd", "window": 3}, {}, False),
    "next_block_row": ("next_block", (3, 4), 17, {}, {"cfg_scale": 2.0, "top_k": 5}, {}, False),
    "next_block_2x2": ("next_block", (4, 4), 17, {"block": [2, 2]}, {}, {"use_cache": False}, False),
    "next_block_prefix": ("next_block", (3, 4), 17, {}, {"cfg_scale": 2.0}, {"prefix": 1}, False),
    "next_block_padded": ("next_block", (3, 4), 17, {}, {"cfg_scale": 2.0}, {}, True),
    "next_block_channel_ar": (
        "next_block",
        (2, 3),
        5,
        CHANNEL_AR,
        {"cfg_scale": 2.0, "temperature": 0.5},
        {},
        False,
    ),
    "next_neighbor": (
        "next_neighbor",
        (3, 4),
        17,
        {},
        {"cfg_scale": 2.0, "cfg_schedule": "cosine"},
        {},
        False,
    ),
    "next_neighbor_uncached": ("next_neighbor", (3, 3), 17, {}, {}, {"use_cache": False}, False),
    "next_neighbor_prefix": ("next_neighbor", (3, 4), 17, {}, {"cfg_scale": 2.0}, {"prefix": 1}, False),
    "next_neighbor_video": ("next_neighbor", (2, 3, 3), 17, {}, {"cfg_scale": 2.0}, {}, False),
}


def sample_case(name: str) -> list:
    """Build the case's tiny model from a fixed seed and sample two images with a seeded sampler."""
    unit_name, grid, vocab, unit_kwargs, sampler_kwargs, generate_kwargs, padded = CASES[name]
    torch.manual_seed(sorted(CASES).index(name))
    trunk = Trunk(trunk_config("debug", d_model=D, n_head=2)).eval()
    unit = build_unit(unit_name, d_model=D, grid=grid, vocab_size=vocab, **unit_kwargs).eval()
    condition = ClassCondition(5, D, n_tokens=3 if padded else 1).eval()
    sampler = Sampler(seed=7, **{"temperature": 0.03, **sampler_kwargs})  # the logits decide, not only noise
    cond = condition.for_sampling(torch.tensor([1, 3]), sampler.guided).tokens  # (B', n_cond, D)
    if padded:  # a text-like prefix: the first condition token of every other row is padding
        trunk = trunk.with_prefix_padding(
            torch.tensor([[True, True, True], [False, True, True]]).repeat(len(cond) // 2, 1)
        )
    token_shape = tuple(getattr(unit.head, "token_shape", ()))
    kwargs = dict(generate_kwargs)
    reference = torch.randint(0, vocab, (2, *grid, *token_shape))
    if "prefix" in kwargs:
        kwargs["prefix"] = reference[:, : kwargs["prefix"]]
    if "teacher" in kwargs:
        kwargs["teacher_prob"], kwargs["teacher"] = kwargs.pop("teacher"), reference
    if "fixed" in kwargs:
        n = unit.seq_len
        kwargs["fixed"] = (reference.flatten(1, len(grid))[:1], torch.rand(1, n) < 0.3)
    tokens = unit.generate(trunk, cond, grid, sampler, **kwargs)
    return tokens.tolist()


@pytest.mark.parametrize("name", sorted(CASES))
def test_sampled_tokens_are_unchanged(name):
    assert sample_case(name) == json.loads(GOLDEN.read_text())[name]


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps({name: sample_case(name) for name in sorted(CASES)}) + "\n")
