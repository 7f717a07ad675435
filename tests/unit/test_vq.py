"""VQTokenizer: encode/decode round trips, grid checks, export round trip, and its losses and metrics."""

from __future__ import annotations

import pytest
import torch

from mmar.errors import ConfigError
from mmar.eval.tokenizer_metrics import CodebookUsage, psnr
from tokenizers_visual import TOKENIZERS, VQTokenizer, load_tokenizer, read_tokenizer_config
from tokenizers_visual.losses import PatchDiscriminator, PerceptualLoss, hinge_d_loss, hinge_g_loss
from tokenizers_visual.nets import Decoder, Encoder

TINY = {"in_channels": 1, "ch": 8, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 8}


def tiny_vq(**overrides) -> VQTokenizer:
    torch.manual_seed(0)
    return VQTokenizer(**{**TINY, "codebook_size": 32, "codebook_dim": 4, **overrides})


def images(b: int = 4, c: int = 1, h: int = 16, w: int = 16) -> torch.Tensor:
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(1)) * 2 - 1  # [-1, 1]


def test_registered_and_attributes():
    tok = tiny_vq()
    assert TOKENIZERS["vq"] is VQTokenizer
    assert tok.kind == "discrete"
    assert tok.vocab_size == 32
    assert tok.downsample == 4
    assert tok.in_channels == 1


@pytest.mark.parametrize("ch_mult, factor", [([1], 1), ([1, 2], 2), ([1, 1, 2, 2], 8)])
def test_encoder_decoder_shapes(ch_mult, factor):
    enc = Encoder(3, ch=8, ch_mult=ch_mult, num_res_blocks=1, z_channels=5)
    dec = Decoder(3, ch=8, ch_mult=ch_mult, num_res_blocks=1, z_channels=5)
    x = images(2, 3, 16, 24)
    z = enc(x)
    assert z.shape == (2, 5, 16 // factor, 24 // factor)
    assert dec(z).shape == x.shape


def test_encode_decode_round_trip_shapes():
    tok = tiny_vq().eval()
    x = images(3, 1, 16, 24)
    ids = tok.encode(x)
    assert ids.shape == (3, 4, 6) == (3, *tok.grid((1, 16, 24)))
    assert ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < tok.vocab_size
    assert tok.decode(ids).shape == x.shape


def test_decode_of_encode_equals_forward_in_eval():
    tok = tiny_vq().eval()
    x = images()
    recon, ids, aux = tok(x)
    assert torch.equal(ids, tok.encode(x))
    torch.testing.assert_close(tok.decode(ids), recon, rtol=0, atol=0)
    assert float(aux) == 0.0


def test_training_forward_updates_codebook_and_gives_commitment_loss():
    tok = tiny_vq().train()
    before = tok.quantizer.codebook.clone()
    recon, ids, aux = tok(images())
    assert recon.shape == (4, 1, 16, 16) and ids.shape == (4, 4, 4)
    assert aux.ndim == 0 and float(aux.detach()) > 0
    assert not torch.equal(before, tok.quantizer.codebook)  # EMA update / dead-code re-seeding
    norms = tok.quantizer.codebook.norm(dim=-1)  # [V] <- l2-normalised codes
    torch.testing.assert_close(norms, torch.ones_like(norms))
    (recon.abs().mean() + aux).backward()
    assert tok.encoder.net[0].weight.grad is not None  # gradients reach the encoder through the VQ


def test_encode_does_not_update_codebook_in_train_mode():
    tok = tiny_vq().train()
    before = tok.quantizer.codebook.clone()
    tok.encode(images())
    assert torch.equal(before, tok.quantizer.codebook)


def test_quantiser_runs_in_fp32_under_autocast():
    tok = tiny_vq().eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recon, ids, _ = tok(images())
    assert ids.dtype == torch.long
    assert tok.quantizer.codebook.dtype == torch.float32
    assert recon.shape == (4, 1, 16, 16)


def test_perturb_latents_hook_feeds_the_decoder_in_forward_only():
    class AllCodeZero(VQTokenizer):  # a RobusTok-style subclass: replace every code by code 0
        def perturb_latents(self, z, zq, ids):
            assert z.shape == zq.shape == (4, 8, 4, 4) and ids.shape == (4, 4, 4)
            zero = torch.zeros_like(ids)
            return self.codes_from_ids(zero), zero

    torch.manual_seed(0)
    tok = AllCodeZero(**{**TINY, "codebook_size": 32, "codebook_dim": 4}).eval()
    x = images()
    recon, ids, _ = tok(x)
    assert torch.equal(ids, torch.zeros(4, 4, 4, dtype=torch.long))
    torch.testing.assert_close(recon, tok.decode(ids), rtol=0, atol=0)
    assert tok.encode(x).unique().numel() > 1  # encode bypasses the hook


def test_grid_errors_name_the_fix():
    tok = tiny_vq()
    with pytest.raises(ConfigError, match=r"3 channels.*expects 1"):
        tok.encode(images(2, 3, 16, 16))
    with pytest.raises(ConfigError, match=r"not divisible.*factor 4"):
        tok.encode(images(2, 1, 18, 16))
    with pytest.raises(ConfigError, match=r"\[B, C, H, W\]"):
        tok.encode(torch.zeros(1, 16, 16))


def test_decode_rejects_out_of_range_and_bad_ids():
    tok = tiny_vq()
    ids = torch.zeros(2, 4, 4, dtype=torch.long)
    ids[0, 0, 0] = 32
    with pytest.raises(ConfigError, match=r"\[0, 32\).*codebook_size"):
        tok.decode(ids)
    with pytest.raises(ConfigError, match=r"\[0, 32\)"):
        tok.decode(-torch.ones(1, 2, 2, dtype=torch.long))
    with pytest.raises(ConfigError, match="integer code ids"):
        tok.decode(torch.zeros(2, 4, 4))
    with pytest.raises(ConfigError, match=r"\[B, h, w\]"):
        tok.decode(torch.zeros(2, 16, dtype=torch.long))


def test_save_load_round_trip_is_bit_exact(tmp_path):
    tok = tiny_vq().train()
    tok(images())  # move the codebook and EMA buffers away from their initial values
    tok.eval()
    tok.save_pretrained(tmp_path)
    assert read_tokenizer_config(tmp_path) == {"name": "vq", **tok.config}
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, VQTokenizer) and not loaded.training
    ref, got = tok.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    x = images()
    assert torch.equal(tok.encode(x), loaded.encode(x))
    assert torch.equal(tok.decode(tok.encode(x)), loaded.decode(loaded.encode(x)))


def test_codebook_usage_counts_unique_codes_in_rolling_buffer():
    usage = CodebookUsage(codebook_size=10, buffer_size=6)
    assert usage.compute() == 0.0
    usage.update(torch.tensor([[1, 1], [2, 3]]))  # buffer: 1 1 2 3
    assert usage.compute() == pytest.approx(3 / 10)
    usage.update(torch.tensor([4, 4]))  # buffer full: 1 1 2 3 4 4
    assert usage.compute() == pytest.approx(4 / 10)
    usage.update(torch.tensor([5, 5, 5]))  # the oldest three (1 1 2) are forgotten: 3 4 4 5 5 5
    assert usage.compute() == pytest.approx(3 / 10)
    usage.update(torch.arange(10).repeat(2))  # longer than the buffer: only the last six (4..9) remain
    assert usage.compute() == pytest.approx(6 / 10)
    usage.reset()
    assert usage.compute() == 0.0


def test_codebook_usage_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    usage, history = CodebookUsage(codebook_size=50, buffer_size=37), []
    for n in [5, 13, 1, 40, 8, 22]:
        ids = torch.randint(0, 50, (n,), generator=gen)
        usage.update(ids)
        history += ids.tolist()
        assert usage.compute() == pytest.approx(len(set(history[-37:])) / 50)


def test_psnr_closed_form():
    x = torch.zeros(2, 1, 4, 4)
    assert float(psnr(x, x + 0.2)) == pytest.approx(10 * torch.log10(torch.tensor(4 / 0.04)).item(), rel=1e-5)
    assert float(psnr(x, x)) == pytest.approx(100.0)
    # per-image PSNR, then the mean: 20 dB for an image with MSE 0.04, 40 dB for one with MSE 4e-4
    y = torch.cat([x[:1] + 0.2, x[1:] + 0.02])
    assert float(psnr(x, y)) == pytest.approx((20 + 40) / 2, rel=1e-5)


def test_discriminator_output_shape_and_hinge_losses():
    disc = PatchDiscriminator(in_channels=1, ndf=8, n_layers=3)
    assert disc(images(2, 1, 32, 32)).shape == (2, 1, 2, 2)
    assert PatchDiscriminator(3, ndf=8, n_layers=2)(images(2, 3, 32, 32)).shape == (2, 1, 6, 6)
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.5 * (0.25 + 0.5))
    assert float(hinge_g_loss(fake)) == pytest.approx(1.0)


def test_perceptual_loss_random_backbone():
    pytest.importorskip("lpips")
    torch.manual_seed(0)
    loss = PerceptualLoss(pretrained=False)
    x = images(2, 1, 32, 32)
    assert float(loss(x, x)) == 0.0
    assert float(loss(x, images(2, 1, 32, 32).flip(-1))) > 0
    rgb = images(2, 3, 32, 32)
    assert float(loss(rgb, rgb.flip(-2))) > 0
    assert not any(p.requires_grad for p in loss.parameters())
    assert not loss.train().training  # always in eval mode


def test_perceptual_loss_without_lpips_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lpips", None)  # makes `import lpips` raise ImportError
    with pytest.raises(ConfigError, match=r'pip install "mmar\[perceptual\]"'):
        PerceptualLoss(pretrained=False)
