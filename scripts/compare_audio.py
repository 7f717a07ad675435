"""Train the audio tokenizers and generators of configs/audio/ and compare them in two tables (docs/audio.md).

    python scripts/compare_audio.py                          # train, score, write docs/audio.md
    python scripts/compare_audio.py --part tokenizers        # only the tokenizer table
    python scripts/compare_audio.py --part generators --skip-training   # re-score trained generators

Every recipe trains for its max_steps; the wall-clock budgets (--tokenizer-minutes, --budget-minutes, the
trainer's max_time) are only caps. Both tables report the steps each run reached, its training time and
seconds per step, and mark a run the cap stopped early (`capped`) or slower than its recipe's
`# expected_seconds_per_step` (`slow Nx`; `mmar.eval.step_budget`), so a row means the same on every
machine.

Tokenizers: each recipe of --tokenizer-recipes is trained by `mmar fit`, then its exported tokenizer
encodes and decodes --num-clips held-out notes (`mmar.eval.audio.reconstruction_report`): bitrate,
multi-scale mel distance, SI-SDR, STFT distance and codebook usage; residual codecs also at every number
of levels.

Generators: every recipe of --recipes uses the same trunk (4 layers, width 128), data, optimiser and
cap. Each then samples --per-class clips of each of the 12 pitch classes (guidance --cfg-scale,
constant; temperature 1; seed = batch index) and continues --num-clips held-out notes from their first
--given-frames latent frames, conditioned on their own pitch class. The embedded pitch classifier
(`mmar.eval.audio.NotesMetrics`) scores both: class accuracy and the classifier-feature Fréchet distance
against held-out notes (not FAD); continuations are scored on what was generated, the given samples
silenced (notes start at random onsets, so leading silence is ordinary input). Trunk passes per clip are
counted during sampling; seconds per clip is the wall time of class-conditional sampling divided by the
clips (CPU). One example per unit, its first sample of each pitch class C to B in a row, goes to
docs/audio_<recipe>.wav (and .png, its spectrogram).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import yaml

from mmar.audio_io import save_spectrogram, write_wav
from mmar.checkpoint_io import read_checkpoint
from mmar.data.audio import PITCH_CLASSES, EmbeddedNotesDataModule
from mmar.eval.audio import NotesMetrics, reconstruction_report
from mmar.eval.report import merge_rows, train_and_score, train_recipe, write_marked
from mmar.eval.step_budget import RUN_HEADER, cap_minutes, run_cells, run_plan, warn_if_marked
from mmar.lit.loading import load_generator
from mmar.lit.run_record import read_run_record
from mmar.sampling import Sampler, sample_in_batches
from mmar.tokenizer import load_tokenizer

TOKENIZER_RECIPES = ["configs/audio/notes_codec.yaml", "configs/audio/notes_kl.yaml"]
RECIPES = [
    f"configs/audio/notes_{name}.yaml" for name in ("next_token_delay", "next_block_frames", "masked_ar")
]
NUM_CLASSES = len(PITCH_CLASSES)


def held_out_notes(n: int, sample_rate: int, duration: float) -> dict[str, torch.Tensor]:
    """The first n notes of the embedded val split, with their pitch classes."""
    data = EmbeddedNotesDataModule(sample_rate=sample_rate, duration=duration, num_clips_val=n)
    data.setup()
    items = [data.val_dataset[i] for i in range(n)]
    return {key: torch.stack([item[key] for item in items]) for key in ("audio", "label")}


# ------------------------------------------------------------------------------------------- tokenizers
def run_record_path(recipe: str) -> Path:
    """Where a tokenizer run's RunRecord goes: its recipe's default_root_dir (it has no checkpoint)."""
    config = yaml.safe_load(Path(recipe).read_text())
    return Path(config["trainer"]["default_root_dir"]) / "run_record.json"


def score_tokenizer(recipe: str, notes: dict, seconds: float | None, minutes: float) -> dict:
    config = yaml.safe_load(Path(recipe).read_text())
    tokenizer = load_tokenizer(config["model"]["init_args"]["export_dir"])
    with torch.no_grad():
        report = reconstruction_report(tokenizer, notes["audio"])
    row = {
        "recipe": recipe,
        "tokenizer": tokenizer.name,
        "steps": None,
        "train_seconds": seconds,
        **read_run_record(run_record_path(recipe)),  # steps and the trainer's own clock
        **run_plan(recipe),
        **report,
    }
    warn_if_marked(row, minutes)
    if getattr(tokenizer, "num_quantizers", 1) > 1:  # every prefix of the residual levels is a codec
        per_level = []
        for q in range(1, tokenizer.num_quantizers + 1):
            with torch.no_grad():
                level = reconstruction_report(tokenizer, notes["audio"], num_quantizers=q)
            per_level.append({k: level[k] for k in ("bitrate", "mel_distance", "si_sdr")})
        row["per_level"] = per_level
    return row


def tokenizer_table(rows: list[dict]) -> str:
    header = ["tokenizer", "recipe", *RUN_HEADER, "bitrate (bit/s)", "mel distance", "SI-SDR (dB)"]
    header += ["STFT distance", "codebook usage per level", "mel distance / SI-SDR at 1, 2, ... levels"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    fmt = lambda value, spec: "n/a" if value is None else format(value, spec)
    for r in rows:
        usage = r.get("codebook_usage")
        levels = r.get("per_level")
        lines.append(
            f"| {r['tokenizer']} | {Path(r['recipe']).stem} | {' | '.join(run_cells(r))} | "
            f"{fmt(r.get('bitrate'), '.0f')} | "
            f"{r['mel_distance']:.3f} | {r['si_sdr']:.2f} | {r['stft_distance']:.3f} | "
            + (" / ".join(f"{u:.2f}" for u in usage) if usage else "continuous")
            + " | "
            + (
                ", ".join(f"{lv['mel_distance']:.3f} / {lv['si_sdr']:.1f}" for lv in levels)
                if levels
                else "-"
            )
            + " |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- generators
@torch.no_grad()
def score_generator(ckpt: Path, recipe: str, args, metrics: NotesMetrics, notes: dict) -> dict:
    model = load_generator(ckpt)
    checkpoint = read_checkpoint(ckpt, mmap=True)
    labels = torch.arange(NUM_CLASSES).repeat_interleave(args.per_class)  # grouped by class
    sampler = Sampler(cfg_scale=args.cfg_scale, seed=0)  # batch i seeded i
    clips, seconds, passes = sample_in_batches(model, labels, sampler, 96)
    example = torch.cat(list(clips[:: args.per_class]), dim=-1)  # the first clip of each class, C to B
    stem = Path(recipe).stem.removeprefix("notes_")
    write_wav(Path(args.docs).parent / f"audio_{stem}.wav", example, args.sample_rate)
    save_spectrogram(Path(args.docs).parent / f"audio_{stem}.png", example, args.sample_rate)

    continued, _, _ = sample_in_batches(model, notes["label"], sampler, 96, notes["audio"], args.given_frames)
    continued[..., : args.given_frames * model.tokenizer.downsample] = 0  # score the generated part only
    scored = metrics.compute(clips, labels)
    scored_continued = metrics.compute(continued, notes["label"])
    trained = [model.trunk, model.unit, model.conditioning]
    return {
        "unit": model.unit.name,
        "tokenizer": model.tokenizer.name,
        "code_pattern": model.pattern.name,
        "block": str((model.hparams.unit_kwargs or {}).get("block", "")),
        "parameters": sum(p.numel() for m in trained for p in m.parameters()),
        "steps": checkpoint["global_step"],
        "trunk_passes_per_clip": passes,
        "seconds_per_clip": seconds / len(clips),
        "num_clips": len(clips),
        "class_accuracy": scored["audio_class_accuracy"],
        "classifier_fd": scored["audio_classifier_fd"],
        "classifier_fd_real_same_n": scored["audio_classifier_fd_real_same_n"],
        "continued_class_accuracy": scored_continued["audio_class_accuracy"],
        "num_continued": len(notes["label"]),
    }


def reference_rows(metrics: NotesMetrics, notes: dict, tokenizers: list[str]) -> list[dict]:
    """The classifier on real held-out notes and on their reconstructions by each tokenizer: the ceilings
    of the columns for any model and for a model over that tokenizer."""
    real = plain(metrics.compute(notes["audio"], notes["label"]))
    rows = [{"recipe": "real held-out notes", "unit": "real notes", **real}]
    for path in tokenizers:
        with torch.no_grad():
            tokenizer = load_tokenizer(path)
            recon = tokenizer.decode(tokenizer.encode(notes["audio"])).clamp(-1, 1)
        scored = plain(metrics.compute(recon, notes["label"]))
        row = {"recipe": f"{tokenizer.name} reconstructions", "unit": "reconstructions", **scored}
        rows.append({**row, "tokenizer": tokenizer.name})
    return rows


def plain(scored: dict) -> dict:
    return {
        "class_accuracy": scored["audio_class_accuracy"],
        "classifier_fd": scored["audio_classifier_fd"],
        "classifier_fd_real_same_n": scored["audio_classifier_fd_real_same_n"],
    }


def generator_table(rows: list[dict]) -> str:
    header = [
        "unit",
        "tokens",
        *RUN_HEADER,
        "passes / clip",
        "s / clip",
        "class acc.",
        "classifier FD",
    ]
    header += ["FD of real notes (same n)", "continued: class acc.", "example"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    fmt = lambda row, key, spec: "n/a" if row.get(key) is None else format(row[key], spec)
    for r in rows:
        stem = Path(r["recipe"]).stem.removeprefix("notes_")
        tokens = r.get("tokenizer", "-")
        if r.get("code_pattern"):
            tokens += f", {r['code_pattern']}" + (f" ({r['block']} blocks)" if r.get("block") else "")
        example = f"[wav](audio_{stem}.wav), [png](audio_{stem}.png)" if "steps" in r else "-"
        lines.append(
            f"| {r['unit']} | {tokens} | {' | '.join(run_cells(r))} | "
            f"{fmt(r, 'trunk_passes_per_clip', '.0f')} | {fmt(r, 'seconds_per_clip', '.3f')} | "
            f"{r['class_accuracy']:.3f} | {r['classifier_fd']:.2f} | "
            f"{fmt(r, 'classifier_fd_real_same_n', '.2f')} | "
            f"{fmt(r, 'continued_class_accuracy', '.3f')} | {example} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("all", "tokenizers", "generators"), default="all")
    p.add_argument("--tokenizer-recipes", nargs="*", default=TOKENIZER_RECIPES)
    p.add_argument("--recipes", nargs="*", default=RECIPES)
    p.add_argument("--tokenizer-minutes", type=cap_minutes, default=30.0, help="wall-clock cap per tokenizer")
    p.add_argument("--budget-minutes", type=cap_minutes, default=45.0, help="wall-clock cap per generator")
    p.add_argument("--skip-training", action="store_true", help="score what is already trained")
    p.add_argument("--per-class", type=int, default=20, help="clips per pitch class (12 classes)")
    p.add_argument("--num-clips", type=int, default=240, help="held-out notes (reconstruction, continuation)")
    p.add_argument("--given-frames", type=int, default=5, help="latent frames given when continuing")
    p.add_argument("--cfg-scale", type=float, default=3.0)
    p.add_argument("--sample-rate", type=int, default=8000, help="the recipes' sample rate")
    p.add_argument("--duration", type=float, default=0.5, help="the recipes' clip length in seconds")
    p.add_argument("--docs", default="docs/audio.md")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    np.random.seed(0)
    docs = Path(args.docs)
    notes = held_out_notes(args.num_clips, args.sample_rate, args.duration)
    if args.part in ("all", "tokenizers"):
        rows = []
        for recipe in args.tokenizer_recipes:
            minutes = args.tokenizer_minutes
            record = run_record_path(recipe)
            seconds = None if args.skip_training else train_recipe(recipe, minutes, None, None, record)
            rows.append(score_tokenizer(recipe, notes, seconds, minutes))
        order = TOKENIZER_RECIPES
        rows = merge_rows(rows, docs.with_name("audio_tokenizers.json"), "recipe", order, ["train_seconds"])
        write_marked(docs, "audio_tokenizers", tokenizer_table(rows), "Audio")
        print(tokenizer_table(rows))
    if args.part in ("all", "generators"):
        metrics = NotesMetrics(sample_rate=args.sample_rate, duration=args.duration)
        scorer = lambda config, ckpt: score_generator(ckpt, config, args, metrics, notes)
        rows = train_and_score(args.recipes, scorer, args.budget_minutes, None, args.skip_training)
        exports = [
            yaml.safe_load(Path(r).read_text())["model"]["init_args"]["export_dir"]
            for r in args.tokenizer_recipes
        ]
        rows += reference_rows(metrics, notes, [e for e in exports if Path(e).is_dir()])
        order = [*RECIPES, "real held-out notes"]
        rows = merge_rows(rows, docs.with_name("audio_generators.json"), "recipe", order, ["train_seconds"])
        write_marked(docs, "audio_generators", generator_table(rows), "Audio")
        print(generator_table(rows))


if __name__ == "__main__":
    main()
