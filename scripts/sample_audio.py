"""Audio sampling from a generator checkpoint: class-conditional clips, or continuations of given clips.

    python scripts/sample_audio.py --ckpt runs/audio/next_token_delay/checkpoints/last.ckpt \
        --out runs/audio/samples --per-class 4 --cfg-scale 3.0 --embedded-metrics
    python scripts/sample_audio.py --ckpt ... --out runs/audio/continued --continue-from notes --num-clips 48
    python scripts/sample_audio.py --ckpt ... --out ... --continue-from my_clips/ --classes 7

Class-conditional: --classes (default all) x --per-class clips. Continuation: --continue-from an audio
file (.wav/.flac/.ogg), a folder of them, or `notes` (the first --num-clips clips of the embedded notes'
val split, with their own pitch classes); each clip is read at the generator's sample rate, length and
channels, its first --given-frames latent frames are given and their samples kept bit for bit in the
output (`GeneratorModule.continue_clips`), the rest is generated, conditioned on --classes (one per clip or
one for all; default the clips' labels, or the null class for files).

Writes clips/<i>.wav and clips/<i>.png (a log-mel spectrogram) for the first --write-clips clips,
samples.npz (float32 `audio` [N, C, samples] in [-1, 1], `labels` [N], `sample_rate`) and metrics.json
(sampler, timing, trunk passes per clip; with --embedded-metrics the embedded pitch classifier's class
accuracy and Fréchet distance against held-out notes, `mmar.eval.audio.NotesMetrics`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import torch

from mmar.audio_io import AUDIO_EXTENSIONS, read_audio, save_spectrogram, write_wav
from mmar.errors import ConfigError, run_or_exit
from mmar.io import write_json, write_npz, write_outputs
from mmar.lit.loading import load_generator
from mmar.sampling import (
    add_sampler_arguments,
    class_labels,
    given_labels,
    sample_in_batches,
    sampler_from_arguments,
)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ckpt", required=True, help="audio generator checkpoint (.ckpt) or exported folder (mmar export)"
    )
    p.add_argument("--out", default="runs/audio/samples", help="output folder")
    p.add_argument("--classes", type=int, nargs="*", help="class ids (default: all; continuation: see above)")
    p.add_argument("--per-class", type=int, default=4, help="clips per class (class-conditional)")
    p.add_argument("--continue-from", help="an audio file, a folder of them, or 'notes'")
    p.add_argument("--num-clips", type=int, default=48, help="--continue-from notes: clips")
    p.add_argument("--given-frames", type=int, default=10, help="latent frames given (continuation)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--write-clips", type=int, default=16, help="clips written as WAV and PNG (-1: all)")
    add_sampler_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="batch i uses seed + i")
    p.add_argument("--embedded-metrics", action="store_true", help="embedded pitch-classifier metrics")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def num_classes(model) -> int:
    return model.conditioning.num_classes


def clips_to_continue(model, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """(clips [N, C, samples] in [-1, 1], labels [N]) to continue."""
    channels, samples = model.input_shape
    rate = model.tokenizer.sample_rate
    if args.continue_from == "notes":
        from mmar.data.audio import EmbeddedNotesDataModule

        if args.num_clips < 1:
            raise ConfigError(f"--num-clips must be >= 1, got {args.num_clips}")
        data = EmbeddedNotesDataModule(
            sample_rate=rate, duration=samples / rate, num_clips_val=args.num_clips
        )
        data.setup()
        items = [data.val_dataset[i] for i in range(args.num_clips)]
        return torch.stack([item["audio"] for item in items]), torch.stack([item["label"] for item in items])
    source = Path(args.continue_from)
    files = [source]
    if source.is_dir():
        files = sorted(f for f in source.iterdir() if f.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise ConfigError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) in {source}")
    clips = torch.stack([read_audio(f, rate, channels, samples) for f in files])
    return clips, torch.full((len(files),), num_classes(model))  # no labels: the null class


def run(args: argparse.Namespace) -> dict:
    model = load_generator(args.ckpt, args.device)
    if model.tokenizer.modality != "audio":
        raise ConfigError(
            f"{args.ckpt} is a {model.tokenizer.modality} generator; use scripts/sample.py (images) or "
            "scripts/sample_video.py (video)"
        )
    sampler = sampler_from_arguments(args)
    clips = None
    if args.continue_from:
        clips, labels = clips_to_continue(model, args)
        labels = given_labels(labels, args.classes, num_classes(model))
    else:
        labels = class_labels(args.classes, num_classes(model), args.per_class)
    if args.embedded_metrics and (labels >= num_classes(model)).any():  # checked before sampling
        raise ConfigError("--embedded-metrics needs a pitch class to check for every clip: pass --classes")
    sampler.seed = args.seed
    audio, seconds, passes = sample_in_batches(  # (N, C, samples) in [-1, 1]
        model,
        labels,
        sampler,
        args.batch_size,
        clips,
        args.given_frames,
        progress=True,
    )
    rate = model.tokenizer.sample_rate

    metrics = {
        "checkpoint": str(args.ckpt),
        "unit": model.unit.name,
        "code_pattern": model.pattern.name,
        "num_clips": len(audio),
        "sample_rate": rate,
        "clip_shape": list(audio.shape[1:]),
        "mode": "continuation" if clips is not None else "class-conditional",
        "sampler": {**asdict(sampler), "seed": args.seed},
        "trunk_passes_per_clip": passes,
        "sampling_seconds": seconds,
        "seconds_per_clip": seconds / len(audio),
    }
    if clips is not None:
        given_samples = args.given_frames * model.tokenizer.downsample
        metrics.update(given_frames=args.given_frames, given_samples=given_samples)
    if args.embedded_metrics:
        from mmar.eval.audio import NotesMetrics

        metrics.update(NotesMetrics(sample_rate=rate, duration=audio.shape[-1] / rate).compute(audio, labels))

    out = Path(args.out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    shown = len(audio) if args.write_clips < 0 else min(args.write_clips, len(audio))
    digits = len(str(max(len(audio) - 1, 0)))
    for j in range(shown):
        write_wav(out / "clips" / f"{j:0{digits}d}.wav", audio[j], rate)
        save_spectrogram(out / "clips" / f"{j:0{digits}d}.png", audio[j], rate)
    arrays = {"audio": audio.numpy(), "labels": labels.numpy(), "sample_rate": rate}
    write_outputs(  # both or none: earlier results stay until the new ones are complete
        out,
        {
            "samples.npz": lambda tmp: write_npz(tmp, **arrays),
            "metrics.json": lambda tmp: write_json(tmp, metrics),
        },
    )
    return metrics


def main(argv=None) -> None:
    args = parse_args(argv)
    metrics = run_or_exit(run, args)
    print(json.dumps({k: v for k, v in metrics.items() if k != "sampler"}, indent=2))
    print(f"wrote {args.out}/clips (WAV + spectrogram PNG), samples.npz, metrics.json")


if __name__ == "__main__":
    main()
