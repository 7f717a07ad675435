"""Train the boundary predictor of the subobject tokenizer on the shapes data, and score it against SLIC.

The predictor (`tokenizers_visual.segmenters.BoundarySegmenter`, Chen et al., 2024, "Subobject-level Image
Tokenization") learns the ground-truth boundary maps of `mmar.data.ShapesDataModule` with BCE. Then, on the
val split, the segments of each segmenter (learnt boundary + watershed, SLIC, Felzenszwalb) are scored by
tolerant boundary precision / recall (`mmar.eval.segmentation`) against the ground-truth segment maps, and
the fraction of images segmented into exactly the true number of segments (objects + background) is
reported. Writes into --out: segmenter.json + segmenter.safetensors (the predictor, for `boundary_path`
of the subobject tokenizer), metrics.json and segments.png (image | truth | boundary probability |
learnt segments | SLIC segments, one row per val image).

Example:
    python scripts/train_boundary.py --out runs/tokenizers/shapes_subobject/boundary
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmar.data.shapes import ShapesDataModule
from mmar.errors import run_or_exit
from mmar.eval.segmentation import boundary_map, boundary_precision_recall, segment_boundary_scores
from mmar.io import atomic_write
from tokenizers_visual.segmenters import BoundarySegmenter, FelzenszwalbSegmenter, Segmenter, SLICSegmenter


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--steps", type=int, default=300, help="training steps (batches)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=16, help="channels of the boundary net")
    parser.add_argument("--depth", type=int, default=3, help="3x3 conv layers of the boundary net")
    parser.add_argument("--threshold", type=float, default=0.5, help="boundary probability threshold")
    parser.add_argument("--min-marker-area", type=int, default=8, help="smallest marker in pixels")
    parser.add_argument("--compactness", type=float, default=0.001, help="compact watershed (0: plain)")
    parser.add_argument("--num-val", type=int, default=512, help="val images to score")
    parser.add_argument("--tolerance", type=int, default=1, help="boundary match distance in pixels")
    parser.add_argument("--slic-segments", type=int, default=8, help="n_segments of the SLIC baseline")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-png", type=int, default=8, help="val images drawn in segments.png")
    return parser.parse_args(argv)


def train(segmenter: BoundarySegmenter, data: ShapesDataModule, steps: int, lr: float) -> float:
    """Adam on the boundary BCE for `steps` batches; returns the mean loss of the last 20 steps."""
    optimizer = torch.optim.Adam(segmenter.parameters(), lr=lr)
    losses: list[float] = []
    batches = iter(())
    segmenter.train()
    for _ in tqdm(range(steps), desc="boundary", mininterval=2.0):
        batch = next(batches, None)
        if batch is None:  # new epoch
            batches = iter(data.train_dataloader())
            batch = next(batches)
        loss = segmenter.loss(batch["image"], batch["segments"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    segmenter.eval()
    return float(np.mean(losses[-20:]))


@torch.no_grad()
def evaluate(
    segmenters: dict[str, Segmenter], boundary: BoundarySegmenter, data: ShapesDataModule, tolerance: int
) -> dict[str, dict[str, float]]:
    """Boundary P/R/F1 of each segmenter's segments and of the thresholded boundary map, on the val split."""
    preds: dict[str, list[torch.Tensor]] = {name: [] for name in segmenters}
    truth, prob_maps = [], []
    for batch in data.val_dataloader():
        truth.append(batch["segments"])
        prob_maps.append(torch.sigmoid(boundary.boundary_logits(batch["image"])))
        for name, segmenter in segmenters.items():
            preds[name].append(segmenter.segment(batch["image"]))
    target = torch.cat(truth)  # [N, H, W]
    num_true = target.flatten(1).amax(1) + 1  # [N] objects + background
    metrics = {}
    for name, parts in preds.items():
        segments = torch.cat(parts)  # [N, H, W]
        num_pred = segments.flatten(1).amax(1) + 1  # [N]
        metrics[name] = {
            **segment_boundary_scores(segments, target, tolerance),
            "mean_segments": num_pred.float().mean().item(),
            "exact_count": (num_pred == num_true).float().mean().item(),
        }
    raw = torch.cat(prob_maps) >= boundary.threshold  # [N, H, W]
    metrics["boundary_map"] = boundary_precision_recall(raw, boundary_map(target), tolerance)
    metrics["truth"] = {"mean_segments": num_true.float().mean().item()}
    return metrics


@torch.no_grad()
def save_png(
    path: Path, boundary: BoundarySegmenter, slic: Segmenter, data: ShapesDataModule, n: int
) -> None:
    """Rows of image | truth | boundary probability | learnt segments | SLIC segments, upscaled 4x."""
    from PIL import Image
    from skimage.segmentation import mark_boundaries

    batch = next(iter(data.val_dataloader()))
    x = batch["image"][:n]
    rgb = ((x + 1) / 2).permute(0, 2, 3, 1).numpy()  # [n, H, W, 3] in [0, 1]
    prob = torch.sigmoid(boundary.boundary_logits(x)).numpy()  # [n, H, W]
    rows = []
    for i, (learnt, sl) in enumerate(zip(boundary.segment(x).numpy(), slic.segment(x).numpy())):
        panels = [
            rgb[i],
            mark_boundaries(rgb[i], batch["segments"][i].numpy(), color=(1, 1, 1), mode="inner"),
            np.repeat(prob[i][..., None], 3, axis=-1),
            mark_boundaries(rgb[i], learnt, color=(1, 1, 1), mode="inner"),
            mark_boundaries(rgb[i], sl, color=(1, 1, 1), mode="inner"),
        ]
        rows.append(np.concatenate(panels, axis=1))
    grid = (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)
    image = Image.fromarray(grid).resize((grid.shape[1] * 4, grid.shape[0] * 4), Image.NEAREST)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    torch.manual_seed(args.seed)
    data = ShapesDataModule(
        image_size=args.image_size, batch_size=args.batch_size, num_val=args.num_val, seed=args.seed
    )
    boundary = BoundarySegmenter(
        in_channels=3,
        width=args.width,
        depth=args.depth,
        threshold=args.threshold,
        min_marker_area=args.min_marker_area,
        compactness=args.compactness,
    )
    start = time.perf_counter()
    final_loss = train(boundary, data, args.steps, args.lr)
    train_seconds = time.perf_counter() - start
    boundary.save_pretrained(out)
    slic = SLICSegmenter(n_segments=args.slic_segments)
    segmenters = {"boundary": boundary, "slic": slic, "felzenszwalb": FelzenszwalbSegmenter()}
    metrics = evaluate(segmenters, boundary, data, args.tolerance)
    result = {
        "args": vars(args),
        "final_bce": final_loss,
        "train_seconds": train_seconds,
        "threads": torch.get_num_threads(),
        "val": metrics,
    }
    atomic_write(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))
    if args.num_png > 0:
        save_png(out / "segments.png", boundary, slic, data, args.num_png)
    for name, m in metrics.items():
        print(f"{name:>14}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()))
    print(f"boundary predictor saved to {out.resolve()} (trained in {train_seconds:.1f} s)")
    return result


def main(argv: list[str] | None = None) -> dict:
    return run_or_exit(run, parse_args(argv))


if __name__ == "__main__":
    main()
