"""Measure every tokenizer recipe the same way and write the table in docs/tokenizers.md.

    python scripts/eval_tokenizers.py --train          # train each recipe (timed), then evaluate
    python scripts/eval_tokenizers.py                  # evaluate the exported tokenizers only

For each config (default: the quickstart VQ and every configs/tokenizers/*.yaml) the tokenizer is
loaded from the config's `export_dir` and scored on the val split of the config's own DataModule: PSNR,
SSIM, codebook usage (unique ids over the split / vocabulary), and an embedded reconstruction Fréchet
distance in the digits classifier's feature space for 1-channel data (not Inception rFID), plus for
single-codebook VQ tokenizers the perturbed one (pFID-style, RobusTok): reconstructions from tokens of
which a share --pfid-alpha was replaced by one of their --pfid-delta nearest codes. Training time is the
wall time of `mmar fit` when --train is given; recipes that post-train an exported tokenizer (their
`tokenizer` is a path) need a generator first and are only evaluated (see their header). Tokenizers
made by scripts (TokenBridge: scripts/make_tokenbridge.py) are scored from their folder on the digits
val split (--exported LABEL=DIR). Rows of recipes
not named in --configs are kept, and a re-evaluated row keeps its earlier training time. Reconstruction
grids go to runs/eval_tokenizers/.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml
from torchvision.utils import save_image

from mmar.eval import DigitsMetrics, as_frames, perturbed_fd, psnr, reconstruction_fd, ssim
from mmar.eval.report import merge_rows, write_marked
from mmar.lit.tokenizer_module import model_inputs
from tokenizers_visual import VQTokenizer, load_tokenizer

DIGITS = {"class_path": "mmar.data.DigitsDataModule", "init_args": {"image_size": 32}}
EXPORTED = [  # made by scripts, or scored on the digits val split to compare with the rows above
    "digits_tokenbridge=runs/tokenizers/digits_tokenbridge/tokenizer",
    "digits_robust_vq_post_on_val=runs/tokenizers/digits_robust_vq_post/tokenizer",
]
DEFAULT_CONFIGS = [
    "configs/quickstart/digits_vq.yaml",
    *sorted(map(str, Path("configs/tokenizers").glob("*.yaml"))),
]


def build_datamodule(data: dict):
    module, _, name = data["class_path"].rpartition(".")
    datamodule = getattr(importlib.import_module(module), name)(**data.get("init_args", {}))
    datamodule.setup("validate")
    return datamodule


@torch.no_grad()
def evaluate(tokenizer, loader, max_batches: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Mean PSNR/SSIM over the split, usage, plus originals and reconstructions (as frames)."""
    n, psnr_sum, ssim_sum, ids, originals, recons = 0, 0.0, 0.0, [], [], []
    for i, batch in enumerate(loader):
        if i == max_batches:
            break
        x = model_inputs(batch)
        tokens = tokenizer.encode(x)
        recon = tokenizer.decode(tokens).clamp(-1, 1)
        psnr_sum += psnr(recon, x).item() * len(x)
        ssim_sum += ssim(recon, x).item() * len(x)
        n += len(x)
        if tokenizer.kind == "discrete":
            ids.append(tokens.flatten())
        originals.append(as_frames(x))
        recons.append(as_frames(recon))
    usage = torch.cat(ids).unique().numel() / tokenizer.vocab_size if ids else None
    metrics = {"psnr": psnr_sum / n, "ssim": ssim_sum / n, "usage": usage, "num_items": n}
    return metrics, torch.cat(originals), torch.cat(recons)


def run_config(config_path: str, args: argparse.Namespace) -> dict:
    config = yaml.safe_load(Path(config_path).read_text())
    export_dir = config["model"]["init_args"]["export_dir"]
    row = {"config": config_path, "tokenizer": export_dir}
    post_training = isinstance(config["model"]["init_args"].get("tokenizer"), str)
    if args.train and not post_training:
        start = time.perf_counter()
        fit = ["mmar", "fit", "--config", config_path, "--trainer.enable_progress_bar=false"]
        if subprocess.run(fit).returncode:  # e.g. a prerequisite named in the recipe's header is missing
            return {**row, "missing": f"`mmar fit --config {config_path}` failed: see its log and header"}
        row["train_seconds"] = time.perf_counter() - start
    if not (Path(export_dir) / "config.json").is_file():
        return {**row, "missing": f"not trained: run `mmar fit --config {config_path}`"}
    return score(row, export_dir, config["data"], Path(config_path).stem, args)


def score(row: dict, export_dir: str, data: dict, label: str, args: argparse.Namespace) -> dict:
    """Load the tokenizer in `export_dir` and fill `row` with its metrics on the val split of `data`."""
    tokenizer = load_tokenizer(export_dir)
    loader = build_datamodule(data).val_dataloader()
    metrics, originals, recons = evaluate(tokenizer, loader, args.max_batches)
    size = tokenizer.vocab_size if tokenizer.kind == "discrete" else tokenizer.latent_dim
    input_shape = tuple(model_inputs(next(iter(loader))).shape[1:])
    row.update(name=tokenizer.name, kind=tokenizer.kind, grid=list(tokenizer.grid(input_shape)), size=size)
    row.update(metrics)
    if originals.shape[1] == 1:  # grayscale digits-like data: embedded features apply
        features = DigitsMetrics(image_size=originals.shape[-1]).features
        row["embedded_rfd"] = reconstruction_fd(features, originals, recons)
        if isinstance(tokenizer, VQTokenizer) and tokenizer.num_quantizers == 1:
            row["embedded_pfd"] = perturbed_fd(
                tokenizer, features, originals, args.pfid_alpha, args.pfid_delta
            )
            row["pfd_setting"] = {"alpha": args.pfid_alpha, "delta": args.pfid_delta}
    grids = Path(args.grids)
    grids.mkdir(parents=True, exist_ok=True)
    pairs = torch.stack([originals[:16], recons[:16]], dim=1).flatten(0, 1)  # original, recon, ...
    save_image(pairs, grids / f"{label}.png", nrow=8, normalize=True, value_range=(-1, 1))
    return row


def run_exported(spec: str, args: argparse.Namespace) -> dict:
    """A tokenizer made by a script rather than `mmar fit` ("LABEL=DIR"), scored on the digits val split."""
    label, _, export_dir = spec.partition("=")
    row = {"config": label, "tokenizer": export_dir}
    if not (Path(export_dir) / "config.json").is_file():
        return {**row, "missing": f"no tokenizer at {export_dir}: see docs/tokenizers.md for the script"}
    return score(row, export_dir, DIGITS, label, args)


def markdown(rows: list[dict]) -> str:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)
    header = ["recipe", "tokenizer", "kind", "grid", "vocab / latent", "PSNR (dB)", "SSIM", "usage"]
    header += ["embedded rFD", "embedded pFD", "train (s)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if "missing" in r:
            lines.append(f"| {r['config']} | {r['missing']} |" + "  |" * (len(header) - 2))
            continue
        grid = "x".join(map(str, r["grid"]))
        lines.append(
            f"| {Path(r['config']).stem} | {r['name']} | {r['kind']} | {grid} | {r['size']} | "
            f"{fmt(r['psnr'], '.2f')} | {fmt(r['ssim'], '.3f')} | {fmt(r['usage'], '.3f')} | "
            f"{fmt(r.get('embedded_rfd'), '.3f')} | {fmt(r.get('embedded_pfd'), '.3f')} | "
            f"{fmt(r.get('train_seconds'), '.0f')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS)
    p.add_argument(
        "--exported",
        nargs="*",
        default=EXPORTED,
        help="LABEL=DIR of tokenizers made by scripts (TokenBridge)",
    )
    p.add_argument("--train", action="store_true", help="train each recipe first (timed)")
    p.add_argument("--max-batches", type=int, default=50, help="val batches per tokenizer")
    p.add_argument("--docs", default="docs/tokenizers.md")
    p.add_argument("--grids", default="runs/eval_tokenizers")
    p.add_argument("--pfid-alpha", type=float, default=0.25, help="pFD: share of tokens replaced")
    p.add_argument("--pfid-delta", type=int, default=8, help="pFD: nearest codes a replacement is drawn from")
    args = p.parse_args(argv)
    rows = [run_config(c, args) for c in args.configs] + [run_exported(e, args) for e in args.exported]
    print(markdown(rows))
    results = Path(args.docs).with_suffix(".json")
    order = DEFAULT_CONFIGS + [e.partition("=")[0] for e in EXPORTED]
    rows = merge_rows(rows, results, "config", order, carry=["train_seconds"])
    write_marked(Path(args.docs), "eval_tokenizers", markdown(rows), "Tokenizers")
    print(f"wrote {args.docs} and {results}", file=sys.stderr)


if __name__ == "__main__":
    main()
