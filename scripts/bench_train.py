"""Training tokens/s and model-FLOPs utilisation of next_token and masked_ar, measured in one run.

    python scripts/bench_train.py                      # next_token, masked_ar at presets S and B; CPU fp32
    python scripts/bench_train.py --device cuda --markdown runs/bench/train.md   # bf16-mixed autocast
    python scripts/bench_train.py --units masked_ar --presets B --batch 64 --steps 20
    python scripts/bench_train.py --quick              # debug trunk, 8x8 grid, batch 4: seconds

Each row builds a trunk preset, the unit and a class condition the way `GeneratorModule` does, without a
tokenizer: random tokens at the preset-B scale of the papers (16 x 16 ids of a 16384-word vocabulary for
next_token, 16 x 16 latents of 16 channels for masked_ar) and random labels, AdamW with the generator's
betas and weight decay. It runs `--warmup` steps, then times `--steps` more: fp32 on CPU, bf16-mixed
autocast on CUDA (Lightning's "bf16-mixed": bf16 matmuls, fp32 weights and optimiser).

Reported per row: image tokens per second (B N per step), seconds per step, MFU = model FLOPs per step /
step time / peak matmul FLOP/s, the peak measured in the same run (best of a few [B T, d] @ [d, 2 h]
matmuls, the trunk's widest, in the training dtype), and peak memory: CUDA max_memory_allocated, or on
CPU the row's peak resident set size, which includes the process's own (`start_memory_mb`: what was in
use when the row began; the peak is reset through /proc/self/clear_refs where Linux allows, and
`memory_scope` says "process" where it could not be).

Model FLOPs per step (forward + backward, no recomputation), batch B, T positions in the trunk, N image
tokens, L layers, width d, P the Linear weights the trunk applies to every token:

    trunk matmuls   6 B T P            2 per weight forward, 4 backward (input and weight gradients)
    attention       12 B L T^2 d       forward: scores Q K^T and values A V are 2 T^2 d each per layer
                                       (4 T^2 d); backward twice that; dense, also under the causal mask
    next_token      6 B N d V          the vocabulary projection of all N targets (T = N: cond + N - 1)
    masked_ar       4 B N C d          the latent embedding (C channels; no input gradient), T = N + 1
                    + r M (6 P_h - 2 W (C + W))
                                       the flow head (P_h weights, width W) on the M masked tokens repeated
                                       r = head_batch_mul times; its input and time layers need no input
                                       gradient

These are model FLOPs: kernels that recompute (flash attention's backward recomputes the scores, 2.5x the
forward instead of 2x) do more work than MFU credits them with.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from mmar.conditioning import ClassCondition
from mmar.errors import ConfigError
from mmar.eval.report import emit_table
from mmar.roofline import (
    ADALN,
    Linears,
    current_memory,
    device_of,
    matmul_throughput,
    peak_memory,
    release_memory,
    reset_peak_memory,
    synchronize,
)
from mmar.trunk import TRUNK_PRESETS, Trunk, trunk_config
from mmar.units import build_unit

FULL = {"presets": ["S", "B"], "grid": [16, 16], "batch": 32, "vocab": 16384, "latent_dim": 16}
QUICK = {"presets": ["debug"], "grid": [8, 8], "batch": 4, "vocab": 512, "latent_dim": 16}
UNITS = ("next_token", "masked_ar")  # the units whose FLOPs the docstring derives
NUM_CLASSES = 1000
BETAS, WEIGHT_DECAY = (0.9, 0.95), 0.05  # GeneratorModule's AdamW


def trunk_flops(trunk: Trunk, batch: int, seq: int) -> tuple[float, float]:
    """(matmul, attention) FLOPs of a training step of the trunk over [batch, seq] positions."""
    config = trunk.config
    per_row = sum(m.weight.numel() for name, m in trunk.named_modules() if name.split(".")[-1] in ADALN)
    matmul = 6 * batch * seq * Linears.of(trunk, skip=ADALN).params + 6 * batch * per_row
    return matmul, 12 * batch * config.n_layer * seq**2 * config.d_model


def head_flops(unit: torch.nn.Module, batch: int, masked: float) -> float:
    """FLOPs of a training step of the unit's embedding and head; `masked` tokens (masked_ar) per step."""
    n = unit.seq_len
    if unit.name == "next_token":
        return 6 * batch * n * unit.head.proj.weight.numel()  # d V
    head = unit.head
    embed = 4 * batch * n * unit.embed.weight.numel()  # C d
    no_input_grad = head.input.weight.numel() + head.time[0].weight.numel()  # W (C + W)
    return embed + unit.head_batch_mul * masked * (6 * Linears.of(head).params - 2 * no_input_grad)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--units", nargs="+", default=list(UNITS), help=f"any of {list(UNITS)}")
    parser.add_argument("--presets", nargs="+", help="trunk presets (default S B)")
    parser.add_argument("--grid", type=int, nargs=2, metavar=("H", "W"), help="token grid (default 16 16)")
    parser.add_argument("--batch", type=int, help="sequences per step (default 32)")
    parser.add_argument("--vocab", type=int, help="next_token's vocabulary (default 16384)")
    parser.add_argument("--latent-dim", type=int, help="masked_ar's latent channels (default 16)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3; --quick 1)")
    parser.add_argument("--steps", type=int, help="timed steps (default 10; --quick 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="debug trunk, 8x8 grid, batch 4, vocab 512")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    return parser


def fill_defaults(args: argparse.Namespace) -> None:
    """Unset options take the --quick or the full values; ConfigError on impossible ones."""
    defaults = {
        **(QUICK if args.quick else FULL),
        "warmup": 1 if args.quick else 3,
        "steps": 2 if args.quick else 10,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    unknown = [u for u in args.units if u not in UNITS]
    if unknown:
        raise ConfigError(f"bench_train counts the FLOPs of {list(UNITS)}; got --units {unknown[0]}")
    unknown = [p for p in args.presets if p not in TRUNK_PRESETS]
    if unknown:
        raise ConfigError(
            f"unknown trunk preset '{unknown[0]}' in --presets; choose from {sorted(TRUNK_PRESETS)}"
        )
    if args.batch < 1 or min(args.grid) < 1 or args.vocab < 2 or args.latent_dim < 1:
        raise ConfigError(f"need --batch, --grid, --latent-dim >= 1 and --vocab >= 2, got {vars(args)}")
    if args.warmup < 0 or args.steps < 1:
        raise ConfigError(f"need --warmup >= 0 and --steps >= 1, got {args.warmup} and {args.steps}")


class Row:
    """A trunk + unit + class condition, random training data and AdamW on one device."""

    def __init__(self, unit_name: str, preset: str, args: argparse.Namespace, device: torch.device):
        torch.manual_seed(args.seed)
        self.config = trunk_config(preset)
        grid, b = tuple(args.grid), args.batch
        self.trunk = Trunk(self.config).to(device).train()
        self.cond = ClassCondition(NUM_CLASSES, self.config.d_model).to(device).train()
        size = {"vocab_size": args.vocab} if unit_name == "next_token" else {"latent_dim": args.latent_dim}
        self.unit = build_unit(unit_name, d_model=self.config.d_model, grid=grid, **size).to(device).train()
        if unit_name == "next_token":
            self.tokens = torch.randint(0, args.vocab, (b, *grid), device=device)  # (B, H, W)
        else:
            self.tokens = torch.randn(b, *grid, args.latent_dim, device=device)  # (B, H, W, C)
        self.labels = torch.randint(0, NUM_CLASSES, (b,), device=device)  # (B,)
        self.parts = torch.nn.ModuleList([self.trunk, self.cond, self.unit])
        fused = {"fused": True} if device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(
            self.parts.parameters(), 1e-4, BETAS, weight_decay=WEIGHT_DECAY, **fused
        )
        self.autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")
        self.seq, self.device = 0, device

    def step(self) -> torch.Tensor:
        """One AdamW step; returns the number of masked tokens (a 0-d tensor, 0 for next_token)."""
        with self.autocast:
            cond = self.cond(self.labels)
            batch = self.unit.prepare(self.tokens, cond.tokens)
            hidden = self.trunk(batch.inputs, batch.positions, batch.mask)  # (B, T, D)
            loss = self.unit.loss(hidden, batch)["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.seq = batch.inputs.shape[1]
        predicted = batch.extras.get("predicted")
        return predicted.sum() if predicted is not None else torch.zeros((), device=self.device)

    def run(self, warmup: int, steps: int) -> tuple[float, float]:
        """(seconds per timed step, masked tokens per timed step)."""
        for _ in range(warmup):
            self.step()
        synchronize(self.device)
        start, masked = time.perf_counter(), 0
        for _ in range(steps):
            masked = masked + self.step()  # no sync: summed on the device
        synchronize(self.device)
        return (time.perf_counter() - start) / steps, float(masked) / steps


def measure(unit_name: str, preset: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Build, train and time one row; its peak matmul throughput is measured right after."""
    release_memory(device)  # what earlier rows freed
    scope, start_memory = reset_peak_memory(device), current_memory(device)
    row = Row(unit_name, preset, args, device)
    step_seconds, masked = row.run(args.warmup, args.steps)
    memory = peak_memory(device)
    b, n, row_seq = args.batch, row.unit.seq_len, row.seq
    matmul, attention = trunk_flops(row.trunk, b, row_seq)
    head = head_flops(row.unit, b, masked)
    flops = matmul + attention + head
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    widest = row.trunk.blocks[0].ffn.w_gate_up.out_features
    shape = (b * row_seq, row.config.d_model, widest)
    peak = matmul_throughput(device, *shape, dtype=dtype)
    params = sum(p.numel() for p in row.parts.parameters())
    del row
    return {
        "unit": unit_name,
        "preset": preset,
        "grid": list(args.grid),
        "batch": b,
        "image_tokens": n,
        "positions": row_seq,
        "device": str(device),
        "dtype": "bf16-mixed" if device.type == "cuda" else "fp32",
        "threads": torch.get_num_threads(),
        "params_m": params / 1e6,
        "step_seconds": step_seconds,
        "tokens_per_s": b * n / step_seconds,
        "tflops_per_step": flops / 1e12,
        "flops_trunk_matmul": matmul,
        "flops_attention": attention,
        "flops_head": head,
        "masked_per_step": masked,
        "achieved_tflop_s": flops / step_seconds / 1e12,
        "peak_tflop_s": peak / 1e12,
        "matmul_shape": list(shape),
        "mfu": flops / step_seconds / peak,
        "peak_memory_mb": memory / 2**20,
        "start_memory_mb": start_memory / 2**20,
        "memory_scope": scope,
    }


def markdown(results: list[dict], header: str) -> str:
    lines = [
        header,
        "",
        "| unit | preset | params (M) | tokens/s | s / step | TFLOP / step | MFU | peak memory (MB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['unit']} | {r['preset']} | {r['params_m']:.1f} | {r['tokens_per_s']:.4g} | "
            f"{r['step_seconds']:.4g} | {r['tflops_per_step']:.4g} | {r['mfu']:.3f} | "
            f"{r['peak_memory_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        fill_defaults(args)
        device = device_of(args.device)
    except ConfigError as err:
        parser.error(str(err))
    dtype = "bf16-mixed" if device.type == "cuda" else "fp32"
    header = (
        f"grid {args.grid[0]}x{args.grid[1]}, batch {args.batch}, {args.steps} timed steps after "
        f"{args.warmup}, {dtype} on {device} ({torch.get_num_threads()} threads)"
    )
    print(header, file=sys.stderr)
    results = []
    for preset in args.presets:
        for unit_name in args.units:
            result = measure(unit_name, preset, args, device)
            results.append(result)
            print(json.dumps(result), flush=True)
            print(
                f"{unit_name:>12} {preset:>5}: {result['tokens_per_s']:.4g} tokens/s, "
                f"MFU {result['mfu']:.3f}, peak {result['peak_memory_mb']:.0f} MB",
                file=sys.stderr,
            )
    table = markdown(results, header)
    emit_table(table, args.markdown)
    return results


if __name__ == "__main__":
    main()
