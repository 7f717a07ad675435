"""The fused Triton sampler (interpreted on CPU) keeps exactly the reference's support and draws from
the reference's distribution."""

import pytest
import torch
from scipy.stats import chi2

from mmar.kernels import filter_logits, sample, sample_reference
from mmar.kernels.sample import MAX_VOCAB

triton_sample = pytest.importorskip("mmar.kernels.triton_sample")


def logits_rows(rows=6, vocab=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    cond, uncond = torch.randn(rows, vocab, generator=g) * 2, torch.randn(rows, vocab, generator=g)
    if rows > 1:
        cond[0, :6] = cond[0, :6].max()  # a tie at the top
        cond[1, 10:20] = -float("inf")  # tokens a unit has ruled out
    return cond, uncond


@pytest.mark.parametrize("top_k,top_p,min_p", [(5, 1.0, 0.0), (0, 0.6, 0.0), (0, 1.0, 0.2), (7, 0.8, 0.05)])
def test_support_equals_reference_exactly(top_k, top_p, min_p):
    cond, uncond = logits_rows()
    scale = torch.linspace(1.0, 3.0, 6)
    mixed = uncond + scale[:, None] * (cond - uncond)
    mixed[1, 10:20] = -float("inf")
    want = filter_logits(mixed / 0.8, top_k, top_p, min_p)
    got = torch.empty_like(want)
    ids = triton_sample.sample(cond, uncond, scale, 0.8, top_k, top_p, min_p, seed=3, filtered=got)
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))
    torch.testing.assert_close(got[torch.isfinite(got)], want[torch.isfinite(want)])
    assert torch.isfinite(want.gather(1, ids[:, None])).all()


def test_draws_follow_the_reference_distribution():
    cond, uncond = logits_rows(rows=1, vocab=6, seed=4)
    n = 1000
    probs = filter_logits((uncond + 2.0 * (cond - uncond)) / 1.3, min_p=0.02).softmax(-1)[0]
    ids = sample(
        cond.expand(n, -1), uncond.expand(n, -1), 2.0, temperature=1.3, min_p=0.02,
        generator=torch.Generator().manual_seed(0), impl="triton",
    )  # fmt: skip
    counts = torch.bincount(ids, minlength=6).double()
    support = probs > 0
    assert counts[~support].sum() == 0
    expected = n * probs[support].double()
    statistic = ((counts[support] - expected) ** 2 / expected).sum().item()
    assert statistic < chi2.ppf(0.999, int(support.sum()) - 1)


def test_seeded_draws_repeat_and_greedy_is_argmax():
    cond, _ = logits_rows(rows=3)
    a = sample(cond, top_k=4, generator=torch.Generator().manual_seed(7), impl="triton")
    b = sample(cond, top_k=4, generator=torch.Generator().manual_seed(7), impl="triton")
    assert torch.equal(a, b)
    assert torch.equal(sample(cond, temperature=0, impl="triton"), cond.argmax(-1))


def test_reference_keeps_ties_together_under_top_p():
    logits = torch.tensor([[1.0, 1.0, 1.0, -5.0]])  # each tied token alone holds ~1/3 of the mass
    kept = torch.isfinite(filter_logits(logits, top_p=0.2))
    assert kept.tolist() == [[True, True, True, False]]
    ids = sample_reference(logits.expand(50, -1), top_p=0.2, generator=torch.Generator().manual_seed(0))
    assert set(ids.tolist()) <= {0, 1, 2}


def test_too_wide_vocabulary_is_refused_by_name():
    wide = torch.zeros(1, MAX_VOCAB + 1)
    with pytest.raises(ValueError, match="vocabulary"):
        sample(wide, impl="triton")
    assert sample(wide, impl="auto").shape == (1,)
