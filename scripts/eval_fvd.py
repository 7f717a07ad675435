"""Fréchet Video Distance of a set of videos against a reference set, in the StyleGAN-V convention.

    python scripts/eval_fvd.py --samples runs/video/samples.npz --ref data/ref_videos.npz --out fvd.json

--samples / --ref: an `.npz` of uint8 videos [N, T, H, W, C] (`videos` or `arr_0`) or a folder of GIFs.
Each video gives one clip of its first --frames (16) frames. Detector: --i3d-weights PATH, else
StyleGAN-V's TorchScript I3D from its URL, cached in torch's hub folder. See docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mmar.errors import run_or_exit
from mmar.eval.fvd import FVD_FRAMES, I3DFeatures, fvd, i3d_features, video_batches
from mmar.io import atomic_write, write_json


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", required=True, help=".npz of uint8 videos [N, T, H, W, C] or a GIF folder")
    p.add_argument("--ref", required=True, help="reference videos, same formats")
    p.add_argument("--i3d-weights", help="local StyleGAN-V I3D TorchScript file (i3d_torchscript.pt)")
    p.add_argument("--frames", type=int, default=FVD_FRAMES, help="frames per clip (16 is the standard)")
    p.add_argument("--out", help="metrics JSON (default: beside --samples)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    detector = I3DFeatures(args.i3d_weights, args.frames).to(args.device)
    features = {}
    for name in ("samples", "ref"):
        total, batches = video_batches(getattr(args, name), args.batch_size)
        features[name] = i3d_features(detector, batches, total)
    metrics = {
        "fvd": fvd(features["samples"], features["ref"]),
        "frames": args.frames,
        "num_samples": len(features["samples"]),
        "num_reference": len(features["ref"]),
        "i3d_weights": str(detector.weights),
    }
    samples = Path(args.samples)
    out = Path(args.out) if args.out else (samples.parent if samples.suffix else samples) / "fvd.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: write_json(tmp, metrics))
    return metrics


def main(argv=None) -> None:
    args = parse_args(argv)
    metrics = run_or_exit(run, args)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
