"""The Triton flash attention equals the torch reference for every mask the units use (interpreted on
CPU, fp32 and fp16, tiny and odd shapes), forward, gradients and the split-KV decode path."""

import pytest
import torch

from mmar.kernels import BlockCausal, Causal, Dense, Prefix, attention, attention_reference, proximity
from mmar.kernels.block_lists import build_plan

pytest.importorskip("triton")

T = 21  # two 16-row blocks, the second ragged


def masks(batch: int):
    dense = torch.rand(batch, T, T, generator=torch.Generator().manual_seed(0)) > 0.5
    dense[0, 3] = False  # a query that may attend to nothing: zeros, like SDPA
    return {
        "none": None,
        "causal": Causal(),
        "prefix": Prefix(5),
        "block_causal": BlockCausal(torch.arange(T) // 4),
        "proximity": proximity((4, 5), n_prefix=1),
        "dense": Dense(dense),
    }


def qkv(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(dtype).requires_grad_() for _ in range(3)]


def test_tiles_match_a_brute_force_classification():
    mask = proximity((4, 5), n_prefix=1)
    plan = build_plan(mask, T, T, 0, 8, 8, "cpu")
    allowed = mask.dense(T, T)
    for row in range(3):
        for col in range(3):
            tile = allowed[row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8]
            ragged = (col + 1) * 8 > T
            full, partial = tile.all() and not ragged, tile.any() and not (tile.all() and not ragged)
            listed_full = col in plan.forward.full_index[0, row, : plan.forward.full_count[0, row]]
            listed_partial = col in plan.forward.partial_index[0, row, : plan.forward.partial_count[0, row]]
            assert (listed_full, listed_partial) == (bool(full), bool(partial))


@pytest.mark.parametrize("name", list(masks(2)))
def test_forward_and_gradients_match_reference(name):
    mask = masks(2)[name]
    q, k, v = qkv((2, 1, T, 16))
    grad = torch.randn(2, 1, T, 16)
    out = attention(q, k, v, mask, impl="triton")
    got = torch.autograd.grad(out, (q, k, v), grad)
    ref = attention_reference(q, k, v, mask)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if name == "dense":
        assert out[0, :, 3].abs().max() == 0  # the row with no key


@pytest.mark.parametrize("splits", [1, 3])
def test_decode_against_a_kv_cache_matches_reference(splits):
    q, k, v = qkv((1, 2, T, 16), seed=1)
    mask = BlockCausal(torch.arange(T) // 3)
    with torch.no_grad():
        full = attention_reference(q, k, v, mask)
        step = attention(q[:, :, 18:], k, v, mask, q_offset=18, impl="triton", splits=splits)
        torch.testing.assert_close(step, full[:, :, 18:], atol=1e-5, rtol=1e-5)
        cached = attention(q[:, :, 5:8], k[:, :, :8], v[:, :, :8], Causal(), q_offset=5, impl="triton")
        want = attention_reference(q, k, v, Causal())[:, :, 5:8]
        torch.testing.assert_close(cached, want, atol=1e-5, rtol=1e-5)


def test_fp16_and_wider_heads():
    q, k, v = qkv((1, 1, 17, 32), dtype=torch.float16, seed=2)
    out = attention(q, k, v, Causal(), impl="triton")
    ref = attention_reference(q.float(), k.float(), v.float(), Causal())
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), ref, atol=2e-3, rtol=2e-3)
    for d in (64, 128):
        q, k, v = (t.detach() for t in qkv((1, 1, 16, d), seed=d))
        with torch.no_grad():
            out = attention(q, k, v, Prefix(3), impl="triton")
        torch.testing.assert_close(out, attention_reference(q, k, v, Prefix(3)), atol=1e-5, rtol=1e-5)


def test_unsupported_inputs_are_named():
    q = torch.randn(1, 1, 4, 24)
    with pytest.raises(ValueError, match="head dim 24"):
        attention(q, q, q, impl="triton")
    torch.testing.assert_close(attention(q, q, q, impl="auto"), attention_reference(q, q, q))  # CPU: torch
    b = torch.randn(1, 1, 4, 16, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="bf16"):
        attention(b, b, b, impl="triton")
    q = torch.randn(1, 1, 4, 16)
    with pytest.raises(ValueError, match="mask's tensor is on meta"):
        attention(q, q, q, BlockCausal(torch.zeros(4, dtype=torch.long, device="meta")), impl="triton")
    with pytest.raises(ValueError, match="decoding only"):
        attention(q.requires_grad_(), q, q, impl="triton", splits=2)
