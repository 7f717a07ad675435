"""RobusTok: nearest-code perturbation (exact shares, only within top-delta), annealing, the robust VQ
tokenizer's training-only perturbation, and the perturbed Fréchet distance."""

from __future__ import annotations

import pytest
import torch

from mmar.errors import ConfigError
from mmar.eval.tokenizer_metrics import perturbed_fd, reconstruction_fd
from tokenizers_visual import TOKENIZERS, RobustVQTokenizer, VQTokenizer, load_tokenizer
from tokenizers_visual.robust_vq import annealed, nearest_codes, perturb_ids

TINY = {"in_channels": 1, "ch": 8, "ch_mult": [1, 2, 2], "num_res_blocks": 1, "z_channels": 8}
TINY_CODES = {"codebook_size": 64, "codebook_dim": 4}


def tiny_robust(**overrides) -> RobustVQTokenizer:
    torch.manual_seed(0)
    return RobustVQTokenizer(**{**TINY, **TINY_CODES, **overrides})


def images(b: int = 4) -> torch.Tensor:
    return torch.rand(b, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_nearest_codes_are_the_top_delta_by_cosine_similarity_excluding_itself():
    codebook = torch.randn(20, 5, generator=torch.Generator().manual_seed(0))
    got = nearest_codes(codebook, 4)  # (20, 4)
    unit = codebook / codebook.norm(dim=-1, keepdim=True)
    for k in range(20):
        sims = [(float(unit[k] @ unit[j]), j) for j in range(20) if j != k]  # brute force
        assert set(got[k].tolist()) == {j for _, j in sorted(sims, reverse=True)[:4]}


@pytest.mark.parametrize("alpha, beta", [(0.25, 0.5), (1.0, 1.0), (0.1, 0.3), (0.0, 1.0)])
def test_perturbation_touches_exactly_the_configured_shares_within_top_delta(alpha, beta):
    b, h, w, k, delta = 10, 6, 6, 40, 3
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(k, (b, h, w), generator=generator)
    neighbours = nearest_codes(torch.randn(k, 6, generator=generator), delta)
    new, mask = perturb_ids(ids, neighbours, alpha, beta, generator)
    assert torch.equal(new != ids, mask)  # a replacement is never the code itself
    per_image = mask.flatten(1).sum(1)  # (B,)
    assert int((per_image > 0).sum()) == (round(beta * b) if round(alpha * h * w) else 0)
    assert set(per_image.tolist()) <= {0, round(alpha * h * w)}
    old, replaced = ids[mask], new[mask]
    assert all(r in neighbours[o].tolist() for o, r in zip(old.tolist(), replaced.tolist()))


def test_replacements_are_uniform_over_the_neighbours():
    neighbours = torch.tensor([[1, 2, 3, 4], [0, 2, 3, 4]])
    ids = torch.zeros(1, 100, 100, dtype=torch.long)
    new, _ = perturb_ids(ids, neighbours, 1.0, 1.0, torch.Generator().manual_seed(0))
    counts = torch.bincount(new.flatten(), minlength=5)[1:].float()  # 10,000 draws over 4 codes
    chi2 = float(((counts - 2500) ** 2 / 2500).sum())
    assert counts.sum() == 10_000 and chi2 < 16.3  # chi-square, 3 dof, p = 0.001


def test_annealing_is_linear_between_its_fractions():
    assert annealed(0.5, 0.1, 0.0, 0.2, 0.6) == 0.5
    assert annealed(0.5, 0.1, 0.2, 0.2, 0.6) == 0.5
    assert annealed(0.5, 0.1, 0.4, 0.2, 0.6) == pytest.approx(0.3)
    assert annealed(0.5, 0.1, 0.9, 0.2, 0.6) == pytest.approx(0.1)
    tok = tiny_robust(alpha=0.5, alpha_end=0.1, delta=9, delta_end=1)
    assert tok.perturbation(0.0) == (0.5, 9) and tok.perturbation(0.5) == (pytest.approx(0.3), 5)
    tok.set_progress(1.0)
    assert tok.perturbation() == (pytest.approx(0.1), 1)


def test_training_forward_perturbs_the_decoder_input_only():
    # decay 1 and no dead-code re-seeding: the training forward leaves the codebook as it is
    frozen = {"decay": 1.0, "threshold_ema_dead_code": 0.0}
    tok = tiny_robust(alpha=1.0, alpha_end=1.0, beta=1.0, delta=2, delta_end=2, **frozen)
    plain = VQTokenizer(**TINY, **TINY_CODES, **frozen)
    plain.load_state_dict(tok.state_dict())
    x = images()
    tok.eval()
    recon_eval, ids_eval, _ = tok(x)
    torch.testing.assert_close(recon_eval, plain.eval()(x)[0], rtol=0, atol=0)  # eval: plain VQ
    tok.train()
    recon, ids, _ = tok(x)
    assert torch.equal(ids, ids_eval)  # forward reports the tokens the encoder chose
    assert not torch.allclose(recon, recon_eval)  # ... but the decoder saw perturbed ones
    assert torch.equal(tok.encode(x), ids_eval)  # encode never perturbs
    recon.mean().backward()  # every token was replaced: no gradient reaches the encoder through them
    assert all(p.grad is None or not p.grad.any() for p in tok.encoder.parameters())
    assert any(p.grad is not None and p.grad.any() for p in tok.decoder.parameters())


def test_save_load_round_trip_is_bit_exact(tmp_path):
    tok = tiny_robust(alpha=0.3, delta=5, anneal_end=0.5)
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert TOKENIZERS["robust_vq"] is RobustVQTokenizer and isinstance(loaded, RobustVQTokenizer)
    assert loaded.schedule == tok.schedule
    for (k, a), (_, b) in zip(tok.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    x = images()
    assert torch.equal(loaded.decode(loaded.encode(x)), tok.eval().decode(tok.encode(x)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 1.5}, r"alpha=1.5 must lie in \[0, 1\]"),
        ({"beta": -0.1}, r"beta=-0.1 must lie in \[0, 1\]"),
        ({"delta": 64}, r"delta=64 must be an integer in \[1, codebook_size=64\)"),
        ({"delta_end": 0}, r"delta_end=0 must be an integer"),
        ({"anneal_start": 0.8, "anneal_end": 0.2}, r"anneal_start <= anneal_end"),
        ({"num_quantizers": 2}, r"perturbs one codebook"),
    ],
)
def test_bad_settings_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        tiny_robust(**kwargs)


def test_perturbed_fd_without_perturbation_is_the_reconstruction_fd():
    tok = tiny_robust().eval()
    x = images(32)
    features = lambda imgs: imgs.flatten(1)[:, ::16]  # a fixed 16-d feature map
    recon = tok.decode(tok.encode(x)).clamp(-1, 1)
    assert perturbed_fd(tok, features, x, 0.0, 3) == pytest.approx(reconstruction_fd(features, x, recon))
    once, again = (perturbed_fd(tok, features, x, 0.5, 3, seed=1) for _ in range(2))
    assert once == again  # seeded
    with pytest.raises(ValueError, match="single-codebook VQ"):
        perturbed_fd(VQTokenizer(**TINY, **TINY_CODES, num_quantizers=2), features, x, 0.5, 3)
