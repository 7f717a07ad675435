"""Sample images for FID (or clips for FVD) at scale: --per-class samples of every class (ADM: 50 x 1000
= 50k images), split over devices with Lightning, resumable.

    python scripts/sample_eval.py --ckpt runs/imagenet/ar_B/checkpoints/last.ckpt --out runs/eval/ar_B \
        --per-class 50 --cfg-scale 2.0 --accelerator gpu --devices 8
    python scripts/eval_fid.py --samples runs/eval/ar_B/samples.npz --ref VIRTUAL_imagenet256_labeled.npz

Image i has class i // per_class. The images are cut into batches of --batch-size; batch b is sampled
with seed `--seed + b`, so image i is the same however many devices share the work and however often the
run restarts (for a given batch size: a batch draws its noise together). Each image is written as
`images/<i>.png`, atomically and exclusively (two writers of one index would fail, not overwrite); a
rerun samples only the batches with a missing image and writes only the missing ones. At the end rank 0
packs every PNG into `samples.npz` in ADM's layout (`arr_0` uint8 [N, H, W, C], `arr_1` labels) and
writes `metrics.json`. A video generator's clips [T, H, W, C] are stored the same way, each PNG a strip
of its T frames side by side, and packed as `arr_0` uint8 [N, T, H, W, C], the layout
`scripts/eval_fvd.py` reads:

    python scripts/sample_eval.py --ckpt runs/video/next_token/checkpoints/last.ckpt --out runs/eval/video \
        --per-class 32 --cfg-scale 2.0
    python scripts/eval_fvd.py --samples runs/eval/video/samples.npz --ref REFERENCE.npz --frames 9
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mmar.errors import ConfigError, run_or_exit
from mmar.eval.fid import to_uint8
from mmar.io import atomic_write, save_npz, write_json
from mmar.lit.loading import load_generator
from mmar.sampling import Sampler, add_sampler_arguments, sampler_from_arguments


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ckpt", required=True, help="generator checkpoint (.ckpt) or exported folder (mmar export)"
    )
    p.add_argument("--out", required=True, help="output folder (images/, samples.npz, metrics.json)")
    p.add_argument("--per-class", type=int, default=50, help="images per class (ADM: 50)")
    p.add_argument("--batch-size", type=int, default=50, help="images per batch; part of each image's seed")
    add_sampler_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="batch b is sampled with seed + b")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--devices", default="auto", help="number of devices (processes), or 'auto'")
    p.add_argument("--strategy", default="auto", help="Lightning strategy (ddp with several devices)")
    return p.parse_args(argv)


class Batches(Dataset):
    """The batches with a missing image: item j -> {"batch": b, "index": [B] image ids, "label": [B],
    "missing": [B] bool}. A batch is always sampled whole (its seed draws for all of it)."""

    def __init__(self, labels: torch.Tensor, batch_size: int, missing: torch.Tensor):
        self.labels, self.batch_size, self.missing = labels, batch_size, missing
        self.todo = sorted({i // batch_size for i in missing.nonzero().flatten().tolist()})

    def __len__(self) -> int:
        return len(self.todo)

    def __getitem__(self, j: int) -> dict:
        b = self.todo[j]
        index = torch.arange(b * self.batch_size, min((b + 1) * self.batch_size, len(self.labels)))
        return {"batch": b, "index": index, "label": self.labels[index], "missing": self.missing[index]}


class SampleBatches(LightningModule):
    """predict_step: a batch of labels -> uint8 images [B, C, H, W] (video clips: strips [B, C, H, T W]),
    sampled with the batch's own seed."""

    def __init__(self, generator: LightningModule, sampler: Sampler, seed: int):
        super().__init__()
        self.generator, self.sampler, self.seed = generator, sampler, seed

    def predict_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        sampler = dataclasses.replace(self.sampler, seed=self.seed + int(batch["batch"]))
        samples = to_uint8(self.generator.generate(batch["label"], sampler).clamp(-1, 1)).cpu()
        if samples.ndim == 5:  # clips (B, C, T, H, W) -> strips (B, C, H, T W): the frames side by side
            samples = samples.permute(0, 1, 3, 2, 4).flatten(3)
        return samples


class PNGWriter(BasePredictionWriter):
    """Writes each missing image of a batch as images/<index>.png, atomically and never over an existing
    file."""

    def __init__(self, folder: Path, digits: int):
        super().__init__(write_interval="batch")
        self.folder, self.digits, self.written = folder, digits, 0

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dl_idx):
        for i, missing, image in zip(batch["index"].tolist(), batch["missing"].tolist(), prediction):
            if missing:
                write_png_exclusive(image_path(self.folder, i, self.digits), image)
                self.written += 1


def image_path(folder: Path, i: int, digits: int) -> Path:
    return folder / f"{i:0{digits}d}.png"


def write_png_exclusive(path: Path, image: torch.Tensor) -> None:
    """uint8 [C, H, W] -> PNG at `path` via a temporary file and a hard link, which fails if it exists."""
    array = image.permute(1, 2, 0).numpy()
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".png.partial")
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(f, format="PNG")
        os.link(tmp, path)  # FileExistsError if another writer got there first
    finally:
        os.unlink(tmp)


def pack(folder: Path, labels: torch.Tensor, digits: int, out: Path, frames: int | None = None) -> None:
    """Every PNG of images/ into an ADM-layout .npz: arr_0 uint8 [N, H, W, C] (strips of clips of `frames`
    frames: [N, T, H, W, C]), arr_1 labels [N]."""
    images = []
    for i in range(len(labels)):
        array = np.asarray(Image.open(image_path(folder, i, digits)))
        array = array[..., None] if array.ndim == 2 else array  # (H, W or T W, C)
        if frames:
            array = array.reshape(array.shape[0], frames, -1, array.shape[-1]).transpose(1, 0, 2, 3)
        images.append(array)
    save_npz(out, arr_0=np.stack(images), arr_1=labels.numpy())


def run(args: argparse.Namespace) -> dict:
    if args.per_class < 1 or args.batch_size < 1:
        raise ConfigError(
            f"--per-class and --batch-size must be >= 1, got {args.per_class} and {args.batch_size}"
        )
    generator, sampler = load_generator(args.ckpt), sampler_from_arguments(args)
    labels = torch.arange(generator.conditioning.num_classes).repeat_interleave(args.per_class)  # (N,)
    out, digits = Path(args.out), max(6, len(str(len(labels) - 1)))
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    missing = torch.tensor([not image_path(folder, i, digits).is_file() for i in range(len(labels))])
    plan = Batches(labels, args.batch_size, missing)
    writer, start, world_size = PNGWriter(folder, digits), time.perf_counter(), 0
    if len(plan):  # every rank lists the same batches: nothing is written before all of them have joined
        trainer = Trainer(
            accelerator=args.accelerator,
            devices=int(args.devices) if args.devices.isdigit() else args.devices,
            strategy=args.strategy,
            logger=False,
            callbacks=[writer],
            enable_checkpointing=False,
        )
        loader = DataLoader(plan, batch_size=None)
        model = SampleBatches(generator, sampler, args.seed)
        trainer.predict(model, loader, return_predictions=False)
        trainer.strategy.barrier()
        world_size = trainer.world_size
        if not trainer.is_global_zero:
            return {"written": writer.written}
    video = generator.tokenizer.modality == "video"
    pack(folder, labels, digits, out / "samples.npz", frames=generator.input_shape[1] if video else None)
    metrics = {
        "checkpoint": str(args.ckpt),
        "num_images": len(labels),
        "per_class": args.per_class,
        "images_missing": int(missing.sum()),
        "batches_sampled": len(plan),
        "processes": world_size,
        "sampling_seconds": time.perf_counter() - start,
        "sampler": {**dataclasses.asdict(sampler), "seed": args.seed},
        "seeds": f"batch b of {args.batch_size} images: seed {args.seed} + b",
    }
    atomic_write(out / "metrics.json", lambda tmp: write_json(tmp, metrics))
    return metrics


def main(argv=None) -> None:
    args = parse_args(argv)
    metrics = run_or_exit(run, args)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
