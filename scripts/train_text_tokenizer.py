"""Train a byte-level BPE text tokenizer on the train split of a text corpus and save it.

Examples:
    python scripts/train_text_tokenizer.py --out runs/text/tokenizer
    python scripts/train_text_tokenizer.py --data data/text --vocab-size 4096 --out runs/mytext/tokenizer

--data embedded uses the text Python ships (pydoc_data) plus shapes captions
(`mmar.data.text.embedded_corpus`); a PATH is a folder (or one file) of .txt / .jsonl documents. Only the
train split (`split_documents` with --val-fraction and --seed, the `TextDataModule` defaults) shapes the
vocabulary, so validation text stays unseen; bytes per token is reported on the val split.

Train text models on the result with `mmar.data.TextDataModule(tokenizer=OUT, ...)`.
"""

from __future__ import annotations

import argparse

from mmar.data.text import embedded_corpus, read_documents, split_documents
from mmar.errors import run_or_exit
from mmar.text_tokenizer import TextTokenizer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default="embedded", help="'embedded' or a folder/file of .txt/.jsonl")
    parser.add_argument("--vocab-size", type=int, default=2048, help="ids, 256 bytes and 2 specials included")
    parser.add_argument("--min-frequency", type=int, default=2, help="fewest occurrences of a merged pair")
    parser.add_argument("--num-captions", type=int, default=5000, help="embedded: shapes captions")
    parser.add_argument("--val-fraction", type=float, default=0.05, help="documents held out of training")
    parser.add_argument("--seed", type=int, default=0, help="split (and embedded captions) seed")
    parser.add_argument("--out", default="runs/text/tokenizer", help="output folder for tokenizer.json")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    if args.data == "embedded":
        docs, skipped = embedded_corpus(args.num_captions, args.seed), 0
    else:
        docs, skipped = read_documents(args.data)
    train, val = split_documents(docs, args.val_fraction, args.seed)
    tokenizer = TextTokenizer.train(
        (text for _, text in train), vocab_size=args.vocab_size, min_frequency=args.min_frequency
    )
    path = tokenizer.save(args.out)
    val_texts = [text for _, text in val]
    val_tokens = sum(len(ids) for ids in tokenizer.encode_batch(val_texts))
    val_bytes = sum(len(text.encode("utf-8")) for text in val_texts)
    bytes_per_token = f"{val_bytes / val_tokens:.2f}" if val_tokens else "n/a (empty val split)"
    print(
        f"text tokenizer: vocab {tokenizer.vocab_size} from {len(train)} train documents "
        f"({len(val)} val, {skipped} skipped); {bytes_per_token} bytes/token on val; saved to {path}"
    )


def main(argv: list[str] | None = None) -> None:
    run_or_exit(run, parse_args(argv))


if __name__ == "__main__":
    main()
