"""Conditions: text encoders by local path, left padding, caption dropout to the null caption, and every
unit reading a padded caption exactly as it reads the same caption unpadded (trunk key padding)."""

import pytest
import torch

from mmar.conditioning import ClassCondition, TextCondition, build_condition, resolve_encoder
from mmar.errors import ConfigError
from mmar.sampling import Sampler
from mmar.trunk import Trunk, trunk_config
from mmar.units import UNITS, build_unit

transformers = pytest.importorskip("transformers")
D = 64
CAPTIONS = ["a red circle on the left", "two blue squares in the middle and a white triangle on the right"]


@pytest.fixture(scope="module")
def minilm():
    return TextCondition(D, max_length=24)


def tiny_encoder(kind: str, path, tokenizer) -> str:
    """A randomly initialised BERT or T5 encoder saved with the packaged MiniLM's WordPiece tokenizer."""
    torch.manual_seed(0)
    vocab = tokenizer.vocab_size
    if kind == "bert":
        config = transformers.BertConfig(
            vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
        )
        model = transformers.BertModel(config)
    else:
        config = transformers.T5Config(
            vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, is_encoder_decoder=True
        )
        model = transformers.T5EncoderModel(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("kind", ["bert", "t5"])
def test_local_encoder_left_pads_its_unpadded_outputs(kind, tmp_path, minilm):
    path = tiny_encoder(kind, tmp_path / kind, minilm.text_tokenizer)
    condition = TextCondition(D, encoder=path, max_length=24).eval()
    assert condition.width == 32 and not any("encoder" in k for k in condition.state_dict())
    hidden, valid = condition.encode_text(CAPTIONS)  # (2, 24, 32), (2, 24)
    for row, caption in enumerate(CAPTIONS):
        alone = condition.text_tokenizer([caption], return_tensors="pt")
        want = condition.encoder(**alone).last_hidden_state[0]  # (L, 32) without any padding
        n = want.shape[0]
        assert valid[row].tolist() == [False] * (24 - n) + [True] * n  # real tokens last
        torch.testing.assert_close(hidden[row, -n:], want, atol=1e-5, rtol=1e-5)
    tokens = condition.for_sampling(CAPTIONS, guided=False)
    assert tokens.tokens.shape == (2, 24, D) and torch.equal(tokens.valid, valid)


def test_caption_dropout_gives_the_null_caption(minilm):
    condition = TextCondition(D, max_length=24, dropout=0.5)
    condition.load_state_dict(minilm.state_dict())
    captions = CAPTIONS * 200
    torch.manual_seed(0)
    out = condition.train()(captions)
    null = out.valid.sum(1) == 1  # the null caption: one real token, last
    assert 0.43 < null.float().mean() < 0.57
    assert out.valid[null, -1].all()
    want_null = condition.proj(condition.null)  # (D,)
    torch.testing.assert_close(out.tokens[null, -1], want_null.expand(int(null.sum()), -1))
    condition.eval()
    assert (condition(captions[:4]).valid.sum(1) > 1).all()  # no dropout outside training


def test_cfg_batch_is_captions_then_null(minilm):
    plain = minilm.eval().for_sampling(CAPTIONS, guided=False)
    both = minilm.for_sampling(CAPTIONS, guided=True)
    assert both.tokens.shape[0] == 4
    torch.testing.assert_close(both.tokens[:2], plain.tokens)
    assert torch.equal(both.valid[:2], plain.valid)
    assert (both.valid[2:].sum(1) == 1).all() and both.valid[2:, -1].all()
    torch.testing.assert_close(both.tokens[2], both.tokens[3])


def test_class_condition_keeps_its_contract():
    condition = build_condition(None, D, num_classes=10, class_dropout=0.1).eval()
    assert isinstance(condition, ClassCondition) and "embed.weight" in condition.state_dict()
    out = condition.for_sampling(torch.tensor([1, 2]), guided=True)
    assert out.tokens.shape == (4, 1, D) and out.valid is None
    torch.testing.assert_close(out.tokens[2], condition.embed.weight[10][None])


def test_bad_inputs_name_the_problem(minilm, tmp_path):
    with pytest.raises(ConfigError, match="empty caption"):
        minilm.encode_text(["a red circle", "  "])
    with pytest.raises(ConfigError, match="cannot load text encoder"):
        TextCondition(D, encoder=str(tmp_path))  # a folder without a model
    with pytest.raises(ConfigError, match="class_path"):
        build_condition({"init_args": {}}, D, 10, 0.1)
    with pytest.raises(ConfigError, match="cannot be imported"):
        build_condition({"class_path": "mmar.conditioning.Nope"}, D, 10, 0.1)
    with pytest.raises(ConfigError, match="reads batch"):
        minilm.values_of({"image": None, "label": None})
    assert resolve_encoder("all-MiniLM-L6-v2").endswith("model")


GRID = (4, 4)
UNIT_KWARGS = {
    "next_token": {"vocab_size": 11},
    "random_order": {"vocab_size": 11},
    "next_block": {"vocab_size": 11},
    "next_neighbor": {"vocab_size": 11},
    "masked_ar": {"latent_dim": 3, "head_width": 16, "head_depth": 1, "steps": 3, "head_steps": 2},
    "hi_mar": {"latent_dim": 3, "head_width": 16, "head_depth": 1, "steps": 3, "head_steps": 2, "pivots": 2},
    "next_x": {
        "latent_dim": 3,
        "head_width": 16,
        "head_depth": 1,
        "flow_steps": 2,
        "entity": "cell",
        "size": 2,
    },
}


def tokens_for(name: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if "vocab_size" in UNIT_KWARGS[name]:
        return torch.randint(11, (2, *GRID), generator=g)
    return torch.randn(2, *GRID, 3, generator=g)


@pytest.mark.parametrize("name", sorted(UNITS))
def test_every_unit_reads_a_padded_caption_like_the_unpadded_one(name):
    """Same loss and same samples (with guidance) from `[3 pads, 3 caption tokens]` under the trunk's key
    padding as from the 3 caption tokens alone: no unit needs text-specific code."""
    torch.manual_seed(0)
    trunk = Trunk(trunk_config("debug")).eval()
    unit = build_unit(name, d_model=D, grid=GRID, **UNIT_KWARGS[name]).eval()
    cond = torch.randn(4, 6, D)  # rows 2, 3: the null half of a CFG batch
    cond[:, :3] = 100.0  # padding that would swamp attention if it leaked
    valid = torch.arange(6).expand(4, -1) >= 3
    padded, unpadded = trunk.with_prefix_padding(valid), trunk

    def loss(t, c):
        torch.manual_seed(2)
        batch = unit.prepare(tokens_for(name), c)
        return unit.loss(t(batch.inputs, batch.positions, batch.mask), batch)["loss"]

    torch.testing.assert_close(loss(padded, cond[:2]), loss(unpadded, cond[:2, 3:]), atol=1e-5, rtol=1e-5)
    sampler = Sampler(cfg_scale=2.0, temperature=1.0, seed=3)
    got = unit.generate(padded, cond, GRID, sampler)
    want = unit.generate(unpadded, cond[:, 3:], GRID, sampler)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
