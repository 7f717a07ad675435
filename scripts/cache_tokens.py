"""Encode a dataset once with a trained tokenizer and save the ids as a token cache.

Examples:
    python scripts/cache_tokens.py --tokenizer runs/digits_vq/tokenizer --data digits --out cache/digits
    python scripts/cache_tokens.py --tokenizer runs/vq16 --data image_folder --root data/imagenet/train \
        --image-size 256 --out cache/imagenet256

Train generators on the result with `mmar.data.TokenCacheDataModule(path=...)`.
"""

from __future__ import annotations

import argparse

from torch.utils.data import DataLoader

import tokenizers_visual  # noqa: F401  (importing the package registers the tokenizer classes)
from mmar.data.image_folder import collate_skip_none
from mmar.data.token_cache import cache_tokens, ordered_dataset
from mmar.errors import run_or_exit
from tokenizers_visual.base import load_tokenizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", required=True, help="folder written by Tokenizer.save_pretrained")
    parser.add_argument("--data", required=True, choices=["digits", "image_folder"], help="dataset kind")
    parser.add_argument("--root", help="image folder root/<class>/<images> (for --data image_folder)")
    parser.add_argument("--out", required=True, help="output folder for tokens.safetensors + meta.json")
    parser.add_argument("--image-size", type=int, default=None, help="default: 32 (digits), 256 (folder)")
    parser.add_argument("--channels", type=int, default=3, choices=[1, 3], help="image_folder only")
    parser.add_argument(
        "--split", default="train", choices=["train", "val"], help="digits split to cache (default: train)"
    )
    parser.add_argument("--val-fraction", type=float, default=0.1, help="digits held-out fraction")
    parser.add_argument("--seed", type=int, default=0, help="digits split seed")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    tokenizer = load_tokenizer(args.tokenizer, map_location=args.device)
    dataset = ordered_dataset(
        args.data, args.root, args.image_size, args.channels, args.split, args.val_fraction, args.seed
    )
    loader = DataLoader(
        dataset, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=collate_skip_none
    )
    meta = cache_tokens(tokenizer, loader, args.out, tokenizer_path=args.tokenizer, device=args.device)
    skipped = getattr(dataset, "num_skipped", 0)
    print(
        f"cached {meta['num_items']} items on grid {meta['grid']} (vocab {meta['vocab_size']}) to {args.out}"
        + (f"; skipped {skipped} unreadable files" if skipped else "")
    )


def main(argv: list[str] | None = None) -> None:
    run_or_exit(run, parse_args(argv))


if __name__ == "__main__":
    main()
