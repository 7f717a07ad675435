"""Text continuation from a StreamModule checkpoint (a text LM, or a unified text + image model).

    python scripts/sample_text.py --ckpt runs/text/lm/checkpoints/last.ckpt \
        --prompt "A list display" --prompt "The with statement" --max-tokens 64 --temperature 0.8 --top-p 0.95
    python scripts/sample_text.py --ckpt runs/unified/shapes/checkpoints/last.ckpt --prompt "two red" \
        --num-samples 4 --temperature 1.0

Each prompt is encoded with the checkpoint's text tokenizer (or --text-tokenizer, which must be the same
one), put after BOS, and continued with the `Sampler` (temperature, top-k, top-p, min-p; guidance is for
text-to-image only) until EOS or --max-tokens. Sample j of prompt i uses seed --seed + j, the same for
every prompt. Prints each continuation; with --out, writes them to a JSON file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mmar.errors import ConfigError, run_or_exit
from mmar.io import atomic_write
from mmar.lit.loading import load_stream
from mmar.sampling import Sampler


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ckpt", required=True, help="StreamModule checkpoint (.ckpt) or exported folder (mmar export)"
    )
    p.add_argument("--prompt", action="append", required=True, help="a prompt (repeatable)")
    p.add_argument("--num-samples", type=int, default=1, help="continuations per prompt")
    p.add_argument("--max-tokens", type=int, default=64, help="most tokens generated per continuation")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0, help="sample j of every prompt uses seed + j")
    p.add_argument("--text-tokenizer", help="the checkpoint's tokenizer at another path (checked)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="write the continuations to this JSON file")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> list[dict]:
    if args.num_samples < 1 or args.max_tokens < 1:
        raise ConfigError(f"--num-samples={args.num_samples} and --max-tokens={args.max_tokens} must be >= 1")
    model = load_stream(args.ckpt, args.device, args.text_tokenizer)
    results = []
    for j in range(args.num_samples):
        seed = args.seed + j
        sampler = Sampler(args.temperature, args.top_k, args.top_p, args.min_p, seed=seed)
        texts = model.continue_text(args.prompt, sampler, args.max_tokens)
        results += [{"prompt": p, "sample": j, "seed": seed, "text": t} for p, t in zip(args.prompt, texts)]
    if args.out:
        atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    return results


def main(argv=None) -> None:
    args = parse_args(argv)
    for result in run_or_exit(run, args):
        print(f"[{result['sample']}] {result['prompt']}{result['text']}")


if __name__ == "__main__":
    main()
