"""adaLN-Zero conditioning (DiT): identity at initialisation, gradients to the condition vector, a class
learned through it alone, and KV-cached sampling equal to the full forward, CFG included."""

import pytest
import torch
from torch import nn

from mmar.conditioning import ClassCondition, ConditionTokens
from mmar.kernels import Causal
from mmar.sampling import Sampler
from mmar.trunk import AdaLNConditioned, Trunk, trunk_config
from mmar.units import build_unit
from mmar.units.base import grid_positions

D = 32


def adaln_trunk(**overrides) -> Trunk:
    return Trunk(trunk_config("debug", d_model=D, n_head=2, adaln=True, **overrides))


def randomise_modulation(trunk: Trunk) -> None:
    """Move the zero-initialised adaLN layers away from zero, as training does."""
    for layer in [block.ada for block in trunk.blocks] + [trunk.final_ada]:
        nn.init.normal_(layer.weight, std=0.3)
        nn.init.normal_(layer.bias, std=0.3)


def test_blocks_start_as_the_identity_for_every_condition():
    torch.manual_seed(0)
    trunk = adaln_trunk()
    x, positions = torch.randn(3, 6, D), grid_positions((6,))
    for cond in (torch.randn(3, D), 10 * torch.randn(3, D)):
        out = trunk(x, positions, Causal(), cond=cond)
        torch.testing.assert_close(
            out, trunk.norm(x), rtol=0, atol=0
        )  # every block and the final ada: identity


def test_unit_gate_without_shift_or_scale_is_the_plain_trunk():
    """With the modulation at (shift 0, scale 0, gate 1) an adaln block computes exactly the plain block."""
    torch.manual_seed(0)
    trunk, plain = adaln_trunk(), Trunk(trunk_config("debug", d_model=D, n_head=2))
    plain.load_state_dict(trunk.state_dict(), strict=False)  # the same weights, no ada layers
    for block in trunk.blocks:  # bias chunks: shift1, scale1, gate1, shift2, scale2, gate2
        block.ada.bias.data.view(6, D)[[2, 5]] = 1.0
    x, positions = torch.randn(2, 5, D), grid_positions((5,))
    out = trunk(x, positions, Causal(), cond=torch.randn(2, D))
    torch.testing.assert_close(out, plain(x, positions, Causal()), rtol=1e-6, atol=1e-6)


def test_gradients_reach_the_condition_once_the_modulation_moved():
    torch.manual_seed(0)
    trunk = adaln_trunk()
    x, positions = torch.randn(2, 5, D), grid_positions((5,))
    cond = torch.randn(2, D, requires_grad=True)

    def loss() -> torch.Tensor:
        return trunk(x, positions, Causal(), cond=cond).square().mean()

    loss().backward()
    assert torch.equal(cond.grad, torch.zeros_like(cond))  # adaLN-Zero: the ada weights are zero
    assert all(block.ada.weight.grad.abs().sum() > 0 for block in trunk.blocks)  # but they learn
    torch.optim.SGD(trunk.parameters(), lr=0.1).step()
    cond.grad = None
    loss().backward()
    assert cond.grad.abs().min() > 0


def test_a_class_is_learned_through_adaln_alone_and_sampled_with_kv_cache_and_cfg():
    """The prefix is the same token for every class; only adaLN sees the class, whose tokens are all its
    label. After training, greedy cached decoding (with and without CFG) writes the label everywhere."""
    torch.manual_seed(0)
    grid, classes = (2, 2), 4
    trunk = adaln_trunk(n_layer=1)
    unit = build_unit("next_token", d_model=D, grid=grid, vocab_size=classes)
    condition = ClassCondition(classes, D, dropout=0.0)
    prefix = nn.Parameter(torch.zeros(1, 1, D))  # no class information in the sequence
    params = [*trunk.parameters(), *unit.parameters(), *condition.parameters(), prefix]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    labels = torch.arange(classes).repeat(2)  # (B,)
    tokens = labels.view(-1, 1, 1).expand(-1, *grid)  # (B, 2, 2): every token is the label
    for _ in range(60):
        batch = unit.prepare(tokens, prefix.expand(len(labels), -1, -1))
        hidden = AdaLNConditioned(trunk, condition(labels).pooled())(
            batch.inputs, batch.positions, batch.mask
        )
        loss = unit.loss(hidden, batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    with torch.no_grad():
        for sampler in (Sampler(temperature=0), Sampler(temperature=0, cfg_scale=2.0)):
            cond = condition.for_sampling(torch.arange(classes), sampler.guided)  # CFG: the null's vector too
            first = prefix.expand(len(cond.tokens), -1, -1)
            out = unit.generate(AdaLNConditioned(trunk, cond.pooled()), first, grid, sampler)
            assert torch.equal(out, torch.arange(classes).view(-1, 1, 1).expand(-1, *grid))


@pytest.mark.parametrize("unit_name", ["next_token", "random_order", "next_block", "next_neighbor"])
def test_cached_sampling_equals_the_full_forward(unit_name):
    torch.manual_seed(0)
    trunk = adaln_trunk().eval()
    randomise_modulation(trunk)
    unit = build_unit(unit_name, d_model=D, grid=(3, 4), vocab_size=17).eval()
    condition = ClassCondition(5, D, n_tokens=2).eval()
    sampler = Sampler(cfg_scale=2.0, temperature=0.5, seed=3)
    cond = condition.for_sampling(torch.tensor([1, 4]), sampler.guided)  # (2B, 2, D): cond then null
    conditioned = AdaLNConditioned(trunk.with_prefix_padding(cond.valid), cond.pooled())
    cached = unit.generate(conditioned, cond.tokens, (3, 4), sampler)
    full = unit.generate(conditioned, cond.tokens, (3, 4), sampler, use_cache=False)
    assert torch.equal(cached, full)
    other = AdaLNConditioned(trunk, torch.randn(4, D))  # another vector changes what is sampled
    assert not torch.equal(unit.generate(other, cond.tokens, (3, 4), sampler), cached)


def test_pooled_condition_is_the_mean_of_the_real_tokens():
    tokens = torch.arange(12.0).view(2, 3, 2)  # (B, n, D)
    valid = torch.tensor([[False, True, True], [True, True, True]])
    pooled = ConditionTokens(tokens, valid).pooled()
    torch.testing.assert_close(pooled, torch.stack([tokens[0, 1:].mean(0), tokens[1].mean(0)]))
    torch.testing.assert_close(ConditionTokens(tokens, None).pooled(), tokens.mean(1))


def test_half_the_rows_read_the_conditional_half():
    """Hi-MAR decodes its pivots unguided on the conditional half of the CFG batch."""
    torch.manual_seed(0)
    trunk = adaln_trunk()
    randomise_modulation(trunk)
    cond, x, positions = torch.randn(4, D), torch.randn(2, 3, D), grid_positions((3,))
    out = AdaLNConditioned(trunk, cond)(x, positions, Causal())
    torch.testing.assert_close(out, trunk(x, positions, Causal(), cond=cond[:2]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="cannot read the adaLN condition"):
        AdaLNConditioned(trunk, cond)(torch.randn(3, 3, D), positions, Causal())
