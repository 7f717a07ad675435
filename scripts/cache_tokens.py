"""Encode a dataset once with a trained tokenizer and save the ids as a token cache.

Examples:
    python scripts/cache_tokens.py --tokenizer runs/digits_vq/tokenizer --data digits --out cache/digits
    python scripts/cache_tokens.py --tokenizer runs/vq16 --data image_folder --root data/imagenet/train \
        --image-size 256 --out cache/imagenet256
    python scripts/cache_tokens.py --tokenizer runs/t2i/vq/tokenizer --data shapes --num-items 20000 \
        --text-encoder all-MiniLM-L6-v2 --max-length 32 --out runs/t2i/tokens
    python scripts/cache_tokens.py --tokenizer runs/tokenizers/moving_digits_video/tokenizer \
        --data moving_digits --num-items 20000 --labels digit_direction --out runs/video/tokens

With --text-encoder, each distinct caption also goes through that frozen encoder once and its hidden
states are stored, so a text-conditional generator with the same encoder and max length never runs it.

Train generators on the result with `mmar.data.TokenCacheDataModule(path=...)`.
"""

from __future__ import annotations

import argparse

from torch.utils.data import DataLoader

import tokenizers_visual  # noqa: F401  (importing the package registers the tokenizer classes)
from mmar.data.image_folder import collate_skip_none
from mmar.data.token_cache import DATASETS, cache_tokens, ordered_dataset
from mmar.errors import run_or_exit
from tokenizers_visual.base import load_tokenizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokenizer", required=True, help="folder written by Tokenizer.save_pretrained")
    parser.add_argument("--data", required=True, choices=DATASETS, help="dataset kind")
    parser.add_argument(
        "--root", help="image_folder: root/<class>/<images>; captioned_folder: a folder or a .jsonl manifest"
    )
    parser.add_argument("--out", required=True, help="output folder for tokens.safetensors + meta.json")
    parser.add_argument("--image-size", type=int, default=None, help="default: 32 (digits, shapes), 256")
    parser.add_argument("--channels", type=int, default=3, choices=[1, 3], help="image_folder only")
    parser.add_argument(
        "--split", default="train", choices=["train", "val"], help="digits/shapes split (default: train)"
    )
    parser.add_argument("--num-items", type=int, default=20000, help="shapes: scenes; moving_digits: clips")
    parser.add_argument("--num-frames", type=int, default=9, help="moving_digits: frames per clip")
    parser.add_argument(
        "--labels", default="digit", choices=["digit", "digit_direction"], help="moving_digits: the label"
    )
    parser.add_argument(
        "--compositions", default="seen", choices=["seen", "all"], help="shapes: held-out triples kept out"
    )
    parser.add_argument("--text-encoder", help="cache caption embeddings of this encoder (TextCondition)")
    parser.add_argument("--max-length", type=int, default=32, help="caption tokens (with --text-encoder)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="digits (and moving_digits) held-out fraction"
    )
    parser.add_argument("--seed", type=int, default=0, help="digits (and moving_digits) split seed")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    tokenizer = load_tokenizer(args.tokenizer, map_location=args.device)
    dataset = ordered_dataset(
        args.data,
        args.root,
        args.image_size,
        args.channels,
        args.split,
        args.val_fraction,
        args.seed,
        args.num_items,
        args.compositions,
        args.num_frames,
        args.labels,
    )
    loader = DataLoader(
        dataset, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=collate_skip_none
    )
    text = None
    if args.text_encoder:
        from mmar.conditioning import TextCondition

        text = TextCondition(dim=1, encoder=args.text_encoder, max_length=args.max_length).to(args.device)
    meta = cache_tokens(
        tokenizer, loader, args.out, tokenizer_path=args.tokenizer, device=args.device, text=text
    )
    skipped = getattr(dataset, "num_skipped", 0)
    print(
        f"cached {meta['num_items']} items on grid {meta['grid']} (vocab {meta['vocab_size']}) to {args.out}"
        + (f"; skipped {skipped} unreadable files" if skipped else "")
    )


def main(argv: list[str] | None = None) -> None:
    run_or_exit(run, parse_args(argv))


if __name__ == "__main__":
    main()
