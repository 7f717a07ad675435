"""Decoding speed work never changes what is drawn: a tiny random next-token model with fixed seeds
gives the tokens recorded before the decode step was optimised, eager and compiled
(`Trunk.compile_decode`: static shapes, one graph for every step)."""

import shutil

import pytest
import torch

from mmar.kernels import Causal, KeyPadding
from mmar.sampling import Sampler
from mmar.trunk import Trunk, trunk_config
from mmar.units import build_unit, grid_positions

SAMPLERS = {
    "plain": dict(cfg_scale=2.0, seed=3),
    "filtered": dict(cfg_scale=3.0, cfg_schedule="linear", temperature=0.9, top_k=40, top_p=0.8, seed=5),
    "unguided": dict(top_p=0.95, min_p=0.01, seed=7),
}
RECORDED = {  # tokens [2, 16] of the 4 x 4 grid, drawn by the plain step before the speed work
    "plain": [
        [93, 88, 64, 285, 18, 30, 284, 241, 183, 183, 297, 160, 35, 279, 90, 43],
        [78, 159, 122, 30, 231, 175, 18, 92, 244, 162, 123, 234, 205, 46, 174, 226],
    ],
    "filtered": [
        [135, 58, 40, 29, 32, 161, 81, 251, 128, 180, 27, 270, 269, 285, 95, 26],
        [30, 257, 241, 27, 270, 178, 262, 40, 263, 32, 259, 96, 43, 169, 293, 236],
    ],
    "unguided": [
        [191, 12, 245, 291, 249, 268, 191, 195, 236, 98, 20, 88, 96, 287, 131, 111],
        [105, 118, 74, 112, 255, 114, 44, 240, 203, 274, 166, 261, 89, 236, 281, 7],
    ],
}


def tiny_model():
    torch.manual_seed(0)
    trunk = Trunk(trunk_config("debug")).eval()
    unit = build_unit("next_token", d_model=64, grid=(4, 4), vocab_size=300).eval()
    return trunk, unit, torch.randn(2, 1, 64)  # cond (B, 1, D)


def conditions(cond: torch.Tensor, sampler: Sampler) -> torch.Tensor:
    """The CFG batch cat([cond, null]) with a fixed stand-in for the null condition."""
    if not sampler.guided:
        return cond
    null = torch.randn(cond.shape, generator=torch.Generator().manual_seed(1))
    return torch.cat([cond, null])  # (2B, 1, D)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_cached_decode_draws_the_recorded_tokens(name):
    trunk, unit, cond = tiny_model()
    sampler = Sampler(**SAMPLERS[name])
    tokens = unit.generate(trunk, conditions(cond, sampler), (4, 4), sampler)  # (B, 4, 4)
    assert tokens.flatten(1).tolist() == RECORDED[name]


needs_dynamo = pytest.mark.skipif(
    not torch._dynamo.is_dynamo_supported(), reason="torch.compile is not supported on this Python/platform"
)


@needs_dynamo
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_compiled_decode_draws_the_recorded_tokens(name):
    torch._dynamo.reset()
    trunk, unit, cond = tiny_model()
    trunk.compile_decode(backend="aot_eager")  # traced and functionalised as inductor sees it, no C++ build
    sampler = Sampler(**SAMPLERS[name])
    tokens = unit.generate(trunk, conditions(cond, sampler), (4, 4), sampler)  # (B, 4, 4)
    assert tokens.flatten(1).tolist() == RECORDED[name]


@pytest.mark.slow
@needs_dynamo
@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++")), reason="inductor needs a C++ compiler")
def test_inductor_decode_draws_the_recorded_tokens():
    torch._dynamo.reset()
    trunk, unit, cond = tiny_model()
    trunk.compile_decode()  # inductor: compiles C++ kernels, about a minute on 2 cores
    sampler = Sampler(**SAMPLERS["plain"])
    tokens = unit.generate(trunk, conditions(cond, sampler), (4, 4), sampler)
    assert tokens.flatten(1).tolist() == RECORDED["plain"]


@needs_dynamo
def test_every_decode_step_of_every_call_runs_one_graph():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # reset() keeps the counts of earlier tests
    trunk, unit, cond = tiny_model()
    trunk.compile_decode(backend="eager")
    sampler = Sampler(**SAMPLERS["plain"])
    for _ in range(2):  # the second call reuses the buffers and the graph
        unit.generate(trunk, conditions(cond, sampler), (4, 4), sampler)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert len(trunk.decode_step.caches) == 1


@needs_dynamo
def test_static_step_equals_the_full_forward_with_key_padding_and_adaln():
    torch._dynamo.reset()
    torch.manual_seed(0)
    trunk = Trunk(trunk_config("debug", adaln=True)).eval()
    trunk.compile_decode(backend="eager")
    x, cond = torch.randn(3, 6, 64), torch.randn(3, 64)  # (B, T, D), (B, D)
    valid = torch.tensor([[True, True], [True, False], [False, True]])  # padded condition prefix (B, 2)
    mask, positions = KeyPadding(Causal(), valid), grid_positions((6,))
    with torch.no_grad():
        full = trunk(x, positions, mask, cond=cond)  # (B, T, D)
        cache = trunk.make_cache(3, 6)
        steps = [trunk(x[:, t : t + 1], positions[t : t + 1], mask, cond=cond, cache=cache) for t in range(6)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 6
