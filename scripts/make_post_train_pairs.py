"""Pairs of images and generated tokens for RobusTok's decoder post-training (Qiu et al., 2025, "Image
Tokenizer Needs Post-Training").

    python scripts/make_post_train_pairs.py --ckpt runs/tokenizers/digits_robust_vq/ar/checkpoints/last.ckpt \
        --sigma 0.7 --data digits --out runs/tokenizers/digits_robust_vq/pairs

For every image of the dataset (in order), the generator's tokenizer encodes it, and the generator decodes
a token grid for its label under teacher forcing: at each step the sampled token is replaced by the
image's own token with probability --sigma. The result is a token cache with the images
(`mmar.data.TokenCacheDataModule`), on which `TokenizerModule(tokenizer=<exported dir>,
trainable="decoder")` teaches the decoder to turn generated tokens into the image they stand for
(configs/tokenizers/digits_robust_vq_post.yaml). The share of tokens that differ from the image's own
is printed and stored in the cache's meta.json.
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from mmar.data.image_folder import collate_skip_none
from mmar.data.token_cache import ordered_dataset, save_token_cache
from mmar.errors import ConfigError, run_or_exit
from mmar.lit.loading import load_generator
from mmar.sampling import add_sampler_arguments, sampler_from_arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ckpt", required=True, help="generator checkpoint (.ckpt); its tokenizer is the one post-trained"
    )
    p.add_argument("--sigma", type=float, default=0.7, help="teacher-forcing probability per token")
    p.add_argument("--data", default="digits", choices=["digits", "image_folder"])
    p.add_argument("--root", help="image folder root/<class>/<images> (for --data image_folder)")
    p.add_argument("--image-size", type=int, default=None, help="default: 32 (digits), 256 (folder)")
    p.add_argument("--channels", type=int, default=3, choices=[1, 3], help="image_folder only")
    p.add_argument("--split", default="train", choices=["train", "val"], help="digits split")
    p.add_argument("--val-fraction", type=float, default=0.1, help="digits held-out fraction")
    p.add_argument("--out", required=True, help="output folder (a token cache with images)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0, help="batch i uses seed + i; also the digits split seed")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_sampler_arguments(p)
    return p.parse_args(argv)


@torch.no_grad()
def run(args: argparse.Namespace) -> dict:
    if not 0.0 <= args.sigma <= 1.0:
        raise ConfigError(f"--sigma={args.sigma} must lie in [0, 1] (the teacher-forcing probability)")
    model = load_generator(args.ckpt, args.device)
    dataset = ordered_dataset(
        args.data, args.root, args.image_size, args.channels, args.split, args.val_fraction, args.seed
    )
    loader = DataLoader(dataset, batch_size=args.batch_size, collate_fn=collate_skip_none)
    sampler = sampler_from_arguments(args)
    images, tokens, labels, changed = [], [], [], 0
    for i, batch in enumerate(tqdm(loader, desc="generating", unit="batch")):
        if batch is None:  # every file of the batch was unreadable
            continue
        x, y = batch["image"].to(args.device), batch["label"].to(args.device)
        own = model.tokenizer.encode(x)  # (B, *grid)
        sampler.seed = args.seed + i
        generated = model.generate_tokens(y, sampler, teacher=own, teacher_prob=args.sigma)  # (B, *grid)
        changed += int((generated != own).sum())
        images.append(x.cpu())
        tokens.append(generated.cpu())
        labels.append(y.cpu())
    if not tokens:
        raise ConfigError("the dataset yielded no images; nothing to pair (check the data root)")
    tokens = torch.cat(tokens)
    meta = {
        "tokenizer_path": str(model.hparams.tokenizer),
        "tokenizer_name": model.tokenizer.name,
        "vocab_size": model.tokenizer.vocab_size,
        "grid": list(model.grid),
        "num_items": len(tokens),
        "num_classes": model.conditioning.num_classes,
        "image_shape": list(model.input_shape),
        "generator": str(args.ckpt),
        "sigma": args.sigma,
        "changed_token_fraction": changed / tokens.numel(),
    }
    save_token_cache(args.out, tokens, torch.cat(labels), meta, images=torch.cat(images))
    return meta


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    meta = run_or_exit(run, args)
    print(
        f"paired {meta['num_items']} images with generated tokens (sigma={args.sigma}): "
        f"{meta['changed_token_fraction']:.3f} of the tokens differ from the images' own; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
