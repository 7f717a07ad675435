"""Text as data for the trunk: documents read from disk (or embedded), split, tokenized and packed.

Documents come from a folder (recursively, sorted) of `.txt` files (one document each) and `.jsonl` files
(one document per line, in the string field `text`), or from `embedded_corpus`: real English text that
Python itself ships (the Python reference documentation topics in `pydoc_data`) plus captions of the
procedural shapes scenes, so a text model trains with no download. Unreadable files and bad lines are
skipped and counted, not fatal.

Every document lands in train or val by a stable hash of its id (`split_documents`), so the split is the
same on every machine and does not move when documents are added. Each split is tokenized with a
`mmar.text_tokenizer.TextTokenizer` and packed into rows of `seq_len` ids: `[bos, *doc, eos]` for every
document in order, cut at row boundaries regardless of documents (GPT-style packing).

Batches: {"tokens": long [B, L]} packed text ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmar.data.base import SplitDataModule
from mmar.data.shapes import caption_scene, sample_scene, scene_is_seen
from mmar.errors import ConfigError
from mmar.text_tokenizer import TextTokenizer

log = logging.getLogger(__name__)

Document = tuple[str, str]  # (doc_id, text)
TEXT_SUFFIXES = (".txt", ".jsonl")
CAPTION_IMAGE_SIZE = 32  # captions are drawn at the image size of the shapes text-to-image recipes


def read_documents(root: str | os.PathLike, strict: bool = False) -> tuple[list[Document], int]:
    """Documents of a folder (recursively, sorted paths) or of one `.txt` / `.jsonl` file.

    A `.txt` file is one document (doc_id: its path relative to `root`); a `.jsonl` file holds one
    document per line in the string field `text` (doc_id "relative/path.jsonl:LINE", lines from 1).
    Files that are not UTF-8 or cannot be read, and jsonl lines that are not JSON objects with a string
    `text`, are skipped, counted and reported in one warning (with `strict`, the first one is a
    ConfigError naming it); empty texts and blank lines are ignored.

    Returns:
        ([(doc_id, text)], number of skipped files and lines).

    Raises:
        ConfigError: `root` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise ConfigError(f"text data root '{root}' does not exist; pass a folder of .txt / .jsonl files")
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file())
        base = root
    else:
        if root.suffix not in TEXT_SUFFIXES:
            raise ConfigError(f"text data file '{root}' must end in .txt or .jsonl")
        files, base = [root], root.parent
    docs: list[Document] = []
    skipped: list[str] = []
    for path in files:
        rel = path.relative_to(base).as_posix()
        try:
            raw = path.read_bytes()
        except OSError:
            skipped.append(rel)
            continue
        if path.suffix == ".txt":
            try:
                text = raw.decode("utf-8-sig")  # -sig: a leading byte-order mark is not text
            except UnicodeDecodeError:
                skipped.append(rel)
                continue
            if text:
                docs.append((rel, text))
            continue
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                skipped.append(f"{rel}:{number}")
            elif record["text"]:
                docs.append((f"{rel}:{number}", record["text"]))
    if skipped and strict:
        raise ConfigError(
            f"unreadable text file or bad jsonl line '{skipped[0]}' under '{root}' ({len(skipped)} in all): "
            "files must be UTF-8, jsonl lines JSON objects with a string 'text'; fix them or set strict=False"
        )
    if skipped:
        log.warning(
            "skipped %d unreadable text files or bad jsonl lines under '%s' (e.g. '%s'): files must be "
            "UTF-8, jsonl lines JSON objects with a string 'text'",
            len(skipped),
            root,
            skipped[0],
        )
    return docs, len(skipped)


def embedded_corpus(num_captions: int = 5000, seed: int = 0) -> list[Document]:
    """Real English text shipped with Python plus shapes captions, as documents.

    One document per topic of the Python reference documentation (`pydoc_data.topics`, ~79 topics,
    ~465 KB; doc_id "pydoc_data/<topic>", sorted by topic), then `num_captions` captions of random shapes
    scenes (doc_id "shapes/<i>"). Scenes with a held-out (colour, shape, column) triple are redrawn, so
    the text corpus never names a composition that the compositional benchmark prompts.

    Raises:
        ConfigError: `pydoc_data` is not installed, or `num_captions` < 0.
    """
    if num_captions < 0:
        raise ConfigError(f"num_captions={num_captions} must be >= 0")
    try:
        from pydoc_data.topics import topics
    except ImportError as err:
        raise ConfigError(
            "this Python has no pydoc_data (some distributions strip it), so the embedded text corpus is "
            "unavailable; pass a folder of .txt / .jsonl files instead (--data FOLDER / root=FOLDER)"
        ) from err
    docs = [(f"pydoc_data/{topic}", topics[topic]) for topic in sorted(topics) if topics[topic]]
    rng = np.random.default_rng(seed)
    for i in range(num_captions):
        while True:
            scene = sample_scene(rng, image_size=CAPTION_IMAGE_SIZE, min_objects=1, max_objects=3)
            if scene_is_seen(scene, CAPTION_IMAGE_SIZE):
                break
        docs.append((f"shapes/{i}", caption_scene(scene, CAPTION_IMAGE_SIZE)))
    return docs


def split_fraction(doc_id: str, seed: int) -> float:
    """A stable pseudo-random number in [0, 1) for a document (sha256, the same on every machine)."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_documents(
    docs: list[Document], val_fraction: float, seed: int
) -> tuple[list[Document], list[Document]]:
    """(train, val): a document goes to val when `split_fraction(doc_id, seed) < val_fraction`.

    Per document, so the split is deterministic, keeps the input order, and a document's side does not
    change when others are added or removed.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction={val_fraction} must be in [0, 1)")
    train, val = [], []
    for doc in docs:
        (val if split_fraction(doc[0], seed) < val_fraction else train).append(doc)
    return train, val


def pack(token_lists: list[list[int]], seq_len: int, bos_id: int, eos_id: int) -> torch.Tensor:
    """Long [N, seq_len]: the stream `[bos, *doc, eos]` of every document in order, cut into rows.

    Rows ignore document boundaries (a document may continue on the next row). The final partial row
    is dropped, except when it is the only data (a stream shorter than `seq_len`): then it is padded
    with eos to one full row, so a tiny split still yields one row.

    Raises:
        ConfigError: no documents, or `seq_len` < 1.
    """
    if seq_len < 1:
        raise ConfigError(f"seq_len={seq_len} must be >= 1")
    if not token_lists:
        raise ConfigError("no documents to pack; the split is empty")
    lengths = np.array([len(ids) + 2 for ids in token_lists])
    stream = np.empty(int(lengths.sum()), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    for start, ids in zip(starts, token_lists):
        stream[start] = bos_id
        stream[start + 1 : start + 1 + len(ids)] = ids
        stream[start + 1 + len(ids)] = eos_id
    rows = len(stream) // seq_len
    if rows == 0:
        stream = np.concatenate([stream, np.full(seq_len - len(stream), eos_id, dtype=np.int64)])
        rows = 1
    return torch.from_numpy(stream[: rows * seq_len].reshape(rows, seq_len))


def unigram_perplexity(
    train: torch.Tensor, val: torch.Tensor, vocab_size: int, ignore: Sequence[int] = ()
) -> float:
    """Perplexity on `val` of a unigram model of `train` token counts with add-one (Laplace) smoothing.

    The baseline a language model must beat: it scores the val positions that are next-token targets
    (every position of a row but its first), p(t) = (count(t) + 1) / (num_train_tokens + vocab_size).
    Ids in `ignore` (e.g. BOS, which a model never generates) are left out of the vocabulary, the
    counts and the targets, as a model scored over the other ids leaves them out.
    """
    keep = torch.ones(vocab_size, dtype=torch.bool)
    keep[list(ignore)] = False
    counts = torch.bincount(train.flatten().long(), minlength=vocab_size).double() + 1  # [V]
    log_probs = counts.log() - counts[keep].sum().log()  # [V]
    targets = val[:, 1:].flatten().long()  # [N * (L - 1)]
    targets = targets[keep[targets]]
    if targets.numel() == 0:
        raise ConfigError("unigram_perplexity needs val rows of length >= 2")
    return math.exp(-log_probs[targets].mean().item())


class TextDataset(Dataset):
    """Rows of a packed long [N, L] tensor; item i is {"tokens": long [L]}."""

    def __init__(self, tokens: torch.Tensor):
        if tokens.ndim != 2:
            raise ConfigError(f"packed text must be long [N, L], got shape {tuple(tokens.shape)}")
        self.tokens = tokens.long()

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"tokens": self.tokens[index]}


class TextDataModule(SplitDataModule):
    """Packed text from a folder (or the embedded corpus) as a LightningDataModule (test split = val).

    Args:
        tokenizer: a `TextTokenizer` folder or `tokenizer.json` (scripts/train_text_tokenizer.py); train it
            with the same `root`, `val_fraction`, `seed` and `num_captions`, so val text never shaped it.
        root: folder or file of .txt / .jsonl documents; None: `embedded_corpus(num_captions, seed)`.
        seq_len: ids per row (L).
        batch_size: rows per batch.
        val_fraction: expected fraction of documents in the val split (0: no validation).
        seed: seed of the split and of the embedded captions.
        num_captions: shapes captions in the embedded corpus (root=None only).
        num_workers: DataLoader worker processes.
        strict: raise ConfigError on an unreadable file or bad jsonl line instead of skipping it.
    """

    def __init__(
        self,
        tokenizer: str,
        root: str | None = None,
        seq_len: int = 128,
        batch_size: int = 32,
        val_fraction: float = 0.05,
        seed: int = 0,
        num_captions: int = 5000,
        num_workers: int = 0,
        strict: bool = False,
    ):
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        if seq_len < 2:
            raise ConfigError(f"seq_len={seq_len} must be >= 2 (an input and a next-token target)")
        if not 0.0 <= val_fraction < 1.0:
            raise ConfigError(f"val_fraction={val_fraction} must be in [0, 1)")
        self.tokenizer_path = tokenizer
        self.text_tokenizer: TextTokenizer = TextTokenizer.load(tokenizer)  # fails early on a bad path
        self.root = root
        self.seq_len = seq_len
        self.val_fraction = val_fraction
        self.seed = seed
        self.num_captions = num_captions
        self.strict = strict
        self.skipped = 0
        self.num_documents = (0, 0)  # (train, val), filled by setup
        self.val_documents: list[Document] = []

    @property
    def num_skipped(self) -> int:
        """Unreadable files and bad jsonl lines skipped by `setup` (the name the folder datamodules use)."""
        return self.skipped

    @property
    def vocab_size(self) -> int:
        """Number of text ids, specials included."""
        return self.text_tokenizer.vocab_size

    @property
    def meta(self) -> dict[str, Any]:
        """What a model records to check it is used with the same tokenizer."""
        return {
            "text_tokenizer": str(self.tokenizer_path),
            "text_vocab_size": self.text_tokenizer.vocab_size,
            "text_tokenizer_digest": self.text_tokenizer.digest,
        }

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        where = "the embedded corpus" if self.root is None else f"root '{self.root}'"
        if self.root is None:
            docs, self.skipped = embedded_corpus(self.num_captions, self.seed), 0
        else:
            docs, self.skipped = read_documents(self.root, self.strict)
        if not docs:
            raise ConfigError(f"no text documents in {where}; it needs non-empty .txt / .jsonl documents")
        train_docs, val_docs = split_documents(docs, self.val_fraction, self.seed)
        if not train_docs:
            raise ConfigError(
                f"all {len(docs)} documents of {where} fell into val; use a smaller val_fraction"
            )
        if self.val_fraction > 0 and not val_docs:
            raise ConfigError(
                f"no val documents among the {len(docs)} of {where} at val_fraction={self.val_fraction}; "
                "use a larger val_fraction, more documents, or val_fraction=0 for no validation"
            )
        self.num_documents = (len(train_docs), len(val_docs))
        self.val_documents = val_docs  # for per-source scores (scripts/eval_text_lm.py)
        self.train_dataset = TextDataset(self.pack_split(train_docs))
        self.val_dataset = TextDataset(self.pack_split(val_docs)) if val_docs else None
        log.info(
            "text data from %s: %d train / %d val documents, %d train / %d val rows of %d ids (vocab %d)",
            where,
            len(train_docs),
            len(val_docs),
            len(self.train_dataset),
            len(self.val_dataset) if self.val_dataset is not None else 0,
            self.seq_len,
            self.vocab_size,
        )

    def pack_split(self, docs: list[Document]) -> torch.Tensor:
        """Long [N, seq_len] packed ids of `docs`."""
        tok = self.text_tokenizer
        return pack(tok.encode_batch([text for _, text in docs]), self.seq_len, tok.bos_id, tok.eos_id)
