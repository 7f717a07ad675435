"""A padded condition prefix never leaks into attention: with `KeyPadding`, every kernel path (torch
reference, Triton forward/backward, Triton split-KV decode) gives on the real tokens exactly what the
unpadded sequence gives, and padded keys get no gradient."""

import pytest
import torch

from mmar.kernels import BlockCausal, Causal, KeyPadding, Prefix, attention

pytest.importorskip("triton")

N_COND, N_IMG = 6, 15  # 21 positions: two 16-row Triton blocks in the interpreter, the second ragged
VALID = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 1, 1]], dtype=torch.bool)  # left-padded captions


def base_mask(name: str, n_cond: int):
    """The unit masks over `[n_cond condition tokens, N_IMG tokens]`."""
    ids = torch.cat([torch.arange(n_cond), n_cond + torch.arange(N_IMG) // 4])
    return {"none": None, "causal": Causal(), "prefix": Prefix(n_cond), "block_causal": BlockCausal(ids)}[
        name
    ]


def qkv(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    shape = (2, 2, N_COND + N_IMG, 16)
    return [torch.randn(shape, generator=g).to(dtype).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("impl", ["torch", "triton"])
@pytest.mark.parametrize("name", ["none", "causal", "prefix", "block_causal"])
def test_padded_equals_unpadded_forward_and_gradients(impl, name):
    q, k, v = qkv()
    out = attention(q, k, v, KeyPadding(base_mask(name, N_COND), VALID), impl=impl)
    real = torch.cat([VALID, torch.ones(2, N_IMG, dtype=torch.bool)], dim=1)  # (B, T)
    grad = torch.randn_like(out) * real[:, None, :, None]  # padded rows' outputs are never read
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), grad)
    for b in range(2):
        keep = torch.cat([VALID[b], torch.ones(N_IMG, dtype=torch.bool)])  # (T,) the real positions
        qb, kb, vb = (t.detach()[b : b + 1, :, keep].requires_grad_() for t in (q, k, v))
        ref = attention(qb, kb, vb, base_mask(name, int(VALID[b].sum())), impl="torch")
        want = torch.autograd.grad(ref, (qb, kb, vb), grad[b : b + 1, :, keep])
        torch.testing.assert_close(out[b : b + 1, :, keep], ref, atol=1e-5, rtol=1e-5)
        for got, expected in zip((dq, dk, dv), want):
            torch.testing.assert_close(got[b : b + 1, :, keep], expected, atol=1e-5, rtol=1e-5)
        assert dk[b, :, ~keep].abs().max() == 0 and dv[b, :, ~keep].abs().max() == 0  # never attended


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_padded_decode_step_equals_unpadded(impl):
    q, k, v = (t.detach() for t in qkv())
    last = N_COND + N_IMG - 1
    with torch.no_grad():
        out = attention(q[:, :, last:], k, v, KeyPadding(Causal(), VALID), q_offset=last, impl=impl)
        for b in range(2):
            keep = torch.cat([VALID[b], torch.ones(N_IMG, dtype=torch.bool)])
            shift = int((~VALID[b]).sum())
            ref = attention(
                q[b : b + 1, :, last:],
                k[b : b + 1, :, keep],
                v[b : b + 1, :, keep],
                Causal(),
                q_offset=last - shift,
                impl="torch",
            )
            torch.testing.assert_close(out[b : b + 1], ref, atol=1e-5, rtol=1e-5)


def test_fp16_triton_matches_fp16_torch():
    q, k, v = (t.detach() for t in qkv(torch.float16))
    mask = KeyPadding(Causal(), VALID)
    torch.testing.assert_close(
        attention(q, k, v, mask, impl="triton").float(),
        attention(q.float(), k.float(), v.float(), mask, impl="torch"),
        atol=2e-3,
        rtol=2e-3,
    )
