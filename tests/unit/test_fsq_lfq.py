"""FSQTokenizer and LFQTokenizer: the id <-> code maps against brute force, the FSQ grid, the LFQ losses in
closed form, fp32 quantisation under autocast, export round trips and bad-input errors."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmar.errors import ConfigError
from mmar.lit.tokenizer_module import build_tokenizer
from tokenizers_visual import TOKENIZERS, FSQTokenizer, LFQTokenizer, load_tokenizer, read_tokenizer_config

TINY = {"in_channels": 1, "ch": 8, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 8}


def tiny_fsq(**overrides) -> FSQTokenizer:
    torch.manual_seed(0)
    return FSQTokenizer(**{**TINY, "levels": [8, 5, 5, 5], **overrides})


def tiny_lfq(**overrides) -> LFQTokenizer:
    torch.manual_seed(0)
    return LFQTokenizer(**{**TINY, "bits": 6, **overrides})


def images(b: int = 4, c: int = 1, h: int = 16, w: int = 16) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(1)) * 2 - 1  # [-1, 1]


def features(b: int, d: int, h: int, w: int, scale: float = 2.0, seed: int = 2) -> torch.Tensor:
    return torch.randn(b, d, h, w, generator=torch.Generator().manual_seed(seed)) * scale  # [B, D, h, w]


def fsq_grid(level: int) -> torch.Tensor:
    """The FSQ paper's values of one dimension: k / (L // 2) for the integers k in [-(L // 2), L - L // 2)."""
    return (torch.arange(level, dtype=torch.float32) - level // 2) / (level // 2)


def fsq_preimage(codes: torch.Tensor, levels: list[int], eps: float = 1e-3) -> torch.Tensor:
    """Features [..., d] that FSQ's bound, tanh(z + shift) * half_l - offset, maps exactly to `codes`."""
    lv = torch.tensor(levels, dtype=torch.float64)
    half_l = (lv - 1) * (1 + eps) / 2
    offset = torch.where(lv % 2 == 0, 0.5, 0.0)
    shift = torch.atanh(offset / half_l)
    target = codes.double() * (lv // 2)  # the integer the bound must round to
    return (torch.atanh((target + offset) / half_l) - shift).float()


def test_registered_vocab_and_attributes():
    assert TOKENIZERS["fsq"] is FSQTokenizer and TOKENIZERS["lfq"] is LFQTokenizer
    fsq, lfq = tiny_fsq(), tiny_lfq()
    assert fsq.vocab_size == 1000 and lfq.vocab_size == 64
    for tok in (fsq, lfq):
        assert tok.kind == "discrete" and tok.token_shape == () and tok.downsample == 4
    assert isinstance(build_tokenizer({"name": "fsq", **TINY, "levels": [5, 3]}), FSQTokenizer)
    assert build_tokenizer({"name": "lfq", **TINY, "bits": 3}).vocab_size == 8


@pytest.mark.parametrize("levels", [[3, 4, 5], [8, 6, 5], [4, 4]])
def test_fsq_ids_and_codes_are_a_bijection_over_the_vocabulary(levels):
    tok = tiny_fsq(levels=levels, z_channels=len(levels)).eval()  # no projection: codes are the grid
    vocab = math.prod(levels)
    ids = torch.arange(vocab).view(1, 1, vocab)  # [1, 1, V]: every id once
    codes = tok.codes_from_ids(ids)  # [1, d, 1, V]
    flat = codes[0, :, 0].T  # [V, d]
    assert flat.unique(dim=0).shape[0] == vocab  # distinct codes
    # the codes are exactly the grid of the paper, each grid point once, ids in mixed radix (first digit
    # least significant), as a brute-force enumeration gives them
    grid = [fsq_grid(level) for level in levels]
    brute = torch.tensor([list(reversed(p)) for p in itertools.product(*reversed(grid))])  # [V, d]
    torch.testing.assert_close(flat, brute, rtol=0, atol=0)
    # every code re-quantises to itself and to its own id through the tokenizer's quantiser
    zq, again, aux = tok.quantize(fsq_preimage(flat, levels).T.reshape(1, len(levels), 1, vocab))
    assert torch.equal(again, ids)
    torch.testing.assert_close(zq, codes, rtol=0, atol=1e-6)
    assert float(aux) == 0.0


def test_fsq_quantised_values_lie_on_the_level_grid_and_ids_follow_mixed_radix():
    levels = [8, 5, 3]
    tok = tiny_fsq(levels=levels, z_channels=3).eval()
    zq, ids, _ = tok.quantize(features(2, 3, 5, 7))  # [2, 3, 5, 7], [2, 5, 7]
    digits = []
    for i, level in enumerate(levels):
        values = zq[:, i]  # [2, 5, 7]
        on_grid = (values.unsqueeze(-1) - fsq_grid(level)).abs().min(dim=-1).values
        assert float(on_grid.max()) < 1e-6, f"dimension {i} leaves its grid"
        digits.append(torch.round(values * (level // 2) + level // 2).long())  # in [0, L)
    expected = digits[0] + levels[0] * (digits[1] + levels[1] * digits[2])
    assert torch.equal(ids, expected)
    assert len(ids.unique()) > 10  # the test input spreads over the grid


def test_fsq_round_trip_shapes_and_forward_equals_decode_of_encode():
    tok = tiny_fsq().eval()
    x = images(3, 1, 16, 24)
    ids = tok.encode(x)
    assert ids.shape == (3, 4, 6) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < 1000
    recon, fwd_ids, aux = tok(x)
    assert torch.equal(ids, fwd_ids) and float(aux) == 0.0
    torch.testing.assert_close(tok.decode(ids), recon, rtol=0, atol=0)
    assert recon.shape == x.shape


def test_fsq_training_has_zero_aux_and_straight_through_gradients():
    tok = tiny_fsq().train()
    recon, _, aux = tok(images())
    assert aux.ndim == 0 and float(aux) == 0.0
    recon.abs().mean().backward()
    grad = tok.encoder.net[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def lfq_id(signs: torch.Tensor) -> int:
    """Brute force: the sign vector read as a binary number, first dimension most significant."""
    return int("".join("1" if float(s) > 0 else "0" for s in signs), 2)


def test_lfq_codes_are_sign_vectors_and_ids_their_binary_numbers():
    bits = 5
    tok = tiny_lfq(bits=bits, z_channels=bits).eval()  # no projection: codes are the sign vectors
    z = features(2, bits, 4, 3)  # [2, 5, 4, 3]
    zq, ids, aux = tok.quantize(z)
    torch.testing.assert_close(zq, torch.where(z > 0, 1.0, -1.0), rtol=0, atol=0)
    for b, i, j in itertools.product(range(2), range(4), range(3)):
        assert int(ids[b, i, j]) == lfq_id(zq[b, :, i, j])
    assert float(aux) == 0.0  # eval mode
    # all 2^bits ids: distinct sign vectors, each the binary expansion of its id, quantised back to it
    all_ids = torch.arange(2**bits).view(1, 1, -1)  # [1, 1, 32]
    codes = tok.codes_from_ids(all_ids)  # [1, 5, 1, 32]
    assert set(codes.unique().tolist()) == {-1.0, 1.0}
    assert [lfq_id(codes[0, :, 0, k]) for k in range(2**bits)] == list(range(2**bits))
    assert torch.equal(tok.quantize(codes)[1], all_ids)


def test_lfq_commitment_loss_closed_form():
    bits = 4
    tok = tiny_lfq(bits=bits, z_channels=bits, entropy_weight=0.0, commitment_weight=1.0).train()
    z = features(2, bits, 3, 3, scale=0.7)
    _, _, aux = tok.quantize(z)
    expected = (z - torch.where(z > 0, 1.0, -1.0)).pow(2).mean()
    torch.testing.assert_close(aux, expected)


def test_lfq_entropy_loss_matches_brute_force():
    bits, gamma, inv_temperature = 3, 0.7, 100.0  # vector_quantize_pytorch's default temperature
    tok = tiny_lfq(
        bits=bits, z_channels=bits, entropy_weight=1.0, commitment_weight=0.0, diversity_gamma=gamma
    )
    z = features(2, bits, 3, 4, scale=0.01)  # small: soft code probabilities, both entropies matter
    _, _, aux = tok.train().quantize(z)
    tokens = z.permute(0, 2, 3, 1).reshape(-1, bits)  # [N, bits]
    codebook = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=bits)))  # [8, bits]
    probs = (2 * inv_temperature * tokens @ codebook.T).softmax(dim=-1)  # [N, 8]: softmax(-||z - c||^2 / T)

    def entropy(p: torch.Tensor) -> torch.Tensor:
        return -(p * p.clamp_min(1e-5).log()).sum(dim=-1)

    expected = entropy(probs).mean() - gamma * entropy(probs.mean(dim=0))
    torch.testing.assert_close(aux, expected)


def test_lfq_aux_loss_is_finite_and_differentiable():
    tok = tiny_lfq(bits=4).train()  # projection 8 -> 4 channels
    recon, ids, aux = tok(images())
    assert recon.shape == (4, 1, 16, 16) and ids.shape == (4, 4, 4)
    assert aux.ndim == 0 and torch.isfinite(aux) and aux.requires_grad
    aux.backward()
    for param in (tok.encoder.net[0].weight, tok.quantizer.project_in.weight):
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0


def test_lfq_round_trip_shapes_and_forward_equals_decode_of_encode():
    tok = tiny_lfq().eval()
    x = images(3, 1, 16, 24)
    ids = tok.encode(x)
    assert ids.shape == (3, 4, 6) and int(ids.max()) < 64
    recon, fwd_ids, _ = tok(x)
    assert torch.equal(ids, fwd_ids)
    torch.testing.assert_close(tok.decode(ids), recon, rtol=0, atol=0)


@pytest.mark.parametrize("make", [tiny_fsq, tiny_lfq], ids=["fsq", "lfq"])
def test_quantiser_runs_in_fp32_under_autocast(make):
    tok = make().eval()
    z = features(2, 8, 8, 8)
    zq, ids, _ = tok.quantize(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        zq_bf16, ids_bf16, _ = tok.quantize(z)
        decoded = tok.codes_from_ids(ids)
    assert zq_bf16.dtype == torch.float32 and decoded.dtype == torch.float32
    assert torch.equal(ids_bf16, ids)  # a bf16 projection would move some features across a boundary
    torch.testing.assert_close(zq_bf16, zq, rtol=0, atol=0)


@pytest.mark.parametrize("make", [tiny_fsq, tiny_lfq], ids=["fsq", "lfq"])
def test_save_load_round_trip_is_bit_exact(make, tmp_path):
    tok = make().train()
    tok(images())
    tok.eval().save_pretrained(tmp_path)
    assert read_tokenizer_config(tmp_path) == {"name": tok.name, **tok.config}
    loaded = load_tokenizer(tmp_path)
    assert type(loaded) is type(tok) and not loaded.training
    ref, got = tok.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    x = images()
    assert torch.equal(tok.encode(x), loaded.encode(x))
    assert torch.equal(tok.decode(tok.encode(x)), loaded.decode(loaded.encode(x)))


@pytest.mark.parametrize("levels", [[], [8, 1], [2, 5], [0]])
def test_bad_levels_name_the_field(levels):
    with pytest.raises(
        ConfigError, match=r"levels must be a non-empty list of integers >= 3.*\[8, 5, 5, 5\]"
    ):
        tiny_fsq(levels=levels)


@pytest.mark.parametrize("bits", [0, -3, 2.5])
def test_bad_bits_name_the_field(bits):
    with pytest.raises(ConfigError, match=r"bits must be an integer >= 1"):
        tiny_lfq(bits=bits)


@pytest.mark.parametrize(
    "make, vocab, field", [(tiny_fsq, 1000, "levels"), (tiny_lfq, 64, "bits")], ids=["fsq", "lfq"]
)
def test_decode_rejects_out_of_range_and_bad_ids(make, vocab, field):
    tok = make()
    ids = torch.zeros(2, 4, 4, dtype=torch.long)
    ids[1, 2, 3] = vocab
    with pytest.raises(ConfigError, match=rf"\[0, {vocab}\) for this tokenizer \({field}="):
        tok.decode(ids)
    with pytest.raises(ConfigError, match=rf"\[0, {vocab}\)"):
        tok.decode(-torch.ones(1, 2, 2, dtype=torch.long))
    with pytest.raises(ConfigError, match="integer code ids"):
        tok.decode(torch.zeros(2, 4, 4))
    with pytest.raises(ConfigError, match=r"\[B, h, w\]"):
        tok.decode(torch.zeros(2, 4, 4, 1, dtype=torch.long))
