"""Video sampling from a generator checkpoint: class-conditional clips, or continuations of given clips.

    python scripts/sample_video.py --ckpt runs/video/next_token/checkpoints/last.ckpt \
        --out runs/video/samples --per-class 2 --cfg-scale 2.0 --embedded-metrics
    python scripts/sample_video.py --ckpt runs/video/next_token/checkpoints/last.ckpt \
        --out runs/video/continued --continue-from moving_digits --num-clips 64 --given-frames 1
    python scripts/sample_video.py --ckpt ... --out ... --continue-from my_clip.gif --classes 3

Class-conditional: --classes (default all) x --per-class clips. Continuation (video prediction,
image-to-video): --continue-from a video file (.gif/.mp4/.webm/.npy), a folder of them, or
`moving_digits` (the first --num-clips clips of the embedded val split, with their own labels); the first
--given-frames latent frames of each clip are given and kept bit for bit in the output
(`GeneratorModule.continue_clips`), the rest is generated, conditioned on --classes (one per clip or one
for all; default the clips' labels, or the null class for files). A text-conditional moving-digits model
(captions such as "a 3 moving left") takes the same class ids, turned into their captions.

Writes clips/<i>.gif and clips/<i>.mp4 (the first --write-clips clips), strip.png (the first --strip-rows
clips, a row of frames each), samples.npz (uint8 `videos` [N, T, H, W, C] and `labels` [N]: the layout
scripts/eval_fvd.py reads) and metrics.json (sampler, timing, trunk passes per clip; with
--embedded-metrics the moving-digits classifier's class and motion accuracy, temporal consistency and
Fréchet distance against held-out clips — embedded metrics, not FVD). For FVD-sized runs (2048+ clips) on
several devices, resumable, use scripts/sample_eval.py, which takes video checkpoints too.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from mmar.data.video import DIRECTIONS, NUM_CLASSES, captions_of
from mmar.errors import ConfigError, run_or_exit
from mmar.eval.fid import to_uint8
from mmar.io import write_json, write_npz, write_outputs
from mmar.lit.loading import load_generator
from mmar.sampling import (
    add_sampler_arguments,
    class_labels,
    given_labels,
    sample_in_batches,
    sampler_from_arguments,
)
from mmar.video_io import VIDEO_EXTENSIONS, read_video, save_strip, write_gif, write_mp4

NUM_LABELS = NUM_CLASSES * len(DIRECTIONS)  # moving digits: a class per digit and direction


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ckpt", required=True, help="video generator checkpoint (.ckpt) or exported folder (mmar export)"
    )
    p.add_argument("--out", default="runs/video/samples", help="output folder")
    p.add_argument("--classes", type=int, nargs="*", help="class ids (default: all; continuation: see above)")
    p.add_argument("--per-class", type=int, default=4, help="clips per class (class-conditional)")
    p.add_argument("--continue-from", help="a video file, a folder of them, or 'moving_digits'")
    p.add_argument("--num-clips", type=int, default=64, help="--continue-from moving_digits: clips")
    p.add_argument("--given-frames", type=int, default=1, help="latent frames given (continuation)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--write-clips", type=int, default=16, help="clips written as GIF and MP4 (-1: all)")
    p.add_argument("--strip-rows", type=int, default=16, help="clips shown in strip.png")
    p.add_argument("--fps", type=float, default=8.0)
    add_sampler_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="batch i uses seed + i")
    p.add_argument("--embedded-metrics", action="store_true", help="moving-digits classifier metrics")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def text_conditioned(model) -> bool:
    return hasattr(model.conditioning, "encoder_name")


def num_classes(model) -> int:
    """A class-conditional model's classes; a text-conditional one takes the moving digits' 80 captions."""
    return getattr(model.conditioning, "num_classes", NUM_LABELS)


def label_kind(model) -> str:
    """What a moving-digits generator's classes are: "digit_direction" (80 classes) or "digit"."""
    return "digit_direction" if num_classes(model) == NUM_LABELS else "digit"


def conditions_of(model, labels: torch.Tensor):
    """What the model's condition reads: the labels, or for a text condition their captions."""
    return captions_of(labels) if text_conditioned(model) else labels


def conditioning_clips(model, args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    """(clips [N, C, T, H, W] in [-1, 1], labels [N], true directions [N] or None) to continue."""
    c, t, h, w = model.input_shape
    if args.continue_from == "moving_digits":
        from mmar.data.video import MovingDigitsDataModule

        if args.num_clips < 1:
            raise ConfigError(f"--num-clips must be >= 1, got {args.num_clips}")
        data = MovingDigitsDataModule(
            image_size=h, num_frames=t, num_clips_val=args.num_clips, labels=label_kind(model)
        )
        data.setup()
        items = [data.val_dataset[i] for i in range(args.num_clips)]
        clips = torch.stack([item["video"] for item in items])
        directions = torch.stack([item["direction"] for item in items])
        return clips, torch.stack([item["label"] for item in items]), directions
    source = Path(args.continue_from)
    files = [source]
    if source.is_dir():
        files = sorted(f for f in source.iterdir() if f.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        raise ConfigError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) in {source}")
    clips = []
    for file in files:
        video = torch.from_numpy(read_video(file, num_frames=t, channels=c))  # (T, H', W', C) uint8
        if tuple(video.shape[1:3]) != (h, w):
            raise ConfigError(
                f"{file} has {video.shape[2]}x{video.shape[1]} frames but the generator makes {w}x{h}; "
                "resize the clip first"
            )
        clips.append(video.permute(3, 0, 1, 2).float() / 127.5 - 1)  # (C, T, H, W) in [-1, 1]
    if text_conditioned(model) and not args.classes:
        raise ConfigError(
            "a text-conditional model continues a file with --classes (the moving-digits captions)"
        )
    null = num_classes(model)  # no --classes: the unconditional (null) class
    return torch.stack(clips), torch.full((len(files),), null), None


def run(args: argparse.Namespace) -> dict:
    model = load_generator(args.ckpt, args.device)
    if model.tokenizer.modality != "video":
        raise ConfigError(f"{args.ckpt} is an image generator; use scripts/sample.py for images")
    sampler = sampler_from_arguments(args)
    clips, directions = None, None
    if args.continue_from:
        clips, labels, directions = conditioning_clips(model, args)
        labels = given_labels(labels, args.classes, num_classes(model))
    else:
        labels = class_labels(args.classes, num_classes(model), args.per_class)
    if args.embedded_metrics and (labels >= num_classes(model)).any():  # checked before sampling
        raise ConfigError("--embedded-metrics needs a digit to check for every clip: pass --classes")
    sampler.seed = args.seed
    videos, seconds, passes = sample_in_batches(  # (N, C, T, H, W) in [-1, 1]
        model,
        labels,
        sampler,
        args.batch_size,
        clips,
        args.given_frames,
        conditions=lambda batch: conditions_of(model, batch),
        progress=True,
    )
    uint8 = to_uint8(videos).permute(0, 2, 3, 4, 1).numpy()  # (N, T, H, W, C)

    metrics = {
        "checkpoint": str(args.ckpt),
        "unit": model.unit.name,
        "num_clips": len(videos),
        "clip_shape": list(videos.shape[1:]),
        "mode": "continuation" if clips is not None else "class-conditional",
        "sampler": {**asdict(sampler), "seed": args.seed},
        "trunk_passes_per_clip": passes,
        "sampling_seconds": seconds,
        "seconds_per_clip": seconds / len(videos),
    }
    if clips is not None:
        kept = model.tokenizer.frames_of(args.given_frames)
        metrics.update(given_frames=args.given_frames, given_video_frames=kept)
    if args.embedded_metrics:
        metrics.update(embedded_metrics(model, videos, labels, directions))

    out = Path(args.out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    shown = len(uint8) if args.write_clips < 0 else min(args.write_clips, len(uint8))
    digits = len(str(max(len(uint8) - 1, 0)))
    for j in range(shown):
        write_gif(out / "clips" / f"{j:0{digits}d}.gif", uint8[j], fps=args.fps)
        write_mp4(out / "clips" / f"{j:0{digits}d}.mp4", uint8[j], fps=args.fps)
    write_outputs(  # all or none: earlier results stay until the new ones are complete
        out,
        {
            "samples.npz": lambda tmp: write_npz(tmp, videos=uint8, labels=labels.numpy()),
            "strip.png": lambda tmp: save_strip(tmp, uint8[: max(args.strip_rows, 1)]),
            "metrics.json": lambda tmp: write_json(tmp, metrics),
        },
    )
    return metrics


def embedded_metrics(model, videos: torch.Tensor, labels: torch.Tensor, directions: torch.Tensor | None):
    """The moving-digits classifier's numbers: digits and directions from the labels (80 classes: direction
    * 10 + digit), or the true directions of the continued clips."""
    from mmar.eval.video import MovingDigitsMetrics

    if videos.shape[1] != 1:
        raise ConfigError("--embedded-metrics scores moving digits (grayscale clips); drop it for other data")
    if directions is None and label_kind(model) == "digit_direction":
        directions = labels // NUM_CLASSES
    metrics = MovingDigitsMetrics(image_size=videos.shape[-1], num_frames=videos.shape[2])
    return metrics.compute(videos, labels % NUM_CLASSES, directions)


def main(argv=None) -> None:
    args = parse_args(argv)
    metrics = run_or_exit(run, args)
    print(json.dumps({k: v for k, v in metrics.items() if k != "sampler"}, indent=2))
    print(f"wrote {args.out}/clips, strip.png, samples.npz, metrics.json")


if __name__ == "__main__":
    main()
