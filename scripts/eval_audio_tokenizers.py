"""Reconstruction metrics of saved audio tokenizers on embedded notes, one JSON line per tokenizer.

    python scripts/eval_audio_tokenizers.py runs/tokenizers/notes_rvq/tokenizer [more folders ...] \\
        --num-clips 64 --duration 0.5 --out runs/eval/audio_tokenizers.json

Each folder is loaded with `mmar.tokenizer.load_tokenizer`; --num-clips val notes of
`EmbeddedNotesDataModule` are synthesised at the tokenizer's sample rate (its `sample_rate`, else
--sample-rate) and channel count, cut to a whole number of the tokenizer's hop, encoded and decoded,
and scored with `mmar.eval.audio.reconstruction_report`: bitrate, DAC's multi-scale mel distance, SI-SDR
(dB), the multi-resolution STFT distance and, for discrete tokenizers, codebook usage and perplexity per
level. For tokenizers with several quantizer levels (`num_quantizers`, `encode(x, num_quantizers=q)`)
the line also holds "per_num_quantizers": the bitrate, mel distance and SI-SDR when coding with the first
q = 1..Q levels. --out writes all lines as one JSON list.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mmar.data.audio import EmbeddedNotesDataModule
from mmar.errors import ConfigError, run_or_exit
from mmar.eval.audio import reconstruction_report
from mmar.tokenizer import load_tokenizer


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tokenizers", nargs="+", help="saved tokenizer folders (config.json + model.safetensors)")
    p.add_argument("--num-clips", type=int, default=64, help="val notes to encode and decode")
    p.add_argument("--duration", type=float, default=0.5, help="seconds per note")
    p.add_argument("--seed", type=int, default=0, help="seed of the embedded notes")
    p.add_argument("--sample-rate", type=int, help="for tokenizers without a sample_rate attribute")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", help="also write the results as a JSON list to this file")
    return p.parse_args(argv)


def notes_for(tokenizer, sample_rate: int, args: argparse.Namespace) -> torch.Tensor:
    """Val notes [N, C, samples] at `sample_rate` and the tokenizer's channel count, samples a multiple of
    its hop."""
    if args.num_clips < 1:
        raise ConfigError(f"--num-clips={args.num_clips} must be >= 1")
    data = EmbeddedNotesDataModule(
        sample_rate, args.duration, num_clips_train=1, num_clips_val=args.num_clips, seed=args.seed
    )
    data.setup()
    clips = torch.stack([data.val_dataset[i]["audio"] for i in range(args.num_clips)])  # [N, 1, S]
    hop = int(getattr(tokenizer, "hop", None) or getattr(tokenizer, "downsample", 1))
    samples = clips.shape[-1] // hop * hop
    if samples == 0:
        raise ConfigError(
            f"--duration {args.duration} s gives {clips.shape[-1]} samples, less than the '{tokenizer.name}' "
            f"tokenizer's hop of {hop}; use a longer --duration"
        )
    channels = int(getattr(tokenizer, "in_channels", 1))
    return clips[..., :samples].repeat(1, channels, 1)


def evaluate(path: str, args: argparse.Namespace) -> dict:
    tokenizer = load_tokenizer(path, map_location=args.device)
    if getattr(tokenizer, "modality", "audio") != "audio":
        raise ConfigError(
            f"'{path}' holds a {tokenizer.modality} tokenizer ('{tokenizer.name}'), not an audio one"
        )
    sample_rate = getattr(tokenizer, "sample_rate", None) or args.sample_rate
    if sample_rate is None:
        raise ConfigError(f"the '{tokenizer.name}' tokenizer has no sample_rate; pass --sample-rate")
    clips = notes_for(tokenizer, sample_rate, args)
    row = {"tokenizer": str(path), "name": tokenizer.name, "kind": tokenizer.kind, "seed": args.seed}
    row["duration"] = clips.shape[-1] / sample_rate
    row |= reconstruction_report(tokenizer, clips, sample_rate=sample_rate, batch_size=args.batch_size)
    levels = int(getattr(tokenizer, "num_quantizers", 1) or 1)
    if tokenizer.kind == "discrete" and levels > 1:
        row["per_num_quantizers"] = []
        for q in range(1, levels + 1):
            report = reconstruction_report(tokenizer, clips, q, sample_rate, args.batch_size)
            keep = ("bitrate", "mel_distance", "si_sdr")
            row["per_num_quantizers"].append(
                {"num_quantizers": q} | {k: report[k] for k in keep if k in report}
            )
    return row


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    with torch.no_grad():
        for path in args.tokenizers:
            rows.append(evaluate(path, args))
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2))
    return rows


def main(argv=None) -> list[dict]:
    return run_or_exit(run, parse_args(argv))


if __name__ == "__main__":
    main()
