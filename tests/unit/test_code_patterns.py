"""Code patterns (MusicGen's flattening and delay interleaving) and the parallel head that reads them."""

import pytest
import torch
import torch.nn.functional as F

from mmar.code_patterns import EMPTY, CodePattern
from mmar.errors import ConfigError
from mmar.heads import ParallelCategoricalHead
from mmar.sampling import Sampler


@pytest.mark.parametrize("name", ["stack", "flatten", "delay"])
def test_patterns_round_trip_exactly(name):
    codes = torch.randint(0, 16, (3, 7, 4))
    pattern = CodePattern(name, (4,))
    tokens = pattern.apply(codes)
    grid, token_shape = pattern.grid((7,))
    assert tuple(tokens.shape[1:]) == (*grid, *token_shape)
    assert torch.equal(pattern.revert(tokens), codes)


def test_delay_puts_level_q_of_frame_t_in_cell_t_plus_q():
    frames, levels = 5, 3
    codes = torch.arange(frames * levels).view(1, frames, levels)
    tokens = CodePattern("delay", (levels,)).apply(codes)[0]  # (T + Q - 1, Q)
    assert tokens.shape == (frames + levels - 1, levels)
    for s in range(frames + levels - 1):
        for q in range(levels):
            t = s - q
            expected = codes[0, t, q].item() if 0 <= t < frames else EMPTY
            assert tokens[s, q].item() == expected
    assert (tokens == EMPTY).sum().item() == levels * (levels - 1)


def test_flatten_is_frame_major_then_level():
    codes = torch.arange(12).view(1, 4, 3)
    tokens = CodePattern("flatten", (3,)).apply(codes)
    assert CodePattern("flatten", (3,)).grid((4,)) == ((4, 3), ())
    assert tokens.flatten(1).tolist() == [list(range(12))]  # raster order over (frame, level)


def test_delay_prefix_and_fixed_cells():
    pattern = CodePattern("delay", (3,))
    codes = torch.randint(0, 16, (2, 6, 3))
    for k in (1, 3, 5):  # cells before k only hold codes of frames before k: the prefix is self-contained
        assert torch.equal(pattern.prefix(codes[:, :k]), pattern.apply(codes)[:, :k])
    values, mask = pattern.fixed(6)
    assert mask.shape == (1, 8, 3)
    assert torch.equal(mask[0], pattern.apply(codes)[0] == EMPTY)
    assert (values[mask] == EMPTY).all()
    assert CodePattern("flatten", (3,)).fixed(6) is None
    # continuing 4 given frames: every given code is fixed, in the prefix cells and after them
    values, mask = pattern.fixed(6, codes[:, :4])
    layout = pattern.apply(codes)
    given = pattern.apply(torch.cat([codes[:, :4], torch.full_like(codes[:, 4:], 99)], 1))
    assert torch.equal(mask, (given != 99))
    assert torch.equal(values[mask], layout[mask])
    assert mask[:, :4].all() and mask[:, 4:6].any() and not mask[:, 4:6].all()


def test_patterns_refuse_single_level_tokenizers():
    with pytest.raises(ConfigError, match="use code_pattern: stack"):
        CodePattern("delay", ())
    with pytest.raises(ConfigError, match="unknown code pattern"):
        CodePattern("zigzag", (4,))
    with pytest.raises(ConfigError, match="1D grid"):
        CodePattern("flatten", (4,)).grid((4, 4))


def test_parallel_head_loss_is_the_mean_ce_over_real_codes():
    torch.manual_seed(0)
    head = ParallelCategoricalHead(d_model=8, vocab_size=5, levels=3)
    hidden = torch.randn(2, 4, 8)
    targets = torch.randint(0, 5, (2, 4, 3))
    targets[0, 0, 1:] = EMPTY
    targets[1, 3, 0] = EMPTY
    logits = head(hidden)  # (2, 4, 3, 5)
    keep = targets != EMPTY
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(head.loss(hidden, targets), expected)


def test_parallel_head_embeds_empty_cells_and_samples_real_ids():
    torch.manual_seed(0)
    head = ParallelCategoricalHead(d_model=8, vocab_size=5, levels=3)
    tokens = torch.tensor([[EMPTY, 2, EMPTY]])
    empty_rows = head.embedding.weight[[5, 6 + 2, 2 * 6 + 5]]  # level 0 empty, level 1 id 2, level 2 empty
    torch.testing.assert_close(head.embed(tokens), empty_rows.sum(0, keepdim=True))
    hidden = torch.randn(6, 8)  # CFG batch of 3
    ids = head.sample(hidden, Sampler(cfg_scale=2.0, seed=0), torch.full((3,), 0.5), None)
    assert ids.shape == (3, 3) and ids.min() >= 0 and ids.max() < 5
    with pytest.raises(ConfigError, match="levels"):
        head.embed(torch.zeros(2, 4, dtype=torch.long))
