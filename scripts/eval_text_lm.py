"""Validation perplexity of a text language model beside a unigram baseline on the same split.

    python scripts/eval_text_lm.py --ckpt runs/text/lm/checkpoints/last.ckpt --docs docs/text.md

The data is the checkpoint's own `TextDataModule` (its saved settings: corpus, tokenizer, seq_len,
val_fraction, seed), so the validation documents are exactly those held out in training. Both numbers
score the same targets (every packed position but the first of each row, except BOS, which always
follows EOS and is never generated) over the same ids (EOS and the BPE tokens): the model's exp(mean
cross-entropy), and `unigram_perplexity`, the token frequencies of the train split with add-one
smoothing. Prints one JSON row; with --docs, writes the table into that page.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from mmar.data.text import TextDataModule, unigram_perplexity
from mmar.errors import ConfigError, run_or_exit
from mmar.eval.report import write_marked
from mmar.export import TEXT_TOKENIZER_DIR, training_record
from mmar.lit.loading import load_stream


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ckpt",
        required=True,
        help="a StreamModule checkpoint or exported folder, trained on a TextDataModule",
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--docs", help="a Markdown page to write the table into (e.g. docs/text.md)")
    return p.parse_args(argv)


@torch.no_grad()
def model_perplexity(model, rows: torch.Tensor, batch_size: int) -> tuple[float, int]:
    """(exp(mean cross-entropy), number of targets) over the generated targets of packed rows [N, L]."""
    total, count = 0.0, 0
    for batch in rows.split(batch_size):
        losses = model.step_losses({"tokens": batch.to(model.device)})
        tokens = int(losses["text_tokens"])
        total, count = total + float(losses["text_loss"]) * tokens, count + tokens
    return math.exp(total / count), count


def run(args: argparse.Namespace) -> dict:
    model = load_stream(args.ckpt, args.device)  # a missing checkpoint: one-line error here
    training = training_record(args.ckpt)  # a checkpoint's or an exported folder's
    settings = training.get("datamodule")
    if not settings or "seq_len" not in settings:
        raise ConfigError(f"checkpoint '{args.ckpt}' was not trained on a TextDataModule; nothing to score")
    settings = {k: v for k, v in settings.items() if not k.startswith("_")}  # not CLI keys
    if Path(args.ckpt).is_dir():  # an exported folder: the data's tokenizer is the model's own, inside it
        settings["tokenizer"] = str(Path(args.ckpt) / TEXT_TOKENIZER_DIR)
    data = TextDataModule(**settings)
    data.setup()
    if data.val_dataset is None:
        raise ConfigError("the checkpoint's data has no validation split (val_fraction=0)")
    train = data.train_dataset.tokens
    sources = {"all": data.val_documents}  # and per source: the part of the document id before "/"
    for doc in data.val_documents:
        sources.setdefault(doc[0].split("/")[0] if "/" in doc[0] else "other", []).append(doc)
    rows = []
    for source, docs in sources.items():
        val = data.pack_split(docs)
        perplexity, targets = model_perplexity(model.eval(), val, args.batch_size)
        unigram = unigram_perplexity(train, val, data.vocab_size, ignore=[model.vocab.bos])
        rows.append(
            {
                "val_source": source,
                "val_documents": len(docs),
                "val_tokens": targets,
                "val_perplexity": perplexity,
                "unigram_perplexity": unigram,
                "ratio": unigram / perplexity,
            }
        )
    result = {
        "checkpoint": str(args.ckpt),
        "steps": training["global_step"],
        "tokenizer_vocab": data.vocab_size,
        "train_documents": data.num_documents[0],
        "rows": rows,
    }
    if args.docs:
        lines = [
            "| model | steps | val documents | val tokens | val perplexity | unigram perplexity | ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        name = f"{Path(args.ckpt).parent.parent.name} (vocab {data.vocab_size})"
        for r in rows:
            docs = f"{r['val_source']}: {r['val_documents']}"
            lines.append(
                f"| {name} | {result['steps']} | {docs} | {r['val_tokens']} | {r['val_perplexity']:.1f} | "
                f"{r['unigram_perplexity']:.1f} | {r['ratio']:.1f}x |"
            )
        write_marked(Path(args.docs), "text_lm", "\n".join(lines), "Text")
    return result


def main(argv=None) -> None:
    print(json.dumps(run_or_exit(run, parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
