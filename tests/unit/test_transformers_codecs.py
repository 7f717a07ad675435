"""TransformersCodec over tiny random transformers EnCodec, DAC and Mimi models: shapes and layouts against
transformers' own encode/decode, a model folder written by transformers' save_pretrained, the mmar export
round trip, the levels (num_quantizers) per model, and the errors."""

from __future__ import annotations

import pytest
import torch

from mmar.errors import ConfigError
from mmar.tokenizer import TOKENIZERS, build_tokenizer, load_tokenizer
from tokenizers_audio import TransformersCodec

transformers = pytest.importorskip("transformers")

ENCODEC = {  # hop 4, 1000 frames/s of 4 bits per level: 4 kbit/s per level, so levels 1, 2, 4
    "model_type": "encodec",
    "sampling_rate": 4000,
    "target_bandwidths": [4.0, 8.0, 16.0],
    "hidden_size": 8,
    "num_filters": 4,
    "upsampling_ratios": [2, 2],
    "num_lstm_layers": 1,
    "codebook_size": 16,
}
DAC = {  # hop 10 with an odd stride: transformers' decoder comes out 2 samples short
    "model_type": "dac",
    "sampling_rate": 4000,
    "encoder_hidden_size": 4,
    "downsampling_ratios": [2, 5],
    "decoder_hidden_size": 16,
    "n_codebooks": 3,
    "codebook_size": 16,
    "codebook_dim": 4,
}
MIMI = {  # stereo; hop 4 * 2 (the SEANet strides, then the stride-2 downsampling to the frame rate)
    "model_type": "mimi",
    "sampling_rate": 8000,
    "audio_channels": 2,
    "hidden_size": 16,
    "num_filters": 4,
    "upsampling_ratios": [2, 2],
    "num_hidden_layers": 1,
    "intermediate_size": 32,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "codebook_size": 16,
    "codebook_dim": 8,
    "num_quantizers": 4,
    "vector_quantization_hidden_dimension": 8,
    "upsample_groups": 16,
}
# config, channels, hop, all levels Q, a smaller valid level count, invalid level counts
CASES = {
    "encodec": (ENCODEC, 1, 4, 4, 2, (0, 3, 5)),
    "dac": (DAC, 1, 10, 3, 1, (0, 4)),
    "mimi": (MIMI, 2, 8, 4, 2, (0, 5)),
}
FAMILIES = sorted(CASES)
K = 16


def audio(b: int, c: int, samples: int, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, c, samples, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # [-1, 1]


@torch.no_grad()
def randomize_codebooks(model: torch.nn.Module) -> torch.nn.Module:
    """Random codes: transformers initialises EnCodec's and Mimi's codebooks to zero (every id 0)."""
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if hasattr(module, "embed_sum"):  # Mimi: codes = embed_sum / cluster_usage, cached in _embed
            module.embed_sum.copy_(torch.randn(module.embed_sum.shape, generator=gen))
            module._embed = None
        elif hasattr(module, "embed_avg"):  # EnCodec
            module.embed.copy_(torch.randn(module.embed.shape, generator=gen) * 0.1)
    return model


def tiny(family: str, **kwargs) -> TransformersCodec:
    torch.manual_seed(0)
    tok = TransformersCodec(config=CASES[family][0], **kwargs)
    randomize_codebooks(tok.model)
    return tok


def hf_model(family: str) -> torch.nn.Module:
    """A tiny random transformers model, built and configured by transformers itself."""
    config = dict(CASES[family][0])
    model_type = config.pop("model_type")
    cls = getattr(
        transformers, {"encodec": "EncodecModel", "dac": "DacModel", "mimi": "MimiModel"}[model_type]
    )
    torch.manual_seed(0)
    return randomize_codebooks(cls(transformers.AutoConfig.for_model(model_type, **config)).eval())


@pytest.mark.parametrize("family", FAMILIES)
def test_contract_shapes_and_ranges(family):
    _, channels, hop, q_all, _, _ = CASES[family]
    tok = tiny(family)
    assert TOKENIZERS["transformers_codec"] is TransformersCodec
    assert (tok.kind, tok.modality, tok.model_type) == ("discrete", "audio", family)
    assert (tok.in_channels, tok.hop, tok.downsample, tok.vocab_size) == (channels, hop, hop, K)
    assert tok.num_quantizers == q_all and tok.token_shape == (q_all,)
    assert tok.bitrate() == tok.sample_rate / hop * q_all * 4
    x = audio(2, channels, 12 * hop)
    assert tok.grid((channels, 12 * hop)) == (12,)
    ids = tok.encode(x)
    assert ids.shape == (2, 12, q_all) and ids.dtype == torch.long and ids.is_contiguous()
    assert int(ids.min()) >= 0 and int(ids.max()) < K and ids.unique().numel() > 1
    recon = tok.decode(ids)
    assert recon.shape == x.shape and recon.dtype == torch.float32 and torch.isfinite(recon).all()
    fwd_recon, fwd_ids, aux = tok(x)
    assert torch.equal(fwd_ids, ids) and torch.equal(fwd_recon, recon) and float(aux) == 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_model_folder_loads_and_layouts_match_transformers(family, tmp_path):
    """A folder written by transformers' save_pretrained loads (offline); the ids are transformers' own
    codes made time-major, and decode gives transformers' own audio (DAC: padded to frames * hop)."""
    _, channels, hop, q_all, _, _ = CASES[family]
    model = hf_model(family)
    model.save_pretrained(tmp_path)
    tok = TransformersCodec(model=str(tmp_path))
    assert tok.config["config"]["model_type"] == family and "_name_or_path" not in tok.config["config"]
    x = audio(2, channels, 12 * hop, seed=2)
    ids = tok.encode(x)
    with torch.no_grad():
        if family == "encodec":
            out = model.encode(x, bandwidth=16.0)
            codes = out.audio_codes[0]  # [1 chunk, B, Q, frames] -> [B, Q, frames]
            expected = model.decode(out.audio_codes, out.audio_scales).audio_values
        elif family == "dac":
            codes = model.encode(x).audio_codes  # [B, Q, frames]
            expected = model.decode(audio_codes=codes).audio_values[:, None]  # [B, samples - 2]
        else:
            codes = model.encode(x).audio_codes  # [B, Q, frames]
            expected = model.decode(codes).audio_values
    assert codes.shape == (2, q_all, 12) and torch.equal(ids, codes.transpose(1, 2))
    recon = tok.decode(ids)
    n = expected.shape[-1]
    assert recon.shape == x.shape and n == (12 * hop - 2 if family == "dac" else 12 * hop)
    torch.testing.assert_close(recon[..., :n], expected, rtol=1e-5, atol=1e-6)
    assert not recon[..., n:].any()


@pytest.mark.parametrize("family", FAMILIES)
def test_save_pretrained_and_load_tokenizer_round_trip(family, tmp_path):
    _, channels, hop, _, q_small, _ = CASES[family]
    tok = tiny(family, num_quantizers=q_small)
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, TransformersCodec) and loaded.config == tok.config and not loaded.training
    assert loaded.num_quantizers == q_small
    if family == "encodec":  # weight-norm parametrizations round-trip under their own keys
        assert any(k.endswith("parametrizations.weight.original1") for k in tok.state_dict())
    x = audio(3, channels, 8 * hop, seed=3)
    ids = tok.encode(x)
    assert ids.unique().numel() > 1 and torch.equal(loaded.encode(x), ids)
    torch.testing.assert_close(loaded.decode(ids), tok.decode(ids))
    built = build_tokenizer({"name": "transformers_codec", "config": CASES[family][0]})
    assert isinstance(built, TransformersCodec) and built.model_type == family


@pytest.mark.parametrize("family", FAMILIES)
def test_fewer_levels_give_fewer_ids_that_are_a_prefix(family):
    _, channels, hop, q_all, q_small, invalid = CASES[family]
    full = tiny(family)
    small = tiny(family, num_quantizers=q_small)
    assert small.token_shape == (q_small,) and small.config["num_quantizers"] == q_small
    assert small.bitrate() == full.bitrate() * q_small / q_all
    x = audio(2, channels, 8 * hop, seed=4)
    all_ids = full.encode(x)
    ids = small.encode(x)
    assert ids.shape == (2, 8, q_small) and torch.equal(ids, all_ids[..., :q_small])
    assert torch.equal(full.encode(x, num_quantizers=q_small), ids)  # per call too
    assert small.encode(x, num_quantizers=q_all).shape[-1] == q_all
    assert small.decode(ids).shape == x.shape and full.decode(ids).shape == x.shape
    assert not torch.allclose(full.decode(ids), full.decode(all_ids))
    for bad in invalid:
        with pytest.raises(ConfigError, match=f"num_quantizers={bad}"):
            TransformersCodec(config=CASES[family][0], num_quantizers=bad)
        with pytest.raises(ConfigError, match=f"num_quantizers={bad}"):
            full.encode(x, num_quantizers=bad)
    with pytest.raises(ConfigError, match=f"1 <= q <= {q_all}"):
        full.decode(torch.zeros(2, 8, q_all + 1, dtype=torch.long))
    with pytest.raises(ConfigError, match=rf"ids must lie in \[0, {K}\)"):
        full.decode(torch.full((2, 8, 1), K))


def test_encodec_levels_are_its_target_bandwidths():
    tok = tiny("encodec")
    assert tok.valid_levels == (1, 2, 4)
    with pytest.raises(ConfigError, match=r"1 \(4.0 kbit/s\), 2 \(8.0 kbit/s\), 4 \(16.0 kbit/s\)"):
        tok.encode(audio(1, 1, 16), num_quantizers=3)


def test_encodec_normalize_is_not_applied_and_says_so():
    with pytest.warns(UserWarning, match="encodes the audio as given"):
        tok = TransformersCodec(config={**ENCODEC, "normalize": True})
    assert tok.encode(audio(1, 1, 16)).shape == (1, 4, 4)


def test_frozen_inference_only():
    tok = tiny("dac")
    assert not any(p.requires_grad for p in tok.parameters())
    tok.train()
    assert not tok.training and not tok.model.training and not tok.model.quantizer.training


def test_mimi_codebook_cache_follows_loads_and_moves():
    """Mimi caches its codes (embed_sum / cluster_usage) on first use: loading new buffers or moving the
    tokenizer drops the cache, so the codes in use are always the current ones."""
    tok, other = tiny("mimi"), tiny("mimi")
    codebooks = [m for m in tok.model.modules() if hasattr(m, "embed_sum")]
    x = audio(1, 2, 64, seed=5)
    ids = tok.encode(x)
    assert all(m._embed is not None for m in codebooks)
    tok.to("cpu")
    assert all(m._embed is None for m in codebooks)
    with torch.no_grad():
        for m in other.model.modules():
            if hasattr(m, "embed_sum"):
                m.embed_sum.mul_(-1.0)
    other_ids = other.encode(x)
    assert not torch.equal(other_ids, ids)
    tok.encode(x)
    tok.load_state_dict(other.state_dict())
    assert torch.equal(tok.encode(x), other_ids)


def test_bad_inputs_and_sources_raise_config_errors(tmp_path):
    tok = tiny("encodec")
    with pytest.raises(ConfigError, match="audio has 2 channels but the encodec codec expects 1"):
        tok.encode(audio(1, 2, 16))
    with pytest.raises(ConfigError, match=r"not a positive multiple of the encodec codec's hop 4.*e\.g\. 16"):
        tok.encode(audio(1, 1, 18))
    with pytest.raises(ConfigError, match="hop 4"):
        tok.grid((1, 2))
    with pytest.raises(ConfigError, match=r"\[B, C, samples\]"):
        tok.encode(torch.zeros(1, 16))
    with pytest.raises(ConfigError, match=r"\(C, samples\)"):
        tok.grid((1, 4, 4))
    with pytest.raises(ConfigError, match="exactly one of model"):
        TransformersCodec()
    with pytest.raises(ConfigError, match="exactly one of model"):
        TransformersCodec(model=str(tmp_path), config=ENCODEC)
    missing = tmp_path / "no_such_codec"
    with pytest.raises(ConfigError, match=f"model='{missing}': no such folder; give a local folder"):
        TransformersCodec(model=str(missing))
    with pytest.raises(ConfigError, match=r"has no config\.json"):
        TransformersCodec(model=str(tmp_path))
    with pytest.raises(ConfigError, match=r"'bert' model; .*supports encodec \(EncodecModel\), dac"):
        TransformersCodec(config={"model_type": "bert"})
    bert = tmp_path / "bert"
    transformers.BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1).save_pretrained(bert)
    with pytest.raises(ConfigError, match=f"model='{bert}' is a transformers 'bert' model"):
        TransformersCodec(model=str(bert))
    with pytest.raises(ConfigError, match="with a 'model_type'"):
        TransformersCodec(config={"sampling_rate": 16000})
    with pytest.raises(ConfigError, match=r"could not build a DacModel from config: .*power of 2"):
        TransformersCodec(config={**DAC, "codebook_size": 12})
