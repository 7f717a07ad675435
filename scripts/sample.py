"""Class-conditional sampling from a generator checkpoint: a PNG grid (one row per class) + metrics JSON.

    python scripts/sample.py --ckpt runs/quickstart/ar/checkpoints/last.ckpt --out runs/quickstart/samples \
        --per-class 50 --cfg-scale 2.0 --embedded-metrics

Writes `grid.png` (first --grid-columns samples of every class), `samples.npz` (uint8 images [N, H, W, C]
and labels) and `metrics.json` (sampler settings, timing, and with --embedded-metrics the digits-only
classifier accuracy and Fréchet distance — an embedded metric, not Inception FID).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import torch
from torchvision.utils import save_image

from mmar.errors import run_or_exit
from mmar.io import write_json, write_npz, write_outputs
from mmar.lit.loading import load_generator
from mmar.sampling import add_sampler_arguments, class_labels, sample_in_batches, sampler_from_arguments


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ckpt", required=True, help="generator checkpoint (.ckpt) or exported folder (mmar export)"
    )
    p.add_argument("--out", default="runs/samples", help="output folder")
    p.add_argument("--per-class", type=int, default=10, help="samples per class")
    p.add_argument("--classes", type=int, nargs="*", help="class ids (default: all)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--grid-columns", type=int, default=10, help="samples per class shown in grid.png")
    add_sampler_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="batch i uses seed + i")
    p.add_argument("--embedded-metrics", action="store_true", help="digits-only classifier accuracy + FD")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    model = load_generator(args.ckpt, args.device)
    labels = class_labels(args.classes, model.conditioning.num_classes, args.per_class)  # (N,) by class
    sampler = sampler_from_arguments(args)
    sampler.seed = args.seed  # batch i: seed + i
    # passes measured: speculative decoding makes fewer than N
    images, seconds, passes = sample_in_batches(model, labels, sampler, args.batch_size, progress=True)

    uint8 = ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # ADM convention: round
    shown = images.view(-1, args.per_class, *images.shape[1:])[:, : args.grid_columns]
    metrics = {
        "checkpoint": str(args.ckpt),
        "num_images": len(images),
        "sampler": {**asdict(sampler), "seed": args.seed},
        "forward_passes_per_image": model.unit.num_steps(model.grid),
        "trunk_passes_per_batch": passes,
        "sampling_seconds": seconds,
        "images_per_second": len(images) / seconds,
    }
    if args.embedded_metrics:
        from mmar.eval.embedded import DigitsMetrics

        metrics.update(DigitsMetrics(image_size=images.shape[-1]).compute(images, labels))
    grid = {"nrow": shown.shape[1], "normalize": True, "value_range": (-1, 1), "format": "png"}
    arrays = {"images": uint8.permute(0, 2, 3, 1).numpy(), "labels": labels.numpy()}
    write_outputs(  # all three or none: earlier results stay until the new ones are complete
        args.out,
        {
            "samples.npz": lambda tmp: write_npz(tmp, **arrays),
            "grid.png": lambda tmp: save_image(shown.flatten(0, 1), tmp, **grid),
            "metrics.json": lambda tmp: write_json(tmp, metrics),
        },
    )
    return metrics


def main(argv=None) -> None:
    args = parse_args(argv)
    metrics = run_or_exit(run, args)
    print(json.dumps({k: v for k, v in metrics.items() if k != "sampler"}, indent=2))
    print(f"wrote {args.out}/grid.png, samples.npz, metrics.json")


if __name__ == "__main__":
    main()
