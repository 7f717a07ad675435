"""Byte-level BPE text tokenizer (GPT-2 style) over the Hugging Face `tokenizers` library.

Text is split into UTF-8 bytes, each byte mapped to one of 256 printable symbols, and frequent symbol pairs
are merged (Sennrich et al., 2016; Radford et al., 2019). Every string is representable without an unknown
token, and `decode(encode(s)) == s` exactly for any unicode string (leading spaces, newlines, emoji).

Ids 0 and 1 are the specials `<|bos|>` and `<|eos|>` that `mmar.data.text.pack` puts around documents;
`encode` never adds them, and text that spells them out (e.g. "<|eos|>" in a document) is encoded as
ordinary bytes, so a document can never fake a boundary.

The folder format is one standard `tokenizer.json` (readable by `tokenizers.Tokenizer.from_file` and by
transformers' `PreTrainedTokenizerFast(tokenizer_file=...)`). Train one with
`python scripts/train_text_tokenizer.py --out runs/text/tokenizer`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from mmar.errors import ConfigError
from mmar.io import atomic_write

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>")
FILE_NAME = "tokenizer.json"
NUM_BYTES = 256  # the byte alphabet every vocabulary starts with
HOW_TO_MAKE = "make one with `python scripts/train_text_tokenizer.py --out FOLDER`"


class TextTokenizer:
    """A byte-level BPE tokenizer whose ids 0 and 1 are `<|bos|>` and `<|eos|>`.

    Args:
        tokenizer: a `tokenizers.Tokenizer` with a byte-level BPE model and the two specials at ids 0, 1.

    Raises:
        ConfigError: ids 0 and 1 are not `<|bos|>` and `<|eos|>`.
    """

    def __init__(self, tokenizer: Tokenizer):
        found = tuple(tokenizer.id_to_token(i) for i in range(len(SPECIAL_TOKENS)))
        if found != SPECIAL_TOKENS:
            raise ConfigError(
                f"text tokenizer ids 0, 1 are {found}, expected {SPECIAL_TOKENS}; "
                f"retrain it with scripts/train_text_tokenizer.py"
            )
        # Specials spelled out inside a document stay ordinary text: the round trip stays exact and
        # only `pack` places boundaries.
        tokenizer.encode_special_tokens = True
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of ids, specials included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int:
        return 0

    @property
    def eos_id(self) -> int:
        return 1

    @property
    def digest(self) -> str:
        """Short sha256 of the vocabulary and merges: equal digests mean equal id assignments."""
        model = json.loads(self.tokenizer.to_str())["model"]
        payload = json.dumps({"vocab": model["vocab"], "merges": model["merges"]}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]

    def encode(self, text: str) -> list[int]:
        """Ids of `text`, without specials."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, without specials (parallel over texts inside `tokenizers`)."""
        return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`; special tokens are dropped."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `folder/tokenizer.json` atomically and return its path."""
        target = Path(folder) / FILE_NAME
        atomic_write(target, lambda tmp: self.tokenizer.save(tmp))
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> TextTokenizer:
        """Load from a folder holding `tokenizer.json`, or from the `.json` file itself.

        Raises:
            ConfigError: the path or file is missing, is not a tokenizers JSON file, or has wrong specials.
        """
        path = Path(path)
        file = path / FILE_NAME if path.is_dir() else path
        if not file.is_file():
            where = f"'{path}' has no {FILE_NAME}" if path.is_dir() else f"'{path}' does not exist"
            raise ConfigError(f"text tokenizer: {where}; {HOW_TO_MAKE}")
        try:
            tokenizer = Tokenizer.from_file(str(file))
        except Exception as err:  # tokenizers raises a bare Exception for malformed JSON
            raise ConfigError(
                f"text tokenizer '{file}' is not a tokenizers JSON file ({err}); {HOW_TO_MAKE}"
            ) from err
        return cls(tokenizer)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2) -> TextTokenizer:
        """Learn merges from `texts` until `vocab_size` ids (bytes and specials included) or no pair
        occurs `min_frequency` times.

        Raises:
            ConfigError: `vocab_size` leaves no room for merges, or no text is non-empty.
        """
        if vocab_size <= NUM_BYTES + len(SPECIAL_TOKENS):
            raise ConfigError(
                f"vocab_size={vocab_size} must exceed {NUM_BYTES + len(SPECIAL_TOKENS)} "
                f"(256 bytes + {len(SPECIAL_TOKENS)} specials); use e.g. --vocab-size 2048"
            )
        tokenizer = Tokenizer(models.BPE())
        # No prefix space: it would make decode(encode(s)) start with a space that s does not have.
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),  # the trainer assigns them the first ids, 0 and 1
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        non_empty = 0

        def counted() -> Iterator[str]:
            nonlocal non_empty
            for text in texts:
                if text:
                    non_empty += 1
                    yield text

        tokenizer.train_from_iterator(counted(), trainer=trainer)
        if non_empty == 0:
            raise ConfigError(
                "empty corpus: no non-empty text to train the text tokenizer on; "
                "check --data (a folder of .txt / .jsonl files, or 'embedded')"
            )
        return cls(tokenizer)
