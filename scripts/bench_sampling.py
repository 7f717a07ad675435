"""Tokens/s of KV-cached vs uncached next-token generation, printed as a ratio from one run.

    python scripts/bench_sampling.py                    # preset B, 256 tokens (16x16), batch 8, CPU
    python scripts/bench_sampling.py --preset debug --grid 8 8

The network is randomly initialised: speed does not depend on the weights. Both runs draw the same
tokens (same seed), so they do the same work apart from the cache.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mmar.conditioning import ClassCondition
from mmar.sampling import Sampler
from mmar.trunk import Trunk, trunk_config
from mmar.units import build_unit


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="B", help="trunk preset")
    parser.add_argument("--grid", type=int, nargs=2, default=(16, 16), help="token grid (256 tokens)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=16384, help="LlamaGen's VQ-16 codebook size")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = trunk_config(args.preset)
    trunk = Trunk(config).to(args.device).eval()
    unit = build_unit("next_token", d_model=config.d_model, grid=tuple(args.grid), vocab_size=args.vocab)
    unit = unit.to(args.device).eval()
    cond = ClassCondition(1000, config.d_model).to(args.device).eval()
    c = cond.for_sampling(torch.arange(args.batch, device=args.device), guided=False).tokens
    n_tokens = args.batch * unit.seq_len
    params = sum(p.numel() for p in [*trunk.parameters(), *unit.parameters(), *cond.parameters()])
    print(
        f"preset {args.preset} ({params / 1e6:.1f}M params), {unit.seq_len} tokens, batch {args.batch}, "
        f"{torch.get_num_threads()} threads on {args.device}"
    )

    warmup = build_unit("next_token", d_model=config.d_model, grid=(1, 2), vocab_size=args.vocab).to(
        args.device
    )
    warmup.load_state_dict(unit.state_dict())
    for use_cache in (True, False):  # first calls pay one-off allocation and dispatch costs
        warmup.generate(trunk, c, (1, 2), Sampler(seed=0), use_cache=use_cache)

    results = {}
    for name, use_cache in [("cached", True), ("uncached", False)]:
        start = time.perf_counter()
        tokens = unit.generate(trunk, c, tuple(args.grid), Sampler(seed=0), use_cache=use_cache)
        seconds = time.perf_counter() - start
        results[name] = {"seconds": seconds, "tokens_per_s": n_tokens / seconds, "tokens": tokens}
        print(f"{name:>8}: {seconds:8.2f} s  {n_tokens / seconds:8.1f} tokens/s")
    assert torch.equal(results["cached"]["tokens"], results["uncached"]["tokens"])
    ratio = results["cached"]["tokens_per_s"] / results["uncached"]["tokens_per_s"]
    print(f"KV-cache speed-up: {ratio:.1f}x tokens/s (cached / uncached, same run)")
    summary = {k: {"seconds": v["seconds"], "tokens_per_s": v["tokens_per_s"]} for k, v in results.items()}
    print(
        json.dumps(
            {"preset": args.preset, "batch": args.batch, "tokens": unit.seq_len, **summary, "speedup": ratio}
        )
    )


if __name__ == "__main__":
    main()
