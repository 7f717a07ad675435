"""Roofline bounds of trunk passes and head calls, against a machine measured in the same run.

Used by `scripts/bench_sampling.py` and `scripts/bench_train.py`:

    python scripts/bench_sampling.py --quick     # every unit: passes, seconds and the bound per image
    python scripts/bench_train.py --quick        # training tokens/s and MFU

A call that does `flops` operations (2 per multiply-add) and moves `bytes` cannot take less than
max(bytes / bandwidth, flops / throughput) seconds (the roofline, Williams et al. 2009): it is
memory-bound when the first term wins (KV-cached decoding reads every weight for one token per row),
compute-bound otherwise (a bidirectional pass over all tokens). Bandwidth and throughput come from
`Machine.measure`, on the same device and threads as the calls: the best of a few copies of a >= 256 MB
tensor (read + write bytes per second) and the best of a few matmuls of a given shape.

Cost of a trunk pass over `rows` sequences of T new tokens attending to T_kv keys (L layers, width d,
s bytes per parameter, P_tok the Linear weights applied to every token, P_row the AdaLN ones applied once
per row, A the in + out features of the per-token Linears, W every parameter of the trunk):

    flops = 2 rows T P_tok + 2 rows P_row + 4 L rows T T_kv d     matmuls; attention scores and values
    bytes = s (W + rows T A + 2 L rows T_kv d)                    weights, matmul activations, K and V

Attention is counted dense (every query against every key it is given, as torch's FLOP counter counts
it). A call of a unit's head or embedding on `rows` rows costs 2 rows P_lin flops and s (W + rows A)
bytes with its own P_lin, W and A: every Linear of the module once per row, exact for the categorical and
flow heads and the linear embeddings (heads that loop inside, like channel_ar, are undercounted). W leaves
out embedding tables, of which a call reads only the rows it looks up: a token head's sampling call reads
its output projection, not its input embedding (counting it doubled the bound of a next-token head call).
Norms, RoPE, softmax and token draws are not counted: the bound is a lower bound on the time. The FLOPs
equal torch's FLOP counter on every mask, with and without the cache (tests/unit/test_roofline.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mmar.errors import ConfigError

ADALN = ("ada", "final_ada")  # the trunk's per-row Linears (AdaLN modulation from the cond vector)


def device_of(name: str) -> torch.device:
    """The torch device named on a bench script's command line; ConfigError if it cannot run here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name} is not a torch device; use cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available here; use --device cpu")
    return device


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels (a no-op off CUDA), so that wall-clock times cover the work."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(fn, repeats: int, device: torch.device | str) -> float:
    """The fastest of `repeats` timed calls of fn(), after one untimed call."""
    fn()
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def copy_bandwidth(device: torch.device | str, megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second read and written by copying a `megabytes` fp32 tensor (best of `repeats`)."""
    n = megabytes * 2**20 // 4
    src = torch.ones(n, device=device)  # (n,)
    dst = torch.empty_like(src)
    seconds = best_seconds(lambda: dst.copy_(src), repeats, device)
    return 2 * src.numel() * src.element_size() / seconds


def matmul_throughput(
    device: torch.device | str, m: int, k: int, n: int, dtype: torch.dtype = torch.float32, repeats: int = 5
) -> float:
    """FLOP/s of [m, k] @ [k, n] matmuls in `dtype` (best of `repeats`)."""
    a = torch.randn(m, k, device=device).to(dtype)  # (M, K)
    b = torch.randn(k, n, device=device).to(dtype)  # (K, N)
    out = torch.empty(m, n, device=device, dtype=dtype)
    seconds = best_seconds(lambda: torch.matmul(a, b, out=out), repeats, device)
    return 2 * m * k * n / seconds


@dataclass(frozen=True)
class Machine:
    """What the device sustains: copy bandwidth (bytes/s) and matmul throughput (FLOP/s)."""

    bandwidth: float
    throughput: float

    @classmethod
    def measure(
        cls,
        device: torch.device | str,
        matmul: tuple[int, int, int],
        megabytes: int = 256,
        dtype: torch.dtype = torch.float32,
    ) -> Machine:
        """Measure both on `device`, the matmul at shape (M, K, N)."""
        return cls(copy_bandwidth(device, megabytes), matmul_throughput(device, *matmul, dtype=dtype))


@dataclass(frozen=True)
class Cost:
    """FLOPs and bytes of one call."""

    flops: float
    bytes: float

    def memory_seconds(self, machine: Machine) -> float:
        return self.bytes / machine.bandwidth

    def compute_seconds(self, machine: Machine) -> float:
        return self.flops / machine.throughput

    def bound(self, machine: Machine) -> float:
        """The roofline: the call cannot take less time on `machine`."""
        return max(self.memory_seconds(machine), self.compute_seconds(machine))

    def memory_bound(self, machine: Machine) -> bool:
        return self.memory_seconds(machine) >= self.compute_seconds(machine)


@dataclass(frozen=True)
class Linears:
    """The matmul sizes of a module whose Linears each run once per row of a call."""

    params: int
    """Weight elements of the Linears (multiply-adds per row)."""
    features: int
    """In + out features summed over the Linears (activations read and written per row)."""
    weights: int
    """Every parameter read by a call: Linears, norms, biases; not embedding tables, of which a call reads
    only the rows it looks up (a token head's call projects hidden states and never touches its input
    embedding, which alone is as large as the projection)."""
    element: int
    """Bytes per parameter."""

    @classmethod
    def of(cls, module: nn.Module, skip: tuple[str, ...] = ()) -> Linears:
        """The Linears of `module`, except those whose own name (last part) is in `skip`."""
        linears = [
            m
            for name, m in module.named_modules()
            if isinstance(m, nn.Linear) and name.split(".")[-1] not in skip
        ]
        params = list(module.parameters())
        tables = {id(m.weight) for m in module.modules() if isinstance(m, nn.Embedding)}
        return cls(
            params=sum(m.weight.numel() for m in linears),
            features=sum(m.in_features + m.out_features for m in linears),
            weights=sum(p.numel() for p in params if id(p) not in tables),
            element=params[0].element_size() if params else 4,
        )

    def cost(self, rows: int) -> Cost:
        """A call on `rows` rows."""
        return Cost(2 * rows * self.params, self.element * (self.weights + rows * self.features))


class TrunkCost:
    """The cost model of `mmar.trunk.Trunk` passes (see the module docstring)."""

    def __init__(self, trunk: nn.Module):
        config = trunk.config
        self.layers, self.width = config.n_layer, config.d_model
        self.tokens = Linears.of(trunk, skip=ADALN)  # every token of a pass
        per_row = [m for name, m in trunk.named_modules() if name.split(".")[-1] in ADALN]
        self.row_params = sum(m.weight.numel() for m in per_row)

    def pass_cost(self, rows: int, tokens: int, keys: int) -> Cost:
        """A pass over `rows` sequences of `tokens` new tokens attending to `keys` keys (cache included)."""
        attention = 4 * self.layers * rows * tokens * keys * self.width
        flops = 2 * rows * tokens * self.tokens.params + 2 * rows * self.row_params + attention
        moved = self.tokens.weights + rows * tokens * self.tokens.features + self.kv_elements(rows, keys)
        return Cost(flops, self.tokens.element * moved)

    def kv_elements(self, rows: int, keys: int) -> int:
        """Elements of the cached K and V of every layer a pass over `rows` sequences attends to."""
        return 2 * self.layers * rows * keys * self.width


@dataclass(frozen=True)
class Call:
    """One recorded call: a trunk pass (module "trunk") or a unit module's call on `rows` rows."""

    module: str
    rows: int
    tokens: int = 1
    keys: int = 1


def compute_modules(unit: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """The children of `unit` that hold Linears (heads, embeddings; ModuleLists are opened), by name."""
    found = {}
    for name, child in unit.named_children():
        if isinstance(child, nn.ModuleList | nn.ModuleDict):
            found.update(compute_modules(child, f"{prefix}{name}."))
        elif any(isinstance(m, nn.Linear) for m in child.modules()):
            found[f"{prefix}{name}"] = child
    return found


def rows_of(args: tuple) -> int:
    """Rows of a call: the first tensor argument's elements over its last dimension."""
    x = next(a for a in args if isinstance(a, torch.Tensor))
    return x.numel() // max(x.shape[-1], 1) if x.ndim else 1


class CallRecorder:
    """Records every trunk pass (rows, new tokens, keys attended) and every call of the unit's compute
    modules while in a `with` block, and prices them (`costs`)."""

    def __init__(self, trunk: nn.Module, unit: nn.Module):
        self.trunk, self.modules = trunk, compute_modules(unit)
        self.trunk_cost = TrunkCost(trunk)
        self.linears = {name: Linears.of(m) for name, m in self.modules.items()}
        self.calls: list[Call] = []
        self.handles = []

    def __enter__(self) -> CallRecorder:
        self.handles.append(self.trunk.register_forward_pre_hook(self._trunk_hook, with_kwargs=True))
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_pre_hook(self._module_hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _trunk_hook(self, module, args, kwargs) -> None:
        x = args[0] if args else kwargs["x"]  # (B, T, D)
        cache = kwargs.get("cache", args[4] if len(args) > 4 else None)
        done = cache.length if cache is not None else 0
        self.calls.append(Call("trunk", x.shape[0], x.shape[1], done + x.shape[1]))

    def _module_hook(self, name: str):
        def hook(module, args) -> None:
            self.calls.append(Call(name, rows_of(args)))

        return hook

    @property
    def passes(self) -> list[Call]:
        return [call for call in self.calls if call.module == "trunk"]

    def cost(self, call: Call) -> Cost:
        if call.module == "trunk":
            return self.trunk_cost.pass_cost(call.rows, call.tokens, call.keys)
        return self.linears[call.module].cost(call.rows)

    def costs(self) -> list[tuple[Call, Cost]]:
        return [(call, self.cost(call)) for call in self.calls]


def linear_weights(modules: list[nn.Module], skip: tuple[str, ...] = ADALN) -> list[torch.Tensor]:
    """The weights of every Linear of `modules`, in call order, but those whose own name is in `skip`."""
    return [
        m.weight
        for module in modules
        for name, m in module.named_modules()
        if isinstance(m, nn.Linear) and name.split(".")[-1] not in skip
    ]


def linear_chain_seconds(
    calls: list[tuple[torch.Tensor, int]], repeats: int, device: torch.device | str
) -> float:
    """The fastest of `repeats` runs of `F.linear` over every (weight, rows) in turn, on that many rows:
    the matmuls of a decode step by the op the step itself runs, each weight read once per chain as
    decoding reads it once per pass. A step that runs these matmuls cannot take less, so its bound over
    this time is the largest fraction of the bound it can reach with torch's matmul on this device."""
    inputs = {}
    for w, rows in calls:
        key = (rows, w.shape[1], w.dtype)
        inputs.setdefault(key, torch.randn(rows, w.shape[1], device=w.device, dtype=w.dtype))

    @torch.no_grad()
    def chain() -> None:
        for w, rows in calls:
            nn.functional.linear(inputs[(rows, w.shape[1], w.dtype)], w)

    return best_seconds(chain, repeats, device)


def release_memory(device: torch.device | str) -> None:
    """Hand freed memory back (CUDA's cache; glibc's heap through malloc_trim), so that the next peak
    window starts from what is really in use."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        return
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_memory(device: torch.device | str) -> str:
    """Start a new peak-memory window; returns its scope: "device" (CUDA allocator), "window" (the
    process's peak RSS, reset through /proc/self/clear_refs) or "process" (peak RSS since start)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return "device"
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the peak resident set size
        return "window"
    except OSError:
        return "process"


def _proc_status(field: str) -> int | None:
    """A memory field of /proc/self/status in bytes (None off Linux)."""
    status = Path("/proc/self/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024  # kB
    return None


def current_memory(device: torch.device | str) -> int:
    """Bytes in use now: CUDA memory_allocated, else the resident set size (0 where unknown)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.memory_allocated(device)
    return _proc_status("VmRSS") or 0


def peak_memory(device: torch.device | str) -> int:
    """Peak bytes since `reset_peak_memory`: CUDA max_memory_allocated, else the peak RSS."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = _proc_status("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
