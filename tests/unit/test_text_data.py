"""Text as data: byte-level BPE round trips and files, packing, the document split, reading folders,
the embedded corpus, the text DataModule and the unigram baseline."""

from __future__ import annotations

import json
import math

import pytest
import tokenizers
import torch

from mmar.data import TextDataModule, TextDataset
from mmar.data.shapes import held_out, parse_caption
from mmar.data.text import (
    embedded_corpus,
    pack,
    read_documents,
    split_documents,
    split_fraction,
    unigram_perplexity,
)
from mmar.errors import ConfigError
from mmar.text_tokenizer import SPECIAL_TOKENS, TextTokenizer

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "two red circles on the left and a blue square in the middle",
    "a green triangle on the right",
    "def f(x):\n    return x + 1\n",
    "  leading spaces, trailing tabs\t\t",
] * 3
ROUND_TRIPS = [
    "hello world",
    " leading space",
    "  two leading spaces and trailing  ",
    "lines\nand\r\nmore\n\n\ttabs\t",
    "héllo wörld, ünïcödé — “quotes”",
    "emoji 😀🚀 and CJK 世界 and RTL שלום",
    "text that spells <|bos|> and <|eos|> out",
    "",
]


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.train(SENTENCES, vocab_size=300, min_frequency=2)


def test_specials_are_ids_0_and_1(tokenizer):
    assert (tokenizer.bos_id, tokenizer.eos_id) == (0, 1)
    assert tuple(tokenizer.tokenizer.id_to_token(i) for i in (0, 1)) == SPECIAL_TOKENS
    assert 258 < tokenizer.vocab_size <= 300
    assert 0 not in tokenizer.encode("a <|bos|> b") and 1 not in tokenizer.encode("<|eos|>")


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_round_trip_is_exact(tokenizer, text):
    ids = tokenizer.encode(text)
    assert all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id]) == text  # specials are skipped


def test_encode_batch_matches_encode_and_merges_compress(tokenizer):
    assert tokenizer.encode_batch(ROUND_TRIPS) == [tokenizer.encode(t) for t in ROUND_TRIPS]
    seen = SENTENCES[0]
    assert len(tokenizer.encode(seen)) < len(seen.encode("utf-8"))


def test_save_load_same_ids_and_digest(tokenizer, tmp_path):
    path = tokenizer.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / "tokenizer.json"
    assert [p.name for p in (tmp_path / "tok").iterdir()] == ["tokenizer.json"]  # no temp file left
    for source in (tmp_path / "tok", path, str(path)):
        loaded = TextTokenizer.load(source)
        assert loaded.digest == tokenizer.digest and loaded.vocab_size == tokenizer.vocab_size
        assert [loaded.encode(t) for t in ROUND_TRIPS] == [tokenizer.encode(t) for t in ROUND_TRIPS]
    # a standard tokenizers file
    plain = tokenizers.Tokenizer.from_file(str(path))
    assert plain.decode(plain.encode(ROUND_TRIPS[4]).ids) == ROUND_TRIPS[4]
    other = TextTokenizer.train(["completely different words here"] * 3, vocab_size=280)
    assert len(tokenizer.digest) == 16 and other.digest != tokenizer.digest


def test_saved_file_loads_in_transformers(tokenizer, tmp_path):
    transformers = pytest.importorskip("transformers")
    path = tokenizer.save(tmp_path)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    text = ROUND_TRIPS[5]
    assert fast.encode(text, add_special_tokens=False) == tokenizer.encode(text)


def test_load_errors_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist.*train_text_tokenizer"):
        TextTokenizer.load(tmp_path / "missing")
    with pytest.raises(ConfigError, match=r"has no tokenizer\.json"):
        TextTokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a tokenizers JSON file"):
        TextTokenizer.load(tmp_path)


def test_wrong_specials_are_a_config_error(tmp_path):
    bare = tokenizers.Tokenizer(tokenizers.models.BPE())
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=270, special_tokens=["<pad>", "<s>"])
    bare.train_from_iterator(SENTENCES, trainer=trainer)
    bare.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ConfigError, match="expected"):
        TextTokenizer.load(tmp_path)


def test_train_errors():
    with pytest.raises(ConfigError, match="empty corpus"):
        TextTokenizer.train(["", ""], vocab_size=300)
    with pytest.raises(ConfigError, match="empty corpus"):
        TextTokenizer.train(iter([]), vocab_size=300)
    with pytest.raises(ConfigError, match="must exceed 258"):
        TextTokenizer.train(SENTENCES, vocab_size=258)


def test_pack_rows_reproduce_the_document_stream():
    docs = [[5, 6, 7], [8], [], [9, 10, 11, 12, 13]]
    stream = [0, 5, 6, 7, 1, 0, 8, 1, 0, 1, 0, 9, 10, 11, 12, 13, 1]  # 17 ids
    packed = pack(docs, seq_len=4, bos_id=0, eos_id=1)
    assert packed.dtype == torch.long and packed.shape == (4, 4)
    assert packed.flatten().tolist() == stream[:16]  # the partial last row (one id) is dropped
    exact = pack(docs, seq_len=17, bos_id=0, eos_id=1)
    assert exact.shape == (1, 17) and exact[0].tolist() == stream
    short = pack([[5, 6]], seq_len=8, bos_id=0, eos_id=1)  # the only data: padded with eos
    assert short.tolist() == [[0, 5, 6, 1, 1, 1, 1, 1]]
    with pytest.raises(ConfigError):
        pack([], seq_len=4, bos_id=0, eos_id=1)


def test_split_is_deterministic_disjoint_and_near_the_fraction():
    docs = [(f"folder/doc{i}.txt", "text") for i in range(1000)]
    train, val = split_documents(docs, val_fraction=0.1, seed=0)
    assert (train, val) == split_documents(docs, val_fraction=0.1, seed=0)
    assert len(train) + len(val) == 1000 and not {d for d, _ in train} & {d for d, _ in val}
    assert 60 <= len(val) <= 140  # binomial(1000, 0.1): mean 100, sd 9.5
    assert {d for d, _ in split_documents(docs, 0.1, seed=1)[1]} != {d for d, _ in val}
    assert split_documents(docs, 0.0, seed=0) == (docs, [])
    assert 0.0 <= split_fraction("a", 0) < 1.0 and split_fraction("a", 0) == split_fraction("a", 0)
    with pytest.raises(ConfigError):
        split_documents(docs, 1.0, seed=0)


def test_read_documents_skips_and_counts_bad_input(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("first document\n", encoding="utf-8")
    (tmp_path / "sub" / "b.txt").write_text("zweites Dokument ü", encoding="utf-8")
    (tmp_path / "sub" / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "ignored.md").write_text("not a text document")
    lines = [json.dumps({"text": "line one"}), "{broken", "", json.dumps({"text": ""}), json.dumps({"x": 1})]
    (tmp_path / "c.jsonl").write_text("\n".join(lines[:4]) + "\n" + json.dumps({"text": "last"}) + "\n")
    docs, skipped = read_documents(tmp_path)
    assert skipped == 2  # sub/bad.txt and c.jsonl:2
    assert docs == [
        ("a.txt", "first document\n"),
        ("c.jsonl:1", "line one"),
        ("c.jsonl:5", "last"),
        ("sub/b.txt", "zweites Dokument ü"),
    ]
    assert read_documents(tmp_path / "c.jsonl") == ([("c.jsonl:1", "line one"), ("c.jsonl:5", "last")], 1)
    with pytest.raises(ConfigError, match="does not exist"):
        read_documents(tmp_path / "missing")


def test_embedded_corpus_has_docs_and_only_seen_captions():
    docs = embedded_corpus(num_captions=300, seed=0)
    assert docs == embedded_corpus(num_captions=300, seed=0)
    pydoc = [text for doc_id, text in docs if doc_id.startswith("pydoc_data/")]
    captions = [text for doc_id, text in docs if doc_id.startswith("shapes/")]
    assert len(pydoc) > 50 and sum(map(len, pydoc)) > 100_000 and len(captions) == 300
    assert len({doc_id for doc_id, _ in docs}) == len(docs)
    for caption in captions:
        for _, colour, shape, position in parse_caption(caption):
            assert not held_out(colour, shape, position), caption


def write_corpus(root) -> list[str]:
    root.mkdir()
    texts = [f"document {i}: {SENTENCES[i % len(SENTENCES)]} number {i * 7}" for i in range(40)]
    for i, text in enumerate(texts[:30]):
        (root / f"{i:02d}.txt").write_text(text)
    (root / "more.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts[30:]))
    return texts


def test_text_datamodule_end_to_end(tmp_path):
    texts = write_corpus(tmp_path / "corpus")
    tokenizer = TextTokenizer.train(texts, vocab_size=300)
    tokenizer.save(tmp_path / "tok")
    dm = TextDataModule(
        tokenizer=str(tmp_path / "tok"),
        root=str(tmp_path / "corpus"),
        seq_len=16,
        batch_size=4,
        val_fraction=0.3,
    )
    dm.setup()
    assert dm.skipped == 0 and sum(dm.num_documents) == 40 and min(dm.num_documents) > 0
    assert isinstance(dm.train_dataset, TextDataset) and dm.train_dataset[0]["tokens"].shape == (16,)
    for loader in (dm.train_dataloader(), dm.val_dataloader()):
        batch = next(iter(loader))
        assert batch["tokens"].dtype == torch.long and batch["tokens"].shape == (4, 16)
        assert int(batch["tokens"].min()) >= 0 and int(batch["tokens"].max()) < tokenizer.vocab_size
    assert dm.meta == {
        "text_tokenizer": str(tmp_path / "tok"),
        "text_vocab_size": tokenizer.vocab_size,
        "text_tokenizer_digest": tokenizer.digest,
    }
    assert dm.hparams["seq_len"] == 16
    baseline = unigram_perplexity(dm.train_dataset.tokens, dm.val_dataset.tokens, tokenizer.vocab_size)
    assert 1.0 < baseline < tokenizer.vocab_size


def test_text_datamodule_errors(tmp_path):
    TextTokenizer.train(SENTENCES, vocab_size=300).save(tmp_path / "tok")
    tok = str(tmp_path / "tok")
    with pytest.raises(ConfigError, match="train_text_tokenizer"):
        TextDataModule(tokenizer=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no text documents in root"):
        TextDataModule(tokenizer=tok, root=str(tmp_path / "empty")).setup()
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "only.txt").write_text("a single document")
    assert split_fraction("only.txt", 0) > 0.01  # so it lands in train at val_fraction=0.01
    with pytest.raises(ConfigError, match="larger val_fraction"):
        TextDataModule(tokenizer=tok, root=str(tmp_path / "one"), val_fraction=0.01).setup()
    dm = TextDataModule(tokenizer=tok, root=str(tmp_path / "one"), seq_len=8, val_fraction=0.0)
    dm.setup()
    assert dm.val_dataset is None and dm.val_dataloader() == [] and dm.train_dataset.tokens.shape == (1, 8)


def test_unigram_perplexity_matches_hand_computation():
    train = torch.tensor([[2, 2, 3]])
    val = torch.tensor([[0, 2, 3]])  # targets 2, 3 (the first position is never a target)
    # add-one counts over V=4: [1, 1, 3, 2] / 7, so p(2) = 3/7, p(3) = 2/7
    expected = math.exp(-(math.log(3 / 7) + math.log(2 / 7)) / 2)
    assert unigram_perplexity(train, val, vocab_size=4) == pytest.approx(expected)
    assert expected == pytest.approx(7 / math.sqrt(6))


def test_script_trains_on_the_train_split(tmp_path, load_script, capsys):
    write_corpus(tmp_path / "corpus")
    script = load_script("train_text_tokenizer")
    out = tmp_path / "out"
    script.main(["--data", str(tmp_path / "corpus"), "--vocab-size", "300", "--out", str(out)])
    line = capsys.readouterr().out.strip()
    assert "vocab" in line and "bytes/token" in line and "0 skipped" in line
    assert TextTokenizer.load(out).vocab_size <= 300
    with pytest.raises(SystemExit):
        script.main(["--data", str(tmp_path / "missing"), "--out", str(out)])
