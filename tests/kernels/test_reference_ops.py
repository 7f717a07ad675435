"""Kernel references: masks equal their definitions, attention equals softmax maths, CE equals torch's."""

import pytest
import torch
import torch.nn.functional as F

from mmar.kernels import BlockCausal, Causal, Dense, Prefix, attention, linear_cross_entropy


def brute(predicate, tq, tkv, offset=0):
    return torch.tensor([[predicate(offset + i, j) for j in range(tkv)] for i in range(tq)])


def test_masks_equal_brute_force_definitions():
    ids = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    cases = [
        (Causal(), lambda i, j: j <= i),
        (Prefix(3), lambda i, j: j <= i or j < 3),
        (BlockCausal(ids), lambda i, j: ids[j] <= ids[i]),
    ]
    for mask, pred in cases:
        assert torch.equal(mask.dense(8, 8), brute(pred, 8, 8))
        assert torch.equal(mask.dense(3, 8, q_offset=5), brute(pred, 3, 8, offset=5))
    dense = torch.rand(8, 8) > 0.5
    assert torch.equal(Dense(dense).dense(3, 8, q_offset=5), dense[5:8])


def manual_attention(q, k, v, allowed):
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    return scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ v


@pytest.mark.parametrize(
    "mask", [None, Causal(), Prefix(4), BlockCausal(torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3]))]
)
def test_attention_matches_softmax_definition(mask):
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 2, 9, 16).unbind(0)
    allowed = torch.ones(9, 9, dtype=torch.bool) if mask is None else mask.dense(9, 9)
    torch.testing.assert_close(attention(q, k, v, mask), manual_attention(q, k, v, allowed))
    if mask is not None:  # a decode chunk at an offset sees the same rows of the mask
        out = attention(q[:, :, 6:], k, v, mask, q_offset=6)
        torch.testing.assert_close(out, manual_attention(q, k, v, allowed)[:, :, 6:])


def test_attention_rejects_unknown_impl():
    q = torch.randn(1, 1, 2, 8)
    with pytest.raises(ValueError, match="impl='cuda'"):
        attention(q, q, q, impl="cuda")


@pytest.mark.parametrize("n", [7, 5000])  # chunking itself: test_triton_cross_entropy.py
def test_linear_cross_entropy_matches_torch(n):
    torch.manual_seed(0)
    h = torch.randn(n, 24, requires_grad=True)
    w = torch.randn(50, 24, requires_grad=True)
    y = torch.randint(0, 50, (n,))
    y[::3] = -100
    loss = linear_cross_entropy(h, w, y)
    ref = F.cross_entropy(h @ w.T, y, ignore_index=-100)
    torch.testing.assert_close(loss, ref)
    g = torch.autograd.grad(loss, (h, w))
    g_ref = torch.autograd.grad(ref, (h, w))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


def test_linear_cross_entropy_z_loss():
    h, w, y = torch.randn(6, 8), torch.randn(11, 8), torch.randint(0, 11, (6,))
    logits = h @ w.T
    expected = F.cross_entropy(logits, y) + 1e-2 * (torch.logsumexp(logits, -1) ** 2).mean()
    torch.testing.assert_close(linear_cross_entropy(h, w, y, z_loss=1e-2), expected)
