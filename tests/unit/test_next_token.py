"""Next-token unit: cached decoding equals teacher forcing; layout and step count follow LlamaGen."""

import pytest
import torch

from mmar.conditioning import ClassCondition
from mmar.errors import ConfigError
from mmar.kernels import Causal
from mmar.sampling import Sampler
from mmar.trunk import Trunk, trunk_config
from mmar.units import build_unit

GRID = (4, 5)


@pytest.fixture
def model():
    torch.manual_seed(0)
    trunk = Trunk(trunk_config("debug")).eval()
    unit = build_unit("next_token", d_model=64, grid=GRID, vocab_size=33).eval()
    cond = ClassCondition(10, 64).eval()
    return trunk, unit, cond


def test_kv_cached_logits_equal_full_forward(model):
    trunk, unit, cond = model
    tokens = torch.randint(0, 33, (3, *GRID))
    c = cond(torch.tensor([1, 4, 7])).tokens  # (B, 1, D)
    batch = unit.prepare(tokens, c)
    full_logits = unit.head(trunk(batch.inputs, batch.positions, batch.mask))  # (B, N, V)

    cache = trunk.make_cache(3, batch.inputs.shape[1])
    step_logits = []
    for i in range(batch.inputs.shape[1]):  # feed one position at a time, as generate does
        hidden = trunk(batch.inputs[:, i : i + 1], batch.positions[i : i + 1], Causal(), cache=cache)
        step_logits.append(unit.head(hidden))
    torch.testing.assert_close(torch.cat(step_logits, 1), full_logits, atol=1e-5, rtol=0)


def test_cached_and_uncached_generation_agree(model):
    trunk, unit, cond = model
    sampler = Sampler(cfg_scale=2.5, cfg_schedule="linear", top_k=10, seed=7)
    c = cond.for_sampling(torch.tensor([0, 3]), sampler.guided).tokens  # (2B, 1, D)
    cached = unit.generate(trunk, c, GRID, sampler)
    uncached = unit.generate(trunk, c, GRID, sampler, use_cache=False)
    assert cached.shape == (2, *GRID)
    assert torch.equal(cached, uncached)


def test_layout_condition_predicts_first_token(model):
    trunk, unit, cond = model
    tokens = torch.randint(0, 33, (2, *GRID))
    batch = unit.prepare(tokens, cond(torch.tensor([1, 2])).tokens)
    assert batch.inputs.shape == (2, 20, 64)  # cond + N - 1
    assert torch.equal(batch.targets, tokens.flatten(1))
    assert torch.equal(batch.positions[0], torch.zeros(2, dtype=torch.long))  # zero rotation on cond
    assert torch.equal(batch.positions[1:6, 1], torch.arange(5))  # token (0, w) at column w
    assert torch.equal(batch.inputs[:, 1], unit.head.embed(tokens[:, 0, 0]))
    # the loss at the condition position depends only on the condition: changing tokens leaves it
    hidden = trunk(batch.inputs, batch.positions, batch.mask)
    tokens2 = tokens.clone()
    tokens2[:, 2:] = (tokens2[:, 2:] + 1) % 33
    b2 = unit.prepare(tokens2, cond(torch.tensor([1, 2])).tokens)
    assert torch.equal(trunk(b2.inputs, b2.positions, b2.mask)[:, :11], hidden[:, :11])


def test_num_steps_is_number_of_tokens(model):
    _, unit, _ = model
    assert unit.num_steps(GRID) == 20
    assert build_unit("next_token", d_model=8, grid=(16, 16), vocab_size=4).num_steps((16, 16)) == 256


def test_loss_trains_down(model):
    trunk, unit, cond = model
    trunk.train(), unit.train()
    params = [*trunk.parameters(), *unit.parameters(), *cond.parameters()]
    opt = torch.optim.AdamW(params, lr=3e-3)
    tokens, labels = torch.randint(0, 33, (4, *GRID)), torch.arange(4)
    losses = []
    for _ in range(30):
        batch = unit.prepare(tokens, cond(labels).tokens)
        loss = unit.loss(trunk(batch.inputs, batch.positions, batch.mask), batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_bad_grid_and_unknown_unit(model):
    trunk, unit, cond = model
    with pytest.raises(ConfigError, match="do not match the generator's grid"):
        unit.prepare(torch.randint(0, 33, (2, 4, 4)), cond(torch.tensor([0, 1])).tokens)
    with pytest.raises(ConfigError, match="cannot generate on grid"):
        unit.generate(trunk, cond.for_sampling(torch.tensor([0]), False).tokens, (8, 8), Sampler())
    with pytest.raises(ConfigError, match="unknown prediction unit 'next_pixel'"):
        build_unit("next_pixel", d_model=8, grid=GRID, vocab_size=4)


@pytest.mark.parametrize("guided", [False, True])
def test_teacher_forcing_keeps_the_teacher_at_probability_one_and_nothing_at_zero(model, guided):
    trunk, unit, cond = model
    sampler = Sampler(cfg_scale=2.0 if guided else 1.0, seed=3)
    c = cond.for_sampling(torch.tensor([2, 5, 9]), sampler.guided).tokens
    teacher = torch.randint(0, 33, (3, *GRID))
    assert torch.equal(unit.generate(trunk, c, GRID, sampler, teacher=teacher, teacher_prob=1.0), teacher)
    free = unit.generate(trunk, c, GRID, sampler)
    assert torch.equal(unit.generate(trunk, c, GRID, sampler, teacher=teacher, teacher_prob=0.0), free)
    mixed = unit.generate(trunk, c, GRID, sampler, teacher=teacher, teacher_prob=0.5)
    kept = (mixed == teacher).float().mean()
    assert 0.3 < kept < 0.9  # about half kept, plus the sampled tokens that happen to agree
