"""Residual VQ (VQTokenizer with num_quantizers > 1): the RVQ identity against a brute-force nearest-code
search, refinement with each level, [B, h, w, Q] tokens, export round trip, and num_quantizers=1 unchanged."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from vector_quantize_pytorch import ResidualVQ, VectorQuantize

from mmar.errors import ConfigError
from tokenizers_visual import VQTokenizer, load_tokenizer, read_tokenizer_config
from tokenizers_visual.base import CONFIG_NAME

TINY = {"in_channels": 1, "ch": 8, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 8}
Q = 3


def tiny_rvq(**overrides) -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(**{**TINY, "codebook_size": 32, "codebook_dim": 4, "num_quantizers": Q, **overrides})


def images(b: int = 4, c: int = 1, h: int = 16, w: int = 16) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(1)) * 2 - 1  # [-1, 1]


def fitted(tok: VQTokenizer, z: torch.Tensor, steps: int = 10) -> VQTokenizer:
    """The tokenizer after `steps` EMA codebook updates on the features z [B, Z, h, w], in eval mode."""
    tok.train()
    for _ in range(steps):
        tok.quantize(z)
    return tok.eval()


def test_attributes_and_token_shape():
    tok = tiny_rvq()
    assert isinstance(tok.quantizer, ResidualVQ) and len(tok.quantizer.layers) == Q
    assert tok.token_shape == (Q,) and tok.vocab_size == 32 and tok.config["num_quantizers"] == Q
    single = tiny_rvq(num_quantizers=1)
    assert isinstance(single.quantizer, VectorQuantize) and single.token_shape == ()


def test_single_quantizer_keeps_the_plain_vq_state_dict_keys():
    keys = [k for k in tiny_rvq(num_quantizers=1).state_dict() if k.startswith("quantizer.")]
    assert keys == [
        "quantizer.project_in.weight",
        "quantizer.project_in.bias",
        "quantizer.project_out.weight",
        "quantizer.project_out.bias",
        "quantizer._codebook.initted",
        "quantizer._codebook.cluster_size",
        "quantizer._codebook.embed_avg",
        "quantizer._codebook.embed",
    ]


def test_tokenizer_saved_before_num_quantizers_existed_still_loads(tmp_path):
    tok = tiny_rvq(num_quantizers=1).eval()
    tok.save_pretrained(tmp_path)
    config = read_tokenizer_config(tmp_path)
    del config["num_quantizers"]  # an export from before residual VQ
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    loaded = load_tokenizer(tmp_path)
    assert loaded.token_shape == () and loaded.config["num_quantizers"] == 1
    x = images()
    assert torch.equal(loaded.encode(x), tok.encode(x))


def test_tokens_are_b_h_w_q_and_decode_of_encode_equals_forward():
    tok = tiny_rvq().eval()
    x = images(3, 1, 16, 24)
    ids = tok.encode(x)
    assert ids.shape == (3, 4, 6, Q) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < 32
    recon, fwd_ids, aux = tok(x)
    assert torch.equal(ids, fwd_ids) and float(aux) == 0.0
    torch.testing.assert_close(tok.decode(ids), recon, rtol=0, atol=0)
    assert recon.shape == x.shape


def test_rvq_identity_against_brute_force_nearest_codes():
    """Level q picks the code closest in angle to the residual r_q; the output is proj(c_1 + ... + c_Q)."""
    tok = tiny_rvq()
    z = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(3))  # [B, Z, h, w]
    fitted(tok, z)
    zq, ids, _ = tok.quantize(z)  # [B, Z, h, w], [B, h, w, Q]
    rvq = tok.quantizer
    x = rvq.project_in(rearrange(z, "b d h w -> b h w d"))  # [B, h, w, d]
    residual, total = x, torch.zeros_like(x)
    for q, layer in enumerate(rvq.layers):
        codebook = layer.codebook  # [V, d], unit norm (l2-normalised codes)
        torch.testing.assert_close(codebook.norm(dim=-1), torch.ones(32))
        cosine = F.normalize(residual, dim=-1) @ codebook.T  # [B, h, w, V]
        assert torch.equal(ids[..., q], cosine.argmax(dim=-1)), f"level {q} is not the nearest code"
        code = codebook[ids[..., q]]  # [B, h, w, d]
        residual, total = residual - code, total + code
    torch.testing.assert_close(x - residual, total)  # x = c_1 + ... + c_Q + r_Q
    torch.testing.assert_close(zq, rearrange(rvq.project_out(total), "b h w d -> b d h w"))
    torch.testing.assert_close(tok.codes_from_ids(ids), zq, rtol=0, atol=1e-6)


@torch.no_grad()
def latent_errors(tok: VQTokenizer, z: torch.Tensor) -> list[float]:
    """Mean squared error ||x - (c_1 + ... + c_q)||^2 of the projected latents x, for q = 0 .. Q."""
    _, ids, _ = tok.quantize(z)
    residual = tok.quantizer.project_in(rearrange(z, "b d h w -> b h w d"))  # [B, h, w, d]
    errors = [float(residual.pow(2).sum(-1).mean())]
    for q, layer in enumerate(tok.quantizer.layers):
        step = residual - layer.codebook[ids[..., q]]  # [B, h, w, d]
        # each level adds a unit code c: ||r - c||^2 = ||r||^2 - 2 r.c + 1 (it refines where r.c > 1/2)
        expected = residual.pow(2).sum(-1) - 2 * (residual * (residual - step)).sum(-1) + 1
        torch.testing.assert_close(step.pow(2).sum(-1), expected, rtol=1e-5, atol=1e-5)
        residual = step
        errors.append(float(residual.pow(2).sum(-1).mean()))
    return errors


def test_latent_error_decreases_with_each_added_quantizer():
    """On a fixed input with codebooks fitted to it, every level refines the latents.

    Each level adds a unit-norm code, so the latents must be long enough for Q unit steps: trained
    encoders learn that (the digits RVQ with Q = 2 has mean latent norm ~3.3); here the projected
    latents have norm ~2.2 for Q = 3, while on norm ~1 inputs level 2 already overshoots.
    """
    tok = tiny_rvq()
    z = 2 * torch.randn(4, 8, 8, 8, generator=torch.Generator().manual_seed(0))  # [B, Z, h, w]
    errors = latent_errors(fitted(tok, z), z)
    assert all(later <= earlier for earlier, later in itertools.pairwise(errors)), errors
    assert errors[-1] < 0.2 * errors[0], errors  # and not by a hair: three levels remove > 80%


def test_training_forward_updates_every_codebook_and_sums_the_commitment_losses():
    tok = tiny_rvq().train()
    before = [layer.codebook.clone() for layer in tok.quantizer.layers]
    recon, ids, aux = tok(images())
    assert recon.shape == (4, 1, 16, 16) and ids.shape == (4, 4, 4, Q)
    assert aux.ndim == 0 and float(aux.detach()) > 0
    for q, layer in enumerate(tok.quantizer.layers):
        assert not torch.equal(before[q], layer.codebook), f"codebook {q} was not updated"
    (recon.abs().mean() + aux).backward()
    assert tok.encoder.net[0].weight.grad is not None


def test_encode_does_not_update_codebooks_in_train_mode():
    tok = tiny_rvq().train()
    tok(images())  # initialise the codebooks from data
    before = [layer.codebook.clone() for layer in tok.quantizer.layers]
    tok.encode(images(4, 1, 16, 16).flip(-1))
    for q, layer in enumerate(tok.quantizer.layers):
        assert torch.equal(before[q], layer.codebook)


def test_quantiser_runs_in_fp32_under_autocast():
    tok = tiny_rvq().eval()
    z = torch.randn(2, 8, 4, 4, generator=torch.Generator().manual_seed(4))
    zq, ids, _ = tok.quantize(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        zq_bf16, ids_bf16, _ = tok.quantize(z)
        decoded = tok.codes_from_ids(ids)
    assert zq_bf16.dtype == decoded.dtype == torch.float32
    assert torch.equal(ids_bf16, ids)
    torch.testing.assert_close(zq_bf16, zq, rtol=0, atol=0)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    tok = tiny_rvq().train()
    tok(images())
    tok.eval().save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded.quantizer, ResidualVQ) and loaded.token_shape == (Q,)
    ref, got = tok.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    x = images()
    assert torch.equal(tok.encode(x), loaded.encode(x))
    assert torch.equal(tok.decode(tok.encode(x)), loaded.decode(loaded.encode(x)))


def test_decode_rejects_ids_without_the_level_axis_or_out_of_range():
    tok = tiny_rvq()
    with pytest.raises(ConfigError, match=r"shape \[B, h, w, 3\]"):
        tok.decode(torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match=r"shape \[B, h, w, 3\]"):
        tok.decode(torch.zeros(2, 4, 4, 2, dtype=torch.long))
    ids = torch.zeros(2, 4, 4, Q, dtype=torch.long)
    ids[0, 1, 2, 2] = 32
    with pytest.raises(ConfigError, match=r"\[0, 32\).*codebook_size=32"):
        tok.decode(ids)


@pytest.mark.parametrize("num_quantizers", [0, -2])
def test_bad_num_quantizers_names_the_field(num_quantizers):
    with pytest.raises(ConfigError, match="num_quantizers must be >= 1"):
        tiny_rvq(num_quantizers=num_quantizers)
