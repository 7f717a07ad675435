"""Trunk passes per image and quality of speculative Jacobi decoding against plain decoding, measured on
one class-conditional digits generator (a next_token or random_order unit) in one run.

    python scripts/compare_speculative.py                    # quickstart checkpoint, 500 images, batch 1
    python scripts/compare_speculative.py --out runs/quickstart/speculative --docs docs/performance.md

The same labels (--per-class images of each of the 10 digit classes) are drawn three times with the same
sampler settings (--cfg-scale, 3.0 as the quickstart samples; --temperature 1; --top-k; batch i of
--batch-size seeded --seed + i):

- plain: one token per trunk pass;
- sjd: exact speculative Jacobi decoding, --window draft tokens verified per pass; the samples follow the
  model's distribution exactly (`mmar.units.speculative`);
- lantern: SJD with LANTERN's relaxed acceptance (--lantern-k neighbours, --lantern-delta budget); not
  exact: it trades the distribution for fewer passes.

Each decoding first samples one untimed warm-up image. Per decoding, one JSON line on stdout (all of them
in --out/metrics.json; with --docs a table between `<!-- speculative:begin -->` and
`<!-- speculative:end -->` of that page):

- `passes_per_image`: trunk passes counted by a hook (`mmar.trunk.PassCounter`), averaged over batches.
  With the default --batch-size 1 these are exactly the passes of one image's decoding. With a larger
  batch every image of a batch is decoded in the batch's passes, and SJD's ragged acceptance makes a batch
  as slow as its slowest row, so SJD's count rises with the batch size (plain decoding's does not);
- `passes_ratio`: plain decoding's passes per image / this decoding's (>= 1: fewer passes);
- `seconds_per_image`: sampling wall time / images;
- `digits_class_accuracy` with its binomial standard error sqrt(p (1 - p) / n), and `digits_classifier_fd`
  with a bootstrap standard error (`mmar.eval.frechet.bootstrap_fd_se`: --bootstrap resamples of the
  images' classifier features against the fixed reference). Both are the embedded digits metric
  (`mmar.eval.DigitsMetrics`), not Inception FID;
- against plain decoding: the difference, the combined standard error sqrt(se^2 + se_plain^2) and whether
  |difference| <= combined standard error (`accuracy_within_se`, `fd_within_se`);
- `claim_met` (exact SJD only): passes per image at least --target-ratio (1.5) times fewer than plain
  decoding with the class accuracy and the FD both within their combined standard error.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from mmar.data.digits import NUM_CLASSES
from mmar.errors import ConfigError, run_or_exit
from mmar.eval.embedded import DigitsMetrics
from mmar.eval.frechet import bootstrap_fd_se
from mmar.eval.report import write_marked
from mmar.lit.loading import load_generator
from mmar.sampling import Sampler, class_labels, sample_in_batches

DECODINGS = ("plain", "sjd", "lantern")
MARKER = "speculative"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", default="runs/quickstart/ar/checkpoints/last.ckpt", help="generator checkpoint")
    p.add_argument("--per-class", type=int, default=50, help="images per digit class (10 classes)")
    p.add_argument(
        "--batch-size", type=int, default=1, help="images per generate call (1: passes of one image)"
    )
    p.add_argument("--window", type=int, default=16, help="SJD and LANTERN: draft tokens per trunk pass")
    p.add_argument("--lantern-k", type=int, default=10, help="LANTERN: neighbours per code")
    p.add_argument("--lantern-delta", type=float, default=0.1, help="LANTERN: total-variation budget")
    p.add_argument("--cfg-scale", type=float, default=3.0, help="guidance scale (the quickstart's 3.0)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="batch i uses seed + i; also the bootstrap's seed")
    p.add_argument("--bootstrap", type=int, default=50, help="resamples of the FD's bootstrap standard error")
    p.add_argument("--target-ratio", type=float, default=1.5, help="exact SJD's target: plain passes / SJD's")
    p.add_argument("--out", help="folder to write metrics.json to")
    p.add_argument("--docs", help="markdown page whose speculative table is rewritten (docs/performance.md)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def samplers(args: argparse.Namespace) -> dict[str, Sampler]:
    """The three decodings' samplers: the same settings, only `speculative` differs."""
    base = Sampler(
        temperature=args.temperature,
        top_k=args.top_k,
        cfg_scale=args.cfg_scale,
        seed=args.seed,
        window=args.window,
        lantern_k=args.lantern_k,
        lantern_delta=args.lantern_delta,
    )
    return {name: replace(base, speculative=None if name == "plain" else name) for name in DECODINGS}


def check_options(args: argparse.Namespace) -> None:
    if args.per_class < 1 or args.batch_size < 1:
        raise ConfigError(f"--per-class ({args.per_class}) and --batch-size ({args.batch_size}) must be >= 1")
    if args.bootstrap < 2:
        raise ConfigError(f"--bootstrap must be >= 2 resamples, got {args.bootstrap}")
    if args.target_ratio <= 0:
        raise ConfigError(f"--target-ratio must be > 0, got {args.target_ratio}")


def check_model(model, ckpt: str) -> None:
    """A one-line error unless the generator decodes speculatively and makes what the digits metric scores."""
    if not model.unit.supports_speculative:
        raise ConfigError(
            f"the {model.unit.name} unit of '{ckpt}' has no speculative decoding; compare a next_token or "
            "random_order generator"
        )
    shape = tuple(model.input_shape)
    classes = getattr(model.conditioning, "num_classes", None)
    if classes != NUM_CLASSES or len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2]:
        raise ConfigError(
            f"the embedded digits metric scores class-conditional ({NUM_CLASSES} classes) single-channel "
            f"square images, but '{ckpt}' makes {shape} with {classes} classes; pass a digits generator"
        )


def settings(name: str, sampler: Sampler) -> str:
    if name == "plain":
        return "one token per pass"
    if name == "sjd":
        return f"window {sampler.window}"
    return f"window {sampler.window}, k {sampler.lantern_k}, delta {sampler.lantern_delta:g}"


def binomial_se(p: float, n: int) -> float:
    """Standard error of a fraction p of n independent trials."""
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def score(
    metrics: DigitsMetrics, images: torch.Tensor, labels: torch.Tensor, resamples: int, seed: int
) -> dict:
    """Class accuracy and classifier FD of images [N, 1, S, S], each with its standard error."""
    accuracy = (metrics.predict(images) == labels).sum().item() / len(images)
    features = metrics.features(images)  # (N, 64)
    return {
        "digits_class_accuracy": accuracy,
        "digits_class_accuracy_se": binomial_se(accuracy, len(images)),
        "digits_classifier_fd": metrics.digits_classifier_fd(images),
        "digits_classifier_fd_se": bootstrap_fd_se(
            features, metrics.reference_mu, metrics.reference_sigma, resamples, seed
        ),
    }


def against_plain(row: dict, plain: dict | None, target_ratio: float) -> dict:
    """The differences to plain decoding and whether they lie within the combined standard error."""
    fields = {}
    for short, key in (("accuracy", "digits_class_accuracy"), ("fd", "digits_classifier_fd")):
        if plain is None:
            fields.update(
                {f"{short}_difference": None, f"{short}_combined_se": None, f"{short}_within_se": None}
            )
            continue
        difference = row[key] - plain[key]
        combined = math.hypot(row[f"{key}_se"], plain[f"{key}_se"])
        fields.update(
            {
                f"{short}_difference": difference,
                f"{short}_combined_se": combined,
                f"{short}_within_se": abs(difference) <= combined,
            }
        )
    fields["claim_met"] = None
    if row["decoding"] == "sjd" and plain is not None:
        fields["claim_met"] = bool(
            row["passes_ratio"] >= target_ratio and fields["accuracy_within_se"] and fields["fd_within_se"]
        )
    return fields


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    threads = torch.get_num_threads()
    return f"CPU {platform.processor() or platform.machine()}, {threads} thread{'s' * (threads != 1)}"


@torch.no_grad()
def run(args: argparse.Namespace) -> dict:
    check_options(args)
    decodings = samplers(args)  # bad sampler settings fail before the checkpoint loads
    model = load_generator(args.ckpt, args.device)
    check_model(model, args.ckpt)
    labels = class_labels(None, NUM_CLASSES, args.per_class)  # (N,) grouped by class
    metrics = DigitsMetrics(image_size=model.input_shape[-1])
    tokens = math.prod(model.grid)
    rows, plain = [], None
    for name, sampler in decodings.items():
        model.generate(labels[:1], sampler)  # warm-up, untimed: kernels, LANTERN's table
        images, seconds, passes = sample_in_batches(model, labels, sampler, args.batch_size)
        row = {
            "decoding": name,
            "exact": name != "lantern",
            "settings": settings(name, sampler),
            "num_images": len(images),
            "batch_size": args.batch_size,
            "tokens_per_image": tokens,
            "passes_per_batch": passes,
            "passes_per_image": passes,  # every image of a batch is decoded in the batch's passes
            "passes_ratio": (plain["passes_per_image"] if plain else passes) / passes,
            "seconds_per_image": seconds / len(images),
            **score(metrics, images, labels, args.bootstrap, args.seed),
        }
        row.update(against_plain(row, plain, args.target_ratio))
        plain = plain or row
        rows.append(row)
        print(json.dumps(row), flush=True)
    sjd = next(r for r in rows if r["decoding"] == "sjd")
    return {
        "checkpoint": str(args.ckpt),
        "command": args.command,
        "device": device_name(args.device),
        "date": time.strftime("%Y-%m-%d"),
        "num_images": len(labels),
        "per_class": args.per_class,
        "batch_size": args.batch_size,
        "tokens_per_image": tokens,
        "sampler": {k: v for k, v in asdict(decodings["plain"]).items() if k != "speculative"},
        "bootstrap_resamples": args.bootstrap,
        "reference": {
            "digits_classifier_val_accuracy": metrics.classifier_val_accuracy,
            "digits_classifier_fd_real_same_n": metrics.real_fd_at(len(labels)),
            "digits_classifier_fd_train_vs_val": metrics.train_val_fd,
        },
        "claim": {
            "target_ratio": args.target_ratio,
            "sjd_passes_ratio": sjd["passes_ratio"],
            "met": sjd["claim_met"],
        },
        "decodings": rows,
    }


def yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def markdown(result: dict) -> str:
    """The table of `result` (what `run` returns), with the run's command, settings, device and date."""
    sampler = result["sampler"]
    lines = [
        f"`{result['command']}`: {result['num_images']} images ({result['per_class']} per class), "
        f"{result['tokens_per_image']} tokens each, batch {result['batch_size']}, guidance "
        f"{sampler['cfg_scale']:g}, temperature {sampler['temperature']:g}, top-k {sampler['top_k']}, seed "
        f"{sampler['seed']}; {result['device']}, {result['date']}. Standard errors: binomial (accuracy), "
        f"bootstrap of {result['bootstrap_resamples']} resamples (FD); embedded digits metric, not Inception "
        "FID.",
        "",
    ]
    header = ["decoding", "exact", "passes / image", "plain / this", "s / image", "class accuracy"]
    header += ["classifier FD", "accuracy within SE", "FD within SE"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in result["decodings"]:
        lines.append(
            f"| {r['decoding']} ({r['settings']}) | {'yes' if r['exact'] else 'no (relaxed)'} | "
            f"{r['passes_per_image']:.1f} | {r['passes_ratio']:.2f}x | {r['seconds_per_image']:.3f} | "
            f"{r['digits_class_accuracy']:.3f} ± {r['digits_class_accuracy_se']:.3f} | "
            f"{r['digits_classifier_fd']:.3f} ± {r['digits_classifier_fd_se']:.3f} | "
            f"{yes_no(r['accuracy_within_se'])} | {yes_no(r['fd_within_se'])} |"
        )
    claim = result["claim"]
    lines += [
        "",
        f"Exact SJD: {claim['sjd_passes_ratio']:.2f}x fewer passes per image than plain decoding; target "
        f">= {claim['target_ratio']:g}x with class accuracy and FD within their standard error: "
        f"{'met' if claim['met'] else 'not met'}.",
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    args.command = shlex.join(
        ["python", "scripts/compare_speculative.py", *(sys.argv[1:] if argv is None else argv)]
    )
    result = run_or_exit(run, args)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
        print(f"wrote {out / 'metrics.json'}", file=sys.stderr)
    if args.docs:
        write_marked(Path(args.docs), MARKER, markdown(result), "Performance")
        print(f"wrote the speculative table of {args.docs}", file=sys.stderr)


if __name__ == "__main__":
    main()
