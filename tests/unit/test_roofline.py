"""The roofline cost model equals torch's FLOP counter; the recorder sees every pass a unit makes."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from mmar.conditioning import ClassCondition
from mmar.heads import CategoricalHead
from mmar.heads.flow import FlowHead
from mmar.kernels import BlockCausal, Causal, Dense
from mmar.roofline import (
    CallRecorder,
    Cost,
    Linears,
    Machine,
    TrunkCost,
    compute_modules,
    linear_chain_seconds,
    linear_weights,
    peak_memory,
    reset_peak_memory,
)
from mmar.sampling import Sampler
from mmar.trunk import Trunk, trunk_config
from mmar.units import build_unit, grid_positions

# torch's counter has no formula for the CPU attention op: give it the one it uses for the CUDA ones
SDPA = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: lambda q, k, v, *a, **kw: sdpa_flop_count(
        q, k, v
    )
}


def counted(fn) -> int:
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=SDPA) as counter:
        fn()
    return counter.get_total_flops()


def make_trunk(**overrides) -> Trunk:
    torch.manual_seed(0)
    return Trunk(trunk_config("debug", **overrides)).eval()


@pytest.mark.parametrize(
    "mask", [None, Causal(), BlockCausal(torch.arange(10) // 3), Dense(torch.rand(10, 10) > 0.3)]
)
@pytest.mark.parametrize("adaln", [False, True])
def test_trunk_pass_flops_equal_the_flop_counter(mask, adaln):
    trunk = make_trunk(adaln=adaln)
    x, cond = torch.randn(3, 10, 64), torch.randn(3, 64) if adaln else None  # (B, T, D), (B, D)
    flops = counted(lambda: trunk(x, grid_positions((10,)), mask, cond=cond))
    assert TrunkCost(trunk).pass_cost(rows=3, tokens=10, keys=10).flops == flops


def test_cached_decode_flops_count_the_keys_in_the_cache():
    trunk, x = make_trunk(), torch.randn(2, 7, 64)
    cache = trunk.make_cache(2, 8)
    with torch.no_grad():
        trunk(x, grid_positions((7,)), Causal(), cache=cache)
    flops = counted(lambda: trunk(x[:, :1], grid_positions((1,)) + 7, Causal(), cache=cache))
    assert TrunkCost(trunk).pass_cost(rows=2, tokens=1, keys=8).flops == flops


def test_decode_reads_every_weight_and_the_cache():
    trunk = make_trunk()
    cost = TrunkCost(trunk)
    weights = 4 * sum(p.numel() for p in trunk.parameters())
    kv = 4 * 2 * 2 * 16 * 100 * 64  # fp32 (K, V) of 2 layers, 16 rows, 100 keys, width 64
    activations = 4 * 16 * cost.tokens.features
    assert cost.pass_cost(rows=16, tokens=1, keys=100).bytes == weights + kv + activations


def test_linear_weights_are_the_per_token_linears_the_cost_model_counts():
    trunk = make_trunk(adaln=True)
    weights = linear_weights([trunk])
    assert sum(w.numel() for w in weights) == TrunkCost(trunk).tokens.params  # adaLN's per-row ones left out
    assert all(w is not block.ada.weight for block in trunk.blocks for w in weights)
    assert linear_chain_seconds([(w, 16) for w in weights], repeats=2, device="cpu") > 0


@pytest.mark.parametrize("head", [FlowHead(64, 16, width=32, depth=2), CategoricalHead(64, 100)])
def test_head_call_flops_equal_the_flop_counter(head):
    if isinstance(head, FlowHead):
        args = (torch.randn(5, 16), torch.rand(5), torch.randn(5, 64))  # x_t, t, z
    else:
        args = (torch.randn(5, 64),)
    assert Linears.of(head).cost(rows=5).flops == counted(lambda: head(*args))


def test_bound_is_the_larger_of_memory_and_compute_time():
    machine = Machine(bandwidth=1e9, throughput=1e12)
    decode, full = Cost(flops=1e9, bytes=1e8), Cost(flops=1e12, bytes=1e8)
    assert decode.bound(machine) == pytest.approx(0.1) and decode.memory_bound(machine)
    assert full.bound(machine) == pytest.approx(1.0) and not full.memory_bound(machine)


def test_machine_measures_positive_bandwidth_and_throughput():
    machine = Machine.measure("cpu", (64, 64, 64), megabytes=8)
    assert machine.bandwidth > 0 and machine.throughput > 0


def test_recorder_sees_one_decode_pass_per_token_with_a_growing_cache():
    trunk = make_trunk()
    unit = build_unit("next_token", d_model=64, grid=(2, 3), vocab_size=32).eval()
    cond = ClassCondition(10, 64).eval().for_sampling(torch.arange(2), guided=True).tokens  # (4, 1, D)
    with CallRecorder(trunk, unit) as recorder:
        unit.generate(trunk, cond, (2, 3), Sampler(cfg_scale=2.0, seed=0))
    passes = recorder.passes
    assert len(passes) == unit.num_steps((2, 3)) == 6
    assert [(p.rows, p.tokens, p.keys) for p in passes] == [(4, 1, k) for k in range(1, 7)]
    heads = [call for call in recorder.calls if call.module == "head"]
    assert len(heads) == 6 and all(call.rows == 4 for call in heads)  # the CFG batch's last positions
    assert all(cost.flops > 0 and cost.bytes > 0 for _, cost in recorder.costs())


def test_compute_modules_open_module_lists():
    unit = build_unit("next_neighbor", d_model=64, grid=(3, 3), vocab_size=32)
    assert sorted(compute_modules(unit)) == ["axis_layers.0", "head"]


def test_peak_memory_window_sees_a_new_allocation():
    reset_peak_memory("cpu")
    block = torch.ones(64 * 2**20 // 4)  # 64 MB
    assert peak_memory("cpu") >= block.numel() * 4


def test_head_call_reads_its_projection_not_its_embedding_table():
    head = CategoricalHead(64, 100)  # embedding 100 x 64 in, projection 64 -> 100 out
    projection, activations = 64 * 100, 5 * (64 + 100)
    assert Linears.of(head).cost(rows=5).bytes == 4 * (projection + activations)
