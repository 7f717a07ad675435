"""Make a TokenBridge tokenizer: post-training quantisation of a saved continuous tokenizer (Wang et al.,
2025, "Bridging Continuous and Discrete Tokens for Autoregressive Visual Generation").

    python scripts/make_tokenbridge.py --continuous runs/tokenizers/digits_kl/tokenizer --bits 6 \
        --range 3.0 --data digits --out runs/tokenizers/digits_tokenbridge/tokenizer

Wraps the continuous tokenizer in a `PostQuantTokenizer` (2 ** bits Gaussian-quantile levels per latent
channel over [-range, range]), measures on the digits validation split the share of latent values outside
[-range, range] (stored in the tokenizer's config) and the reconstruction PSNR through the continuous and
through the quantised latents, prints them, writes them to `quantization_metrics.json` in --out and saves
the tokenizer there (safetensors + JSON, loadable with `load_tokenizer`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

import tokenizers_visual  # noqa: F401  (registers the tokenizer classes)
from mmar.data.digits import DigitsDataModule
from mmar.errors import run_or_exit
from mmar.eval.tokenizer_metrics import psnr
from tokenizers_visual import PostQuantTokenizer, load_tokenizer

METRICS_NAME = "quantization_metrics.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--continuous", required=True, help="folder of a saved continuous tokenizer (e.g. kl_vae)")
    p.add_argument("--bits", type=int, default=6, help="bits per channel: 2 ** bits levels (default 6 = 64)")
    p.add_argument("--range", type=float, default=3.0, dest="value_range", help="bins cover [-range, range]")
    p.add_argument("--data", default="digits", choices=["digits"], help="data to measure on (val split)")
    p.add_argument("--out", required=True, help="output folder of the TokenBridge tokenizer")
    p.add_argument("--image-size", type=int, default=32, help="digits image size (the tokenizer's)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="digits held-out fraction")
    p.add_argument("--seed", type=int, default=0, help="digits split seed")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


@torch.no_grad()
def evaluate(tokenizer: PostQuantTokenizer, batches: list[torch.Tensor]) -> dict[str, float]:
    """PSNR (dB) against the images of the continuous and the quantised reconstructions, and between them."""
    inner, sums, count = tokenizer.inner, {"continuous": 0.0, "quantized": 0.0, "cont_vs_quant": 0.0}, 0
    levels_used = torch.zeros(tokenizer.channels, tokenizer.vocab_size, dtype=torch.bool)
    for x in tqdm(batches, desc="measuring", unit="batch"):
        z = inner.encode(x)  # (B, h, w, C) normalised latents
        ids = tokenizer.quantize(z)  # (B, h, w, C)
        continuous, quantized = inner.decode(z), tokenizer.decode(ids)  # (B, C_img, H, W) each
        for key, (a, b) in {
            "continuous": (continuous, x),
            "quantized": (quantized, x),
            "cont_vs_quant": (quantized, continuous),
        }.items():
            sums[key] += float(psnr(a, b)) * len(x)
        levels_used[torch.arange(tokenizer.channels), ids.flatten(0, -2).cpu()] = True
        count += len(x)
    return {
        "psnr_continuous": sums["continuous"] / count,
        "psnr_quantized": sums["quantized"] / count,
        "psnr_quantized_vs_continuous": sums["cont_vs_quant"] / count,
        "mean_levels_used_per_channel": float(levels_used.sum(1).float().mean()),
    }


def run(args: argparse.Namespace) -> dict:
    inner = load_tokenizer(args.continuous, map_location=args.device)
    tokenizer = PostQuantTokenizer(inner, bits=args.bits, value_range=args.value_range).to(args.device)
    data = DigitsDataModule(
        image_size=args.image_size, val_fraction=args.val_fraction, seed=args.seed, augment=False
    )
    data.setup()
    images = data.val_dataset.images.to(args.device)  # (N, 1, S, S) in [-1, 1]
    batches = list(images.split(args.batch_size))
    tokenizer.fit_statistics(batches)  # the out-of-range fraction, stored in the config
    metrics = {
        "continuous": str(args.continuous),
        "bits": args.bits,
        "levels": tokenizer.vocab_size,
        "value_range": args.value_range,
        "channels": tokenizer.channels,
        "split": "val",
        "num_images": len(images),
        "out_of_range_fraction": tokenizer.out_of_range_fraction,
        **evaluate(tokenizer, batches),
    }
    out = Path(args.out)
    tokenizer.save_pretrained(out)
    (out / METRICS_NAME).write_text(json.dumps(metrics, indent=2))
    return metrics


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    metrics = run_or_exit(run, args)
    print(json.dumps(metrics, indent=2))
    print(f"tokenizer saved to {Path(args.out).resolve()}")


if __name__ == "__main__":
    main()
