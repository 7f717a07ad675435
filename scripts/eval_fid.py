"""FID, sFID, Inception Score and precision/recall of a sample set, by the ADM evaluator's protocol.

    python scripts/eval_fid.py --samples runs/eval/samples.npz --ref VIRTUAL_imagenet256_labeled.npz \
        --out runs/eval/fid.json
    python scripts/eval_fid.py --samples runs/eval/images --ref data/val_images --save-ref runs/ref.npz

--samples: a folder of images or an `.npz` of uint8 images [N, H, W, C] (`arr_0` as ADM's sample batches,
or `images` as scripts/sample.py and scripts/sample_eval.py write). --ref: an ADM-style reference `.npz`
(mu, sigma, mu_s, sigma_s, and arr_0 images for precision/recall), or a folder / `.npz` of images whose
statistics are computed (and saved with --save-ref). Inception weights: --inception-weights PATH, else
torch-fidelity's copy of the 2015 graph from its URL, cached in torch's hub folder. See
docs/evaluation.md for what these numbers are comparable with.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mmar.errors import run_or_exit
from mmar.eval.fid import extract_features, image_batches, image_metrics, load_reference, save_reference
from mmar.eval.inception import InceptionFeatures
from mmar.io import atomic_write, write_json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", required=True, help="folder of images or .npz (arr_0 / images)")
    p.add_argument("--ref", required=True, help="reference .npz (ADM) or folder / .npz of images")
    p.add_argument("--save-ref", help="write the reference statistics computed from --ref here (.npz)")
    p.add_argument("--inception-weights", help="local Inception-v3 (2015) weights (.pth)")
    p.add_argument("--out", help="metrics JSON (default: beside --samples)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    extractor = InceptionFeatures(args.inception_weights).to(args.device)
    reference = load_reference(args.ref, extractor, args.batch_size)
    if args.save_ref:
        save_reference(args.save_ref, reference)
    total, batches = image_batches(args.samples, args.batch_size)
    features = extract_features(extractor, batches, total)
    metrics = {
        **image_metrics(features, reference),
        "num_samples": len(features["pool"]),
        "num_reference": len(reference["pool"]) if "pool" in reference else None,
        "samples": str(args.samples),
        "reference": str(args.ref),
        "inception_weights": str(extractor.weights),
    }
    samples = Path(args.samples)
    out = Path(args.out) if args.out else (samples.parent if samples.suffix else samples) / "fid.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: write_json(tmp, metrics))
    metrics["out"] = str(out)
    return metrics


def main(argv=None) -> None:
    args = parse_args(argv)
    metrics = run_or_exit(run, args)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
