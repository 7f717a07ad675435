"""The Triton linear cross-entropy (interpreted on CPU) equals the torch one: loss and gradients, with
bias, z-loss and ignored targets, on odd shapes; and the chunked torch path equals the unchunked one."""

import pytest
import torch
import torch.nn.functional as F

from mmar.kernels import cross_entropy, linear_cross_entropy, linear_cross_entropy_reference

pytest.importorskip("triton")


def problem(n=37, d=24, v=45, dtype=torch.float32, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(v, d, generator=g) / d**0.5).to(dtype).requires_grad_()
    b = torch.randn(v, generator=g).to(dtype).requires_grad_() if bias else None
    y = torch.randint(0, v, (n,), generator=g)
    y[::4] = -100
    return h, w, b, y


@pytest.mark.parametrize("bias,z_loss", [(False, 0.0), (True, 1e-2)])
def test_loss_and_gradients_match_torch(bias, z_loss):
    h, w, b, y = problem(bias=bias)
    inputs = [t for t in (h, w, b) if t is not None]
    loss = linear_cross_entropy(h, w, y, b, z_loss=z_loss, impl="triton")
    logits = F.linear(h, w, b)
    ref = F.cross_entropy(logits, y, ignore_index=-100)
    ref = ref + z_loss * (torch.logsumexp(logits, -1)[y != -100] ** 2).mean()
    torch.testing.assert_close(loss, ref)
    for got, want in zip(torch.autograd.grad(loss, inputs), torch.autograd.grad(ref, inputs)):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_fp16_inputs():
    h, w, _, y = problem(n=20, d=32, v=33, dtype=torch.float16, seed=1)
    loss = linear_cross_entropy(h, w, y, impl="triton")
    ref = F.cross_entropy(h.float() @ w.float().T, y)
    torch.testing.assert_close(loss, ref, atol=2e-3, rtol=2e-3)
    dh, dw = torch.autograd.grad(loss, (h, w))
    want_dh, want_dw = torch.autograd.grad(F.cross_entropy(h @ w.T, y), (h, w))
    torch.testing.assert_close(dh.float(), want_dh.float(), atol=2e-3, rtol=1e-2)
    torch.testing.assert_close(dw.float(), want_dw.float(), atol=2e-3, rtol=1e-2)


def test_chunked_torch_engine_equals_the_full_logits_reference(monkeypatch):
    monkeypatch.setattr(cross_entropy, "LOGITS_PER_CHUNK", 45 * 64)  # 64 rows per chunk: 5 chunks
    h, w, b, y = problem(n=300, bias=True)
    loss = linear_cross_entropy(h, w, y, b, z_loss=1e-3, impl="torch")
    ref = linear_cross_entropy_reference(h, w, y, b, z_loss=1e-3)
    torch.testing.assert_close(loss, ref)
    for got, want in zip(torch.autograd.grad(loss, (h, w, b)), torch.autograd.grad(ref, (h, w, b))):
        torch.testing.assert_close(got, want)


def test_mismatched_inputs_are_named():
    h, w, _, y = problem()
    with pytest.raises(ValueError, match="must share a float dtype"):
        linear_cross_entropy(h, w.double(), y, impl="triton")
    with pytest.raises(ValueError, match="must be"):
        linear_cross_entropy(h, w[:, :5], y)
