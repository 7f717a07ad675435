"""SubobjectTokenizer: crop geometry, encode/decode with a padding mask, locality, export round trip."""

from __future__ import annotations

import shutil

import pytest
import torch

from mmar.data import ShapesDataset
from mmar.errors import ConfigError
from tokenizers_visual import TOKENIZERS, SubobjectTokenizer, SubobjectTokens, load_tokenizer
from tokenizers_visual.base import read_tokenizer_config
from tokenizers_visual.segmenters import BoundarySegmenter
from tokenizers_visual.subobject import extract_crops, paste_crops, segment_boxes

pytestmark = pytest.mark.filterwarnings(
    "ignore:the subobject tokenizer's latent scale/shift were never fitted"
)

TINY = {"latent_dim": 6, "max_tokens": 5, "crop_size": 8, "ch": 4}


def tiny(**overrides) -> SubobjectTokenizer:
    torch.manual_seed(0)
    return SubobjectTokenizer(**{**TINY, **overrides})


def shapes(n: int = 4, size: int = 32, seed: int = 0) -> dict:
    dataset = ShapesDataset(n, image_size=size, seed=seed)
    items = [dataset[i] for i in range(n)]
    return {key: torch.stack([item[key] for item in items]) for key in ("image", "segments")}


def random_segments(b: int, h: int, w: int, n: int, seed: int = 0) -> torch.Tensor:
    """Random rectangles painted over each other, relabelled 0..K-1 (K <= n) so ids are contiguous."""
    gen = torch.Generator().manual_seed(seed)
    seg = torch.zeros(b, h, w, dtype=torch.long)
    for i in range(b):
        for k in range(1, n):
            y, x = torch.randint(0, h - 2, (2,), generator=gen).tolist()
            dy, dx = torch.randint(1, 9, (2,), generator=gen).tolist()
            seg[i, y : y + dy, x : min(x + dx, w)] = k
        seg[i] = torch.unique(seg[i], return_inverse=True)[1]
    return seg


# ---------------------------------------------------------------- geometry


def test_segment_boxes_known_values_and_padding():
    seg = torch.zeros(1, 6, 8, dtype=torch.long)
    seg[0, 1:3, 2:7] = 1
    seg[0, 5, 0] = 2
    boxes = segment_boxes(seg, 4)
    assert boxes.tolist() == [[[0, 0, 6, 8], [1, 2, 3, 7], [5, 0, 6, 1], [0, 0, 6, 8]]]  # id 3: padding


def test_crop_and_paste_are_exact_inverses_for_boxes_of_crop_size():
    x = torch.randn(2, 3, 8, 16)
    seg = torch.zeros(2, 8, 16, dtype=torch.long)
    seg[:, :, 8:] = 1  # two 8x8 halves: boxes of exactly crop_size
    boxes = segment_boxes(seg, 2)
    crops, masks = extract_crops(x, seg, boxes, crop_size=8)
    assert crops.shape == (2, 2, 3, 8, 8) and masks.shape == (2, 2, 8, 8)
    torch.testing.assert_close(crops[:, 0], x[..., :8], rtol=0, atol=1e-5)
    torch.testing.assert_close(crops[:, 1], x[..., 8:], rtol=0, atol=1e-5)
    assert torch.equal(masks, torch.ones_like(masks))
    torch.testing.assert_close(paste_crops(crops, seg, boxes), x, rtol=0, atol=1e-5)


def test_paste_reads_only_the_tokens_own_crop():
    seg = random_segments(3, 20, 24, n=6)
    n = int(seg.max()) + 2  # one padding slot too
    values = torch.randn(3, n, 2)  # a constant colour per token
    crops = values[..., None, None].expand(3, n, 2, 8, 8)  # [B, N, C, S, S]
    out = paste_crops(crops.contiguous(), seg, segment_boxes(seg, n))  # [B, C, H, W]
    expected = values.gather(1, seg.flatten(1)[..., None].expand(-1, -1, 2)).view(3, 20, 24, 2)
    torch.testing.assert_close(out, expected.permute(0, 3, 1, 2), rtol=0, atol=1e-6)


def test_crop_masks_are_the_segments_resampled():
    seg = random_segments(2, 16, 16, n=5, seed=1)
    n = int(seg.max()) + 1
    _, masks = extract_crops(torch.zeros(2, 1, 16, 16), seg, segment_boxes(seg, n), crop_size=16)
    assert masks.min() >= 0 and masks.max() <= 1 + 1e-6
    for b in range(2):  # a box exactly 16 x 16 is the whole image: its crop mask is the segment itself
        for k in range(n):
            box = segment_boxes(seg, n)[b, k].tolist()
            if box == [0, 0, 16, 16]:
                torch.testing.assert_close(masks[b, k], (seg[b] == k).float(), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- the tokenizer


def test_registered_and_attributes():
    tok = tiny()
    assert TOKENIZERS["subobject"] is SubobjectTokenizer
    assert tok.kind == "continuous" and tok.latent_dim == 6 and tok.vocab_size is None
    assert tok.variable_length and tok.grid((3, 32, 32)) == (5,) == tok.grid((3, 64, 48))


@pytest.mark.parametrize("segmenter", ["boundary", "slic", "felzenszwalb"])
def test_encode_decode_shapes_mask_and_forward(segmenter):
    args = {"slic": {"n_segments": 6}, "felzenszwalb": {"scale": 20.0}}.get(segmenter, {})
    tok = tiny(segmenter=segmenter, segmenter_args=args).eval()
    x = shapes(3)["image"]
    tokens = tok.encode(x)
    assert tokens.embeddings.shape == (3, 5, 6) and tokens.mask.shape == (3, 5)
    assert tokens.boxes.shape == (3, 5, 4) and tokens.segments.shape == (3, 32, 32)
    num_segments = tokens.segments.flatten(1).amax(1) + 1  # [B]
    assert torch.equal(tokens.num_tokens, num_segments) and (num_segments <= 5).all()
    assert torch.equal(tokens.mask, torch.arange(5) < num_segments[:, None])  # real tokens first
    assert (tokens.embeddings[~tokens.mask] == 0).all()  # padding is zero
    assert torch.equal(tokens.boxes, segment_boxes(tokens.segments, 5))
    assert torch.equal(tokens.masks.sum(1), torch.ones(3, 32, 32, dtype=torch.long))  # masks tile
    recon, emb, aux = tok(x)
    assert recon.shape == x.shape and float(aux) == 0.0
    torch.testing.assert_close(emb, tokens.embeddings, rtol=0, atol=0)
    torch.testing.assert_close(tok.decode(tokens), recon, rtol=0, atol=0)
    as_dict = {
        "embeddings": tokens.embeddings,
        "mask": tokens.mask,
        "boxes": tokens.boxes,
        "segments": tokens.segments,
    }
    torch.testing.assert_close(tok.decode(as_dict), recon, rtol=0, atol=0)


def test_a_token_only_changes_its_own_pixels():
    tok = tiny(segmenter="slic", segmenter_args={"n_segments": 6}).eval()
    tokens = tok.encode(shapes(2)["image"])
    base = tok.decode(tokens)
    for b, n in [(0, 0), (1, 1)]:
        edited = tokens.embeddings.clone()
        edited[b, n] += 3.0
        out = tok.decode(SubobjectTokens(edited, tokens.mask, tokens.boxes, tokens.segments))
        changed = (out - base).abs().amax(1) > 0  # [B, H, W]
        assert torch.equal(changed[b], tokens.segments[b] == n)
        assert not changed[1 - b].any()


def test_fit_statistics_normalises_real_tokens():
    tok = tiny(segmenter="felzenszwalb").eval()
    batches = [shapes(4, seed=s)["image"] for s in range(2)]
    tok.fit_statistics(batches)
    assert tok.stats_fitted and isinstance(tok.config["latent_scale"], float)
    real = torch.cat([tok.encode(x).embeddings[tok.encode(x).mask] for x in batches])  # [M, D]
    assert abs(float(real.mean())) < 1e-5 and float(real.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def test_gradients_reach_encoder_and_decoder():
    tok = tiny(segmenter="slic", segmenter_args={"n_segments": 6}).train()
    x = shapes(2)["image"]
    recon, _, _ = tok(x)
    (recon - x).abs().mean().backward()
    assert tok.encoder.net[0].weight.grad.abs().sum() > 0
    assert tok.decoder.net[0].weight.grad.abs().sum() > 0


def test_crop_autoencoder_learns_a_batch():
    tok = tiny(segmenter="felzenszwalb", ch=8, latent_dim=16).train()
    x = shapes(4)["image"]
    optimizer = torch.optim.Adam(tok.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = (tok(x)[0] - x).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_supervised_losses_is_the_boundary_bce():
    tok = tiny(boundary_weight=0.5)
    batch = shapes(2)
    losses = tok.supervised_losses(batch)
    torch.testing.assert_close(
        losses["boundary_bce"], 0.5 * tok.segmenter.loss(batch["image"], batch["segments"])
    )
    losses["boundary_bce"].backward()
    assert tok.segmenter.net.net[0].weight.grad is not None
    assert tok.supervised_losses({"image": batch["image"]}) == {}
    assert tiny(segmenter="slic", boundary_weight=1.0).supervised_losses(batch) == {}
    frozen = tiny()  # boundary_weight 0: trained separately, frozen, no loss
    assert frozen.supervised_losses(batch) == {}
    assert not any(p.requires_grad for p in frozen.segmenter.parameters())
    assert all(p.requires_grad for p in frozen.encoder.parameters())


def test_save_load_bit_exact(tmp_path):
    tok = tiny(boundary_weight=1.0)
    batch = shapes(4)
    tok.supervised_losses(batch)["boundary_bce"].backward()  # move the boundary net away from init
    with torch.no_grad():
        for p in tok.parameters():
            p.add_(0.01 * p.grad if p.grad is not None else 0.0)
    tok.eval().fit_statistics([batch["image"]])
    tok.save_pretrained(tmp_path)
    assert read_tokenizer_config(tmp_path) == {"name": "subobject", **tok.config}
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, SubobjectTokenizer) and not loaded.training
    ref, got = tok.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    a, b = tok.encode(batch["image"]), loaded.encode(batch["image"])
    for field in ("embeddings", "mask", "boxes", "segments"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert torch.equal(tok.decode(a), loaded.decode(b))


def test_boundary_path_is_loaded_once_and_exported(tmp_path):
    torch.manual_seed(5)
    trained = BoundarySegmenter(width=4, depth=2)
    trained.save_pretrained(tmp_path / "boundary")
    tok = tiny(segmenter_args={"width": 4, "depth": 2}, boundary_path=str(tmp_path / "boundary")).eval()
    assert not bool(tok.boundary_loaded)
    assert not torch.equal(tok.segmenter.net.net[0].weight, trained.net.net[0].weight)
    tok.encode(shapes(1)["image"])  # first use loads the predictor
    assert bool(tok.boundary_loaded)
    assert torch.equal(tok.segmenter.net.net[0].weight, trained.net.net[0].weight)
    tok.save_pretrained(tmp_path / "export")
    shutil.rmtree(tmp_path / "boundary")  # the export carries the weights: the folder is no longer needed
    loaded = load_tokenizer(tmp_path / "export")
    x = shapes(2)["image"]
    assert torch.equal(loaded.encode(x).segments, tok.encode(x).segments)


def test_missing_or_mismatched_boundary_predictor(tmp_path):
    tok = tiny(boundary_path=str(tmp_path / "nowhere"))  # constructing does not need the folder yet
    with pytest.raises(ConfigError, match=r"no boundary predictor.*scripts/train_boundary\.py"):
        tok.encode(shapes(1)["image"])
    BoundarySegmenter(width=4, depth=2).save_pretrained(tmp_path / "small")
    with pytest.raises(ConfigError, match=r"width=4 .*segmenter_args\.width=4"):
        tiny(boundary_path=str(tmp_path / "small"))(shapes(1)["image"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"crop_size": 12}, "crop_size=12"),
        ({"max_tokens": 0}, "max_tokens=0"),
        ({"boundary_weight": -1.0}, "boundary_weight=-1"),
        ({"segmenter": "sam"}, "unknown segmenter 'sam'"),
        ({"segmenter": "slic", "boundary_path": "x"}, "boundary_path is only used with segmenter: boundary"),
        ({"segmenter_args": {"max_tokens": 3}}, "must not set max_tokens"),
        ({"segmenter_args": {"in_channels": 1}}, "must not set in_channels"),
        ({"segmenter": "slic", "segmenter_args": {"width": 3}}, r"unknown argument\(s\) \['width'\]"),
    ],
)
def test_constructor_errors_name_the_field(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        tiny(**kwargs)


def test_input_and_token_errors():
    tok = tiny(segmenter="slic").eval()
    with pytest.raises(ConfigError, match=r"1 channels.*expects 3"):
        tok.encode(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ConfigError, match=r"\[B, C, H, W\]"):
        tok.encode(torch.zeros(3, 16, 16))
    tokens = tok.encode(shapes(2)["image"])
    bad_dim = SubobjectTokens(torch.zeros(2, 5, 7), tokens.mask, tokens.boxes, tokens.segments)
    with pytest.raises(ConfigError, match="max_tokens=5 and latent_dim=6"):
        tok.decode(bad_dim)
    bad_n = SubobjectTokens(torch.zeros(2, 4, 6), tokens.mask[:, :4], tokens.boxes[:, :4], tokens.segments)
    with pytest.raises(ConfigError, match="max_tokens=5"):
        tok.decode(bad_n)
    with pytest.raises(ConfigError, match=r"segment ids must lie in \[0, 5\)"):
        tok.decode(SubobjectTokens(tokens.embeddings, tokens.mask, tokens.boxes, tokens.segments + 5))
    with pytest.raises(ConfigError, match="segments \\[B, H, W\\] \\(integer\\)"):
        tok.decode(SubobjectTokens(tokens.embeddings, tokens.mask, tokens.boxes, tokens.segments.float()))
