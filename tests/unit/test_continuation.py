"""Continuation (`prefix`): every unit that can continue keeps the given leading frames bit for bit,
conditions the rest on them (continuing a greedy sample from its own first frames reproduces it), and
the causal units spend fewer trunk passes, the prefix going in with the condition."""

import pytest
import torch

from mmar.conditioning import ClassCondition
from mmar.errors import ConfigError
from mmar.sampling import Sampler
from mmar.trunk import PassCounter, Trunk, trunk_config
from mmar.units import UNITS, build_unit

V, D, GRID = 11, 64, (3, 2, 3)  # a video grid: 3 latent frames of 2 x 3 tokens
CAUSAL = {
    "next_token": {},
    "random_order": {},
    "next_block": {"block": "frame"},
    "next_neighbor": {},
}


def setup(name, **kwargs):
    torch.manual_seed(0)
    trunk = Trunk(trunk_config("debug")).eval()
    unit = build_unit(name, d_model=D, grid=GRID, vocab_size=V, **kwargs).eval()
    for p in unit.parameters():  # learned-at-zero parts (slots, axis layers) made non-trivial
        if p.ndim > 1 and not p.any():
            torch.nn.init.normal_(p, std=0.02)
    for module in unit.modules():  # token embeddings of a trained model's scale: the inputs matter
        if isinstance(module, torch.nn.Embedding):
            torch.nn.init.normal_(module.weight, std=1.0)
    return trunk, unit, ClassCondition(10, D).eval()


@pytest.mark.parametrize("name", sorted(CAUSAL))
@pytest.mark.parametrize("guided", [False, True])
def test_continuing_a_greedy_sample_from_its_first_frames_reproduces_it(name, guided):
    trunk, unit, cond = setup(name, **CAUSAL[name])
    sampler = Sampler(temperature=0.0, cfg_scale=2.0 if guided else 1.0)
    c = cond.for_sampling(torch.tensor([1, 6]), sampler.guided).tokens
    full = unit.generate(trunk, c, GRID, sampler)
    for k in (1, 2):
        continued = unit.generate(trunk, c, GRID, sampler, prefix=full[:, :k])
        assert torch.equal(continued, full)


@pytest.mark.parametrize("name", sorted(CAUSAL))
def test_given_frames_are_kept_and_the_rest_depends_on_them(name):
    trunk, unit, cond = setup(name, **CAUSAL[name])
    c = cond.for_sampling(torch.tensor([2]), False).tokens
    first = torch.randint(0, V, (1, 1, *GRID[1:]))
    outs = []
    for prefix in (first, (first + 1) % V):  # same class and seed, another given frame
        outs.append(unit.generate(trunk, c, GRID, Sampler(seed=0, temperature=0.0), prefix=prefix))
        assert outs[-1].shape == (1, *GRID) and torch.equal(outs[-1][:, :1], prefix)
    assert not torch.equal(outs[0][:, 1:], outs[1][:, 1:])  # the generated frames read the given one


def test_masked_ar_reads_the_given_tokens_at_every_step_and_never_resamples_them():
    trunk, unit, cond = setup("masked_ar", head="categorical", steps=4)
    c = cond.for_sampling(torch.tensor([2]), False).tokens
    prefix = torch.randint(0, V, (1, 1, *GRID[1:]))
    seen = []
    handle = trunk.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 1:7].clone()))
    try:
        out = unit.generate(trunk, c, GRID, Sampler(seed=0), prefix=prefix)
    finally:
        handle.remove()
    assert torch.equal(out[:, :1], prefix) and len(seen) == 4
    for inputs in seen:  # the given cells enter every pass as themselves, never as the mask embedding
        torch.testing.assert_close(inputs, unit.embed(prefix.flatten(1)), rtol=0, atol=0)


@pytest.mark.parametrize(
    "name, kwargs, expected",
    [
        ("next_token", {}, 18 - 6),  # N - P tokens decoded, the prefix fed with the condition
        ("next_block", {"block": "frame"}, 3 - 1),  # K - m blocks
        ("next_neighbor", {}, 3 + 2 + 3 - 2),  # every diagonal still has a cell to generate
        ("masked_ar", {"head": "categorical", "steps": 4}, 4),
    ],
)
def test_trunk_passes_of_a_continuation(name, kwargs, expected):
    trunk, unit, cond = setup(name, **kwargs)
    c = cond.for_sampling(torch.tensor([3]), False).tokens
    prefix = torch.randint(0, V, (1, 1, *GRID[1:]))
    with PassCounter(trunk) as counter:
        unit.generate(trunk, c, GRID, Sampler(seed=0), prefix=prefix)
    assert counter.count == expected


def test_masked_ar_schedule_runs_over_the_generated_tokens_only():
    trunk, unit, cond = setup("masked_ar", head="categorical", steps=12)  # more steps than tokens to make
    c = cond.for_sampling(torch.tensor([3]), False).tokens
    prefix = torch.randint(0, V, (1, 2, *GRID[1:]))  # 12 of 18 given: 6 left for 12 steps
    out = unit.generate(trunk, c, GRID, Sampler(seed=0), prefix=prefix)
    assert torch.equal(out[:, :2], prefix) and out.shape == (1, *GRID)


def test_bad_prefixes_name_the_shape():
    trunk, unit, cond = setup("next_token")
    c = cond.for_sampling(torch.tensor([3]), False).tokens
    bad_shapes = [(1, 3, 2, 3), (1, 1, 3, 2), (2, 1, 2, 3), (1, 0, 2, 3)]  # all frames, wrong size or batch
    for bad in (torch.zeros(shape) for shape in bad_shapes):
        with pytest.raises(ConfigError, match="prefix"):
            unit.generate(trunk, c, GRID, Sampler(), prefix=bad.long())
    trunk, unit, cond = setup("next_block", block=[3, 1, 1])  # blocks span every frame
    with pytest.raises(ConfigError, match="whole number of blocks"):
        unit.generate(trunk, c, GRID, Sampler(), prefix=torch.zeros(1, 1, 2, 3, dtype=torch.long))


def test_which_units_continue():
    assert {name for name, cls in UNITS.items() if cls.supports_prefix} == {*CAUSAL, "masked_ar"}
