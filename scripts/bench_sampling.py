"""Sampling speed of every prediction unit against its roofline bound, both measured in one run.

    python scripts/bench_sampling.py                                 # every unit, preset B, batch 8, CFG
    python scripts/bench_sampling.py --device cuda --markdown runs/bench/sampling.md
    python scripts/bench_sampling.py --units next_token --compare-cache   # KV-cached vs uncached
    python scripts/bench_sampling.py --units masked_ar --unit-kwargs '{"masked_ar": {"steps": 16}}'
    python scripts/bench_sampling.py --quick                         # debug trunk, 8x8, batch 2: seconds
    python scripts/bench_sampling.py --units next_token next_token[compiled] --repeats 3
    python scripts/bench_sampling.py --units next_token[compiled] --device cuda \
        --compile-kwargs '{"mode": "reduce-overhead"}'                 # CUDA graphs

Scale (preset B of each paper): the discrete units (next_token, random_order, next_block, next_neighbor)
draw 16 x 16 tokens of a 16384-word vocabulary (LlamaGen's VQ-16), the continuous ones (masked_ar,
hi_mar, next_x) 16 x 16 latents of 16 channels; batch 8 with classifier-free guidance, so the trunk runs
16 rows. Each unit keeps its constructor defaults, its paper's step counts where the unit cites them:
next_token and random_order one pass per token (256), next_block one per row (16), next_neighbor one per
anti-diagonal (31), masked_ar MAR's 64 steps, hi_mar 4 pivot steps + 64, next_x 64 cells of 2 x 2
tokens x 16 flow steps (1024); `--unit-kwargs` overrides them, keyed by unit
({"masked_ar": {"steps": 16}}) or for every unit ({"steps": 16}). Rows with a suffix are variants:
`next_token[uncached]` decodes without the KV cache (`--compare-cache` adds it and prints the cache's
speed-up, the script's former output), `unit[compiled]` runs every one-token cached pass through
`torch.compile` (`Trunk.compile_decode`, with `--compile-kwargs`; warmed up at the full batch, so the
compilation is not timed), and `masked_ar[skip_masked]` and `hi_mar[skip_masked]` run MAR's faster
path where the installed unit has that option (`all` includes them then). Weights are random: speed
does not depend on them; fp32 throughout.

Per unit: trunk passes per image (all images of the batch share them; `num_steps` is what the unit
predicts), seconds per image, and the bound measured in the same run (`mmar.roofline`): every trunk pass
and head call is recorded and priced in FLOPs and bytes; its bound is max(bytes / bandwidth,
flops / throughput), with the bandwidth of copying a 256 MB tensor and the throughput of an fp32 matmul
of the trunk's widest shape over all tokens of a guided pass, both measured here first. A pass is
memory-bound when the first term wins (KV-cached decoding), compute-bound otherwise (bidirectional
passes over every token). The unit's bound is the sum over its calls, labelled by the kind that makes up
most of it; `fraction_of_bound` = bound / measured time (1: at the roofline). The machine's numbers are
the best of a few runs; `--repeats` times the generate call as often and keeps the fastest too, so that
on a shared machine both sides of the fraction are measured alike. Rows that decode one token a pass
(next_token, random_order) also time their matmuls alone: `F.linear` over every weight a pass reads, on
the pass's rows, weight after weight as a step streams them; `linear_ceiling` = bound / (that time + the
cached K and V at the copy bandwidth) is the largest fraction a step built on torch's matmul can reach
here, however cheap the rest. One JSON line per unit on stdout; the markdown table on stderr and in
`--markdown`.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import sys
import time
from pathlib import Path
from typing import NamedTuple

import torch

from mmar.conditioning import ClassCondition
from mmar.errors import ConfigError
from mmar.eval.report import emit_table
from mmar.roofline import CallRecorder, Machine, device_of, linear_chain_seconds, linear_weights, synchronize
from mmar.sampling import Sampler
from mmar.trunk import TRUNK_PRESETS, Trunk, trunk_config
from mmar.units import UNITS, build_unit

FULL = {"preset": "B", "grid": [16, 16], "batch": 8, "vocab": 16384, "latent_dim": 16}
QUICK = {"preset": "debug", "grid": [8, 8], "batch": 2, "vocab": 512, "latent_dim": 16}
VARIANTS = {  # row suffix -> (constructor kwargs, generate kwargs) it sets
    "uncached": ({}, {"use_cache": False}),
    "skip_masked": ({"skip_masked": True}, {}),
    "compiled": ({}, {}),  # the trunk's decode step compiled (`Trunk.compile_decode`)
}
COMPILED = "compiled"  # the variant that runs the trunk with `compile_decode(**--compile-kwargs)`
CACHE_PAIR = ("next_token", "next_token[uncached]")  # --compare-cache: the script's former output
NUM_CLASSES = 1000  # ImageNet's classes


class Row(NamedTuple):
    """One benchmark row: a unit, possibly a variant of it (`next_token[uncached]`)."""

    name: str
    unit: str
    unit_kwargs: dict = {}  # noqa: RUF012 (never mutated)
    generate_kwargs: dict = {}  # noqa: RUF012


def accepts(cls: type, method: str, name: str) -> bool:
    """Whether `cls.method` takes the keyword `name`, following **kwargs up to the base classes."""
    for klass in cls.__mro__:
        if method not in vars(klass):
            continue
        params = inspect.signature(vars(klass)[method]).parameters
        if name in params:
            return True
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return False
    return False


def parse_row(name: str) -> Row:
    """`unit` or `unit[variant]` -> Row; ConfigError for unknown units and unsupported variants."""
    unit, bracket, rest = name.partition("[")
    if unit not in UNITS:
        raise ConfigError(f"unknown unit '{unit}' in --units; choose from {sorted(UNITS)} or 'all'")
    if not bracket:
        return Row(name, unit)
    variant = rest[:-1]
    if not rest.endswith("]") or variant not in VARIANTS:
        raise ConfigError(f"unknown variant in --units {name}; variants: {[f'[{v}]' for v in VARIANTS]}")
    unit_kwargs, generate_kwargs = VARIANTS[variant]
    missing = [k for k in unit_kwargs if not accepts(UNITS[unit], "__init__", k)]
    missing += [k for k in generate_kwargs if not accepts(UNITS[unit], "generate", k)]
    if missing:
        raise ConfigError(f"--units {name}: the installed {unit} unit has no '{missing[0]}' option")
    return Row(name, unit, dict(unit_kwargs), dict(generate_kwargs))


def all_rows() -> list[str]:
    """Every registered unit, plus unit[skip_masked] where masked_ar or hi_mar has that option."""
    names = []
    for unit in UNITS:
        names.append(unit)
        if unit in ("masked_ar", "hi_mar") and accepts(UNITS[unit], "__init__", "skip_masked"):
            names.append(f"{unit}[skip_masked]")
    return names


def resolve_rows(units: list[str], compare_cache: bool) -> list[Row]:
    """The rows of `--units` (names or 'all'), with next_token and next_token[uncached] if asked."""
    names = [n for item in units for n in (all_rows() if item == "all" else [item])]
    if compare_cache:
        names += list(CACHE_PAIR)
    return [parse_row(name) for name in dict.fromkeys(names)]  # in order, without repeats


def parse_unit_kwargs(text: str, rows: list[Row]) -> dict[str, dict]:
    """`--unit-kwargs` JSON -> constructor overrides per row: keyed by unit/row names, or one dict for all."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f'--unit-kwargs is not valid JSON ({err}); e.g. \'{{"masked_ar": {{"steps": 16}}}}\''
        ) from None
    if not isinstance(value, dict):
        raise ConfigError(f"--unit-kwargs must be a JSON object, got {text!r}")
    names = set(UNITS) | {row.name for row in rows}
    if not (value and all(key in names for key in value)):
        return {row.name: dict(value) for row in rows}
    bad = [key for key, kwargs in value.items() if not isinstance(kwargs, dict)]
    if bad:
        raise ConfigError(f"--unit-kwargs['{bad[0]}'] must be an object of constructor arguments")
    return {row.name: {**value.get(row.unit, {}), **value.get(row.name, {})} for row in rows}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--units", nargs="+", default=["all"], help="unit names, unit[variant], or all")
    parser.add_argument("--unit-kwargs", default="{}", help="JSON constructor overrides (by unit or for all)")
    parser.add_argument(
        "--compare-cache", action="store_true", help="add next_token[uncached]: the cache's speed-up"
    )
    parser.add_argument("--preset", choices=sorted(TRUNK_PRESETS), help="trunk preset (default B)")
    parser.add_argument("--grid", type=int, nargs=2, metavar=("H", "W"), help="token grid (default 16 16)")
    parser.add_argument("--batch", type=int, help="images per generate call (default 8)")
    parser.add_argument("--vocab", type=int, help="discrete units' vocabulary (default 16384)")
    parser.add_argument("--latent-dim", type=int, help="continuous units' latent channels (default 16)")
    parser.add_argument("--cfg-scale", type=float, default=2.0, help="guidance scale; 1 turns CFG off")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--warmup", type=int, default=1, help="untimed generate calls of one image first")
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed generate calls per row; the fastest counts"
    )
    parser.add_argument(
        "--compile-kwargs",
        default="{}",
        help='JSON torch.compile arguments of [compiled] rows, e.g. {"mode": "reduce-overhead"}',
    )
    parser.add_argument("--copy-mb", type=int, default=256, help="size of the bandwidth copy (MB)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="debug trunk, 8x8 grid, batch 2, vocab 512")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    return parser


def fill_defaults(args: argparse.Namespace) -> None:
    """Unset scale options take the --quick or the preset-B values; ConfigError on impossible ones."""
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.batch < 1 or min(args.grid) < 1 or args.vocab < 2 or args.latent_dim < 1:
        raise ConfigError(f"need --batch, --grid, --latent-dim >= 1 and --vocab >= 2, got {vars(args)}")
    if args.warmup < 0 or args.copy_mb < 1 or args.repeats < 1:
        raise ConfigError(
            f"need --warmup >= 0, --repeats >= 1 and --copy-mb >= 1, got {args.warmup}, {args.repeats} and "
            f"{args.copy_mb}"
        )
    try:
        args.compile_kwargs = json.loads(args.compile_kwargs)
    except json.JSONDecodeError as err:
        raise ConfigError(
            f'--compile-kwargs is not valid JSON ({err}); e.g. \'{{"mode": "reduce-overhead"}}\''
        ) from None
    if not isinstance(args.compile_kwargs, dict):
        raise ConfigError(
            f"--compile-kwargs must be a JSON object of torch.compile arguments, got {args.compile_kwargs!r}"
        )


class Bench:
    """The shared trunk and class condition, the measured machine, and the generate loop of a row."""

    def __init__(self, args: argparse.Namespace, device: torch.device):
        self.args, self.device, self.grid = args, device, tuple(args.grid)
        torch.manual_seed(args.seed)
        self.config = trunk_config(args.preset)
        self.trunk = Trunk(self.config).to(device).eval()
        self.cond = ClassCondition(NUM_CLASSES, self.config.d_model).to(device).eval()
        self.guided = args.cfg_scale != 1.0
        rows = args.batch * (2 if self.guided else 1)
        widest = self.trunk.blocks[0].ffn.w_gate_up.out_features
        self.matmul = (rows * (math.prod(self.grid) + 1), self.config.d_model, widest)  # a full guided pass
        self.machine = Machine.measure(device, self.matmul, args.copy_mb)

    def build(self, row: Row, overrides: dict) -> torch.nn.Module:
        """The row's unit at this scale, randomly initialised."""
        cls = UNITS[row.unit]
        continuous = cls.token_kinds[0] == "continuous"  # masked_ar models both: MAR's latents
        size = {"latent_dim": self.args.latent_dim} if continuous else {"vocab_size": self.args.vocab}
        torch.manual_seed(self.args.seed)
        try:
            unit = build_unit(
                row.unit,
                d_model=self.config.d_model,
                grid=self.grid,
                **size,
                **{**row.unit_kwargs, **overrides},
            )
        except (TypeError, ConfigError) as err:  # build_unit names model.unit_kwargs; here it is the flag
            raise ConfigError(f"--unit-kwargs for {row.name}: {err}") from None
        return unit.to(self.device).eval()

    def generate(self, unit: torch.nn.Module, row: Row, batch: int) -> torch.Tensor:
        labels = torch.arange(batch, device=self.device) % NUM_CLASSES
        cond = self.cond.for_sampling(labels, guided=self.guided).tokens  # (2B or B, 1, D)
        sampler = Sampler(cfg_scale=self.args.cfg_scale, seed=self.args.seed)
        return unit.generate(self.trunk, cond, self.grid, sampler, **row.generate_kwargs)

    def measure(self, row: Row, unit: torch.nn.Module) -> tuple[dict, torch.Tensor]:
        """Warm up, then time `--repeats` generate calls of the batch (every call of the first recorded)."""
        compiled = row.name.endswith(f"[{COMPILED}]")
        if compiled:
            self.trunk.compile_decode(**self.args.compile_kwargs)
        try:
            # first calls pay allocation, dispatch and kernel compilation; a compiled step compiles per shape
            for _ in range(max(self.args.warmup, compiled)):
                self.generate(unit, row, self.args.batch if compiled else 1)
            seconds, recorder = math.inf, CallRecorder(self.trunk, unit)
            for repeat in range(self.args.repeats):
                with recorder if repeat == 0 else contextlib.nullcontext():
                    synchronize(self.device)
                    start = time.perf_counter()
                    tokens = self.generate(unit, row, self.args.batch)
                    synchronize(self.device)
                    seconds = min(seconds, time.perf_counter() - start)
        finally:
            self.trunk.decode_step = None  # the next rows run eagerly
        return self.summary(row, unit, recorder, seconds), tokens

    def summary(self, row: Row, unit: torch.nn.Module, recorder: CallRecorder, seconds: float) -> dict:
        machine, batch = self.machine, self.args.batch
        costs = recorder.costs()
        bounds = [
            (call.module == "trunk", cost.memory_bound(machine), cost.bound(machine)) for call, cost in costs
        ]
        bound = sum(b for _, _, b in bounds)
        memory = sum(b for _, is_memory, b in bounds if is_memory)
        passes = [is_memory for is_trunk, is_memory, _ in bounds if is_trunk]
        params = sum(p.numel() for m in (self.trunk, unit, self.cond) for p in m.parameters())
        return {
            "unit": row.name,
            "preset": self.args.preset,
            "grid": list(self.grid),
            "batch": batch,
            "cfg_scale": self.args.cfg_scale,
            "device": str(self.device),
            "threads": torch.get_num_threads(),
            "repeats": self.args.repeats,
            "params_m": params / 1e6,
            "passes_per_image": len(passes),
            "num_steps": unit.num_steps(self.grid),
            "seconds": seconds,
            "seconds_per_image": seconds / batch,
            "tokens_per_s": batch * math.prod(self.grid) / seconds,
            "bound": "memory" if memory >= bound - memory else "compute",
            "memory_bound_passes": sum(passes),
            "compute_bound_passes": len(passes) - sum(passes),
            "bound_seconds_per_image": bound / batch,
            "trunk_bound_seconds": sum(b for is_trunk, _, b in bounds if is_trunk),
            "head_bound_seconds": sum(b for is_trunk, _, b in bounds if not is_trunk),
            "fraction_of_bound": bound / seconds,
            "gbytes": sum(cost.bytes for _, cost in costs) / 1e9,
            "gflops": sum(cost.flops for _, cost in costs) / 1e9,
            "bandwidth_gb_s": machine.bandwidth / 1e9,
            "matmul_tflop_s": machine.throughput / 1e12,
            "matmul_shape": list(self.matmul),
            **self.linear_ceiling(recorder, bound),
        }

    def linear_ceiling(self, recorder: CallRecorder, bound: float) -> dict:
        """Rows that feed one new token a pass (KV-cached decoding): the time their passes' matmuls take
        by `F.linear` alone, each weight streamed once a pass (`linear_chain_seconds`), and the largest
        fraction of the bound a step with those matmuls can reach: bound / (that time + the time of reading
        the cached K and V at the copy bandwidth), however little the rest of the step costs."""
        passes = recorder.passes
        if not passes or any(call.tokens != 1 for call in passes):
            return {}
        calls = [(w, passes[-1].rows) for w in linear_weights([self.trunk])]
        heads = [call for call in recorder.calls if call.module != "trunk"]
        for name in dict.fromkeys(call.module for call in heads):  # each head its share of calls a pass
            rows = next(call.rows for call in heads if call.module == name)
            times = round(sum(call.module == name for call in heads) / len(passes))
            calls += [(w, rows) for w in linear_weights([recorder.modules[name]])] * times
        seconds = linear_chain_seconds(calls, max(3, self.args.repeats), self.device) * len(passes)
        cost, element = recorder.trunk_cost, next(self.trunk.parameters()).element_size()
        kv = sum(cost.kv_elements(call.rows, call.keys) for call in passes) * element / self.machine.bandwidth
        return {
            "linear_seconds_per_image": seconds / self.args.batch,
            "kv_bound_seconds_per_image": kv / self.args.batch,
            "linear_ceiling": bound / (seconds + kv),
        }


def markdown(results: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| unit | passes / image | s / image | bound | bound s / image | fraction of bound "
        "| passes memory / compute | heads' part of the bound | ceiling of F.linear |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        heads = r["head_bound_seconds"] / (r["head_bound_seconds"] + r["trunk_bound_seconds"])
        lines.append(
            f"| {r['unit']} | {r['passes_per_image']} | {r['seconds_per_image']:.4g} | {r['bound']} | "
            f"{r['bound_seconds_per_image']:.3g} | {r['fraction_of_bound']:.3f} | "
            f"{r['memory_bound_passes']} / {r['compute_bound_passes']} | {heads:.2f} | "
            f"{format(r['linear_ceiling'], '.3f') if 'linear_ceiling' in r else '-'} |"
        )
    return "\n".join(lines) + "\n"


def compare_cache(results: dict[str, dict], tokens: dict[str, torch.Tensor]) -> None:
    """Once both next_token rows ran (the former output): the uncached row gets the KV cache's speed-up
    and whether both drew the same tokens."""
    cached, uncached = CACHE_PAIR
    if not all(name in results for name in CACHE_PAIR):
        return
    row = results[uncached]
    row["cache_speedup"] = row["seconds"] / results[cached]["seconds"]
    row["same_tokens"] = bool(torch.equal(tokens[cached], tokens[uncached]))
    print(
        f"KV-cache speed-up: {row['cache_speedup']:.1f}x tokens/s (cached / uncached, same run); "
        f"same tokens: {row['same_tokens']}",
        file=sys.stderr,
    )


def run_rows(bench: Bench, rows: list[Row], overrides: dict[str, dict]) -> dict[str, dict]:
    """Measure every row, printing its JSON line as soon as it is done."""
    results, drawn = {}, {}
    for row in rows:
        unit = bench.build(row, overrides[row.name])
        result, tokens = bench.measure(row, unit)
        results[row.name] = result
        if row.name in CACHE_PAIR:
            drawn[row.name] = tokens
            compare_cache(results, drawn)
        print(
            f"{row.name:>24}: {result['passes_per_image']:5d} passes, "
            f"{result['seconds_per_image']:.4g} s/image, {result['bound']}-bound at "
            f"{result['fraction_of_bound']:.3f} of the bound"
            + (
                f" (at most {result['linear_ceiling']:.3f} with F.linear's matmuls)"
                if "linear_ceiling" in result
                else ""
            ),
            file=sys.stderr,
        )
        print(json.dumps(result), flush=True)
    return results


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        fill_defaults(args)
        device = device_of(args.device)
        rows = resolve_rows(args.units, args.compare_cache)
        overrides = parse_unit_kwargs(args.unit_kwargs, rows)
        bench = Bench(args, device)
        header = (
            f"preset {args.preset}, grid {args.grid[0]}x{args.grid[1]}, batch {args.batch}, CFG "
            f"{args.cfg_scale:g}, {device} ({torch.get_num_threads()} threads); copy bandwidth "
            f"{bench.machine.bandwidth / 1e9:.3g} GB/s, fp32 matmul {bench.machine.throughput / 1e12:.3g} "
            f"TFLOP/s at {list(bench.matmul)}"
        )
        print(header, file=sys.stderr)
        results = list(run_rows(bench, rows, overrides).values())
    except ConfigError as err:
        parser.error(str(err))
    table = markdown(results, header)
    emit_table(table, args.markdown)
    return results


if __name__ == "__main__":
    main()
