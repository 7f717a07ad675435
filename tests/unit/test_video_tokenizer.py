"""VideoFSQTokenizer: causal 3D convs, encoder and decoder, grid formula, errors, export, training."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from mmar.data import MovingDigitsDataModule
from mmar.errors import ConfigError
from mmar.lit import TokenizerModule
from mmar.lit.tokenizer_module import as_frames
from tokenizers_visual import TOKENIZERS, VideoFSQTokenizer, load_tokenizer
from tokenizers_visual.video import CausalConv3d

TINY = {"in_channels": 1, "ch": 4, "num_res_blocks": 1, "levels": [5, 5, 3], "spatial_downsample": 4}


def tiny_tokenizer(**overrides) -> VideoFSQTokenizer:
    torch.manual_seed(0)
    return with_past_taps(VideoFSQTokenizer(**{**TINY, "temporal_downsample": 4, **overrides}).eval())


def with_past_taps(module: torch.nn.Module) -> torch.nn.Module:
    """Re-initialise every causal conv with all temporal taps nonzero (they start at zero), so the
    causality tests see a network that really mixes frames."""
    for m in module.modules():
        if isinstance(m, CausalConv3d):
            m.conv.reset_parameters()
    return module


def videos(b: int = 2, c: int = 1, t: int = 9, h: int = 8, w: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.rand(b, c, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1  # [-1, 1]


def perturb_after(x: torch.Tensor, t: int) -> torch.Tensor:
    """A copy of x [B, C, T, ...] with every frame after index t replaced by noise."""
    y = x.clone()
    y[:, :, t + 1 :] = torch.randn_like(y[:, :, t + 1 :]) * 3
    return y


# ---------------------------------------------------------------- CausalConv3d


@pytest.mark.parametrize("pad_mode", ["replicate", "zeros"])
@pytest.mark.parametrize("stride_t", [1, 2])
def test_causal_conv_equals_explicit_sum_over_past_frames(pad_mode, stride_t):
    torch.manual_seed(0)
    conv = with_past_taps(CausalConv3d(2, 3, (3, 3, 3), (stride_t, 1, 1), pad_mode=pad_mode))
    x = torch.randn(2, 2, 7, 5, 6)
    out = conv(x)
    assert out.shape == (2, 3, (7 - 1) // stride_t + 1, 5, 6)
    weight, bias = conv.conv.weight, conv.conv.bias  # [3, 2, kt, 3, 3], [3]
    first = x[:, :, 0] if pad_mode == "replicate" else torch.zeros_like(x[:, :, 0])
    for j in range(out.shape[2]):
        # output frame j = sum over taps k of a 2D conv of input frame j*s - 2 + k (before 0: the padding)
        expected = bias[None, :, None, None]
        for k in range(3):
            t = j * stride_t - 2 + k
            frame = x[:, :, t] if t >= 0 else first  # [B, 2, H, W]
            expected = expected + F.conv2d(frame, weight[:, :, k], padding=1)
        torch.testing.assert_close(out[:, :, j], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pad_mode", ["replicate", "zeros"])
def test_causal_conv_output_frame_sees_no_later_input(pad_mode):
    torch.manual_seed(0)
    conv = with_past_taps(CausalConv3d(2, 3, 3, pad_mode=pad_mode))
    x = torch.randn(1, 2, 6, 4, 4)
    out = conv(x)
    for t in range(5):
        out2 = conv(perturb_after(x, t))
        torch.testing.assert_close(out2[:, :, : t + 1], out[:, :, : t + 1], rtol=0, atol=0)
        assert not torch.allclose(out2[:, :, t + 1], out[:, :, t + 1])  # the next frame does see it


def test_causal_conv_starts_as_a_per_frame_2d_conv():
    torch.manual_seed(0)
    conv = CausalConv3d(2, 3, 3)
    x = torch.randn(2, 2, 4, 5, 5)
    weight = conv.conv.weight[:, :, -1]  # [3, 2, 3, 3]: the only nonzero tap, on the current frame
    assert not conv.conv.weight[:, :, :-1].any()
    expected = torch.stack([F.conv2d(x[:, :, t], weight, conv.conv.bias, padding=1) for t in range(4)], 2)
    torch.testing.assert_close(conv(x), expected, rtol=1e-5, atol=1e-5)
    bound = 1 / (2 * 3 * 3) ** 0.5  # PyTorch's default init bound for a 2D conv with this fan-in
    assert weight.abs().max() <= bound and weight.abs().max() > 0.7 * bound


# ---------------------------------------------------------------- encoder / decoder causality


@pytest.mark.parametrize("temporal_downsample, frames", [(4, 9), (2, 7)])
@pytest.mark.parametrize("pad_mode", ["replicate", "zeros"])
def test_encoder_is_causal(temporal_downsample, frames, pad_mode):
    tok = tiny_tokenizer(temporal_downsample=temporal_downsample, temporal_padding=pad_mode)
    x = videos(t=frames)
    z = tok.encoder(x)  # [B, L, t, h, w]
    ids = tok.encode(x)
    num_latent = 1 + (frames - 1) // temporal_downsample
    assert z.shape[2] == ids.shape[1] == num_latent
    for j in range(num_latent - 1):
        last_seen = j * temporal_downsample  # latent frame j covers input frames <= j * t_down
        y = perturb_after(x, last_seen)
        z2 = tok.encoder(y)
        torch.testing.assert_close(z2[:, :, : j + 1], z[:, :, : j + 1], rtol=0, atol=0)
        assert torch.equal(tok.encode(y)[:, : j + 1], ids[:, : j + 1])
        assert not torch.allclose(z2[:, :, j + 1], z[:, :, j + 1])  # later latents do change


def test_first_latent_frame_depends_only_on_first_frame():
    tok = tiny_tokenizer()
    x = videos(t=9)
    z = tok.encoder(x)
    torch.testing.assert_close(tok.encoder(perturb_after(x, 0))[:, :, :1], z[:, :, :1], rtol=0, atol=0)
    # so an image is a one-frame video, and a prefix clip encodes to the prefix of the latents
    torch.testing.assert_close(tok.encoder(x[:, :, :1]), z[:, :, :1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tok.encoder(x[:, :, :5]), z[:, :, :2], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temporal_downsample", [2, 4])
def test_decoder_is_causal(temporal_downsample):
    tok = tiny_tokenizer(temporal_downsample=temporal_downsample)
    zq = torch.rand(2, 3, 3, 2, 2, generator=torch.Generator().manual_seed(2)) * 2 - 1  # [B, L, t, h, w]
    out = tok.decoder(zq)
    assert out.shape == (2, 1, 1 + 2 * temporal_downsample, 8, 8)
    for j in range(2):
        last = j * temporal_downsample  # decoded frames <= j * t_down come from latents <= j
        out2 = tok.decoder(perturb_after(zq, j))
        torch.testing.assert_close(out2[:, :, : last + 1], out[:, :, : last + 1], rtol=0, atol=0)
        assert not torch.allclose(out2[:, :, last + 1], out[:, :, last + 1])


# ---------------------------------------------------------------- grid, shapes, ids


@pytest.mark.parametrize(
    "shape, s, td, grid",
    [((1, 9, 32, 32), 4, 4, (3, 8, 8)), ((1, 5, 16, 24), 4, 2, (3, 4, 6)), ((1, 1, 8, 8), 2, 2, (1, 4, 4))],
)
def test_grid_formula_matches_encode_and_decode(shape, s, td, grid):
    tok = tiny_tokenizer(spatial_downsample=s, temporal_downsample=td)
    assert tok.grid(shape) == grid == (1 + (shape[1] - 1) // td, shape[2] // s, shape[3] // s)
    x = videos(2, *shape)
    ids = tok.encode(x)
    assert ids.shape == (2, *grid) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < tok.vocab_size == 5 * 5 * 3
    assert tok.decode(ids).shape == x.shape


def test_decode_of_encode_equals_forward_and_aux_is_zero():
    tok = tiny_tokenizer()
    x = videos()
    recon, ids, aux = tok(x)
    assert torch.equal(ids, tok.encode(x))
    torch.testing.assert_close(tok.decode(ids), recon, rtol=0, atol=0)
    assert aux.ndim == 0 and float(aux) == 0.0


def test_gradients_reach_the_encoder_through_fsq():
    tok = tiny_tokenizer().train()
    recon, _, aux = tok(videos())
    (recon.abs().mean() + aux).backward()
    grad = tok.encoder.net[0].conv.weight.grad
    assert grad is not None and grad.abs().sum() > 0  # straight-through rounding


def test_quantiser_runs_in_fp32_under_autocast():
    tok = tiny_tokenizer()
    x = videos()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recon, ids, _ = tok(x)
    assert ids.dtype == torch.long and recon.shape == x.shape
    assert int(ids.max()) < tok.vocab_size


def test_grid_and_input_errors_name_the_fix():
    tok = tiny_tokenizer()
    with pytest.raises(ConfigError, match=r"T=8 .*multiple of 4.*e\.g\. 9"):
        tok.encode(videos(t=8))
    with pytest.raises(ConfigError, match=r"not divisible.*factor 4"):
        tok.encode(videos(h=10))
    with pytest.raises(ConfigError, match=r"3 channels.*expects 1"):
        tok.encode(videos(c=3))
    with pytest.raises(ConfigError, match=r"\[B, C, T, H, W\]"):
        tok.encode(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ConfigError, match=r"\(C, T, H, W\)"):
        tok.grid((1, 8, 8))


def test_decode_rejects_bad_ids():
    tok = tiny_tokenizer()
    ids = torch.zeros(1, 3, 2, 2, dtype=torch.long)
    ids[0, 2, 1, 1] = 75
    with pytest.raises(ConfigError, match=r"\[0, 75\)"):
        tok.decode(ids)
    with pytest.raises(ConfigError, match="integer ids"):
        tok.decode(torch.zeros(1, 3, 2, 2))
    with pytest.raises(ConfigError, match=r"\[B, t, h, w\]"):
        tok.decode(torch.zeros(3, 2, 2, dtype=torch.long))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spatial_downsample": 6}, "spatial_downsample=6 must be a power of two"),
        ({"temporal_downsample": 3}, "temporal_downsample=3 must be a power of two"),
        ({"temporal_downsample": 8}, "temporal_downsample=8 > spatial_downsample=4"),
        ({"ch_mult": [1, 2]}, r"ch_mult=\[1, 2\] needs .* 3 entries"),
        ({"levels": [8, 2]}, r"levels=\[8, 2\] must be .* >= 3"),
        ({"temporal_padding": "reflect"}, "temporal_padding must be one of"),
    ],
)
def test_constructor_errors_name_the_field(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        tiny_tokenizer(**kwargs)


def test_save_load_round_trip_is_bit_exact(tmp_path):
    tok = tiny_tokenizer(temporal_downsample=2, temporal_padding="zeros").train()
    opt = torch.optim.SGD(tok.parameters(), lr=0.1)
    x = videos(t=5, h=16, w=16)
    recon, _, _ = tok(x)
    recon.square().mean().backward()
    opt.step()  # weights away from their initial values
    tok.eval()
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, VideoFSQTokenizer) and TOKENIZERS["video_fsq"] is VideoFSQTokenizer
    assert loaded.config == tok.config
    for key, value in tok.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    ids = tok.encode(x)
    assert torch.equal(loaded.encode(x), ids)
    torch.testing.assert_close(loaded.decode(ids), tok.decode(ids), rtol=0, atol=0)


# ---------------------------------------------------------------- training with TokenizerModule


def test_as_frames_folds_time_into_the_batch():
    x = videos(2, 1, 3, 4, 4)
    frames = as_frames(x)
    assert frames.shape == (6, 1, 4, 4)
    assert torch.equal(frames[1 * 3 + 2], x[1, :, 2])
    images = torch.zeros(2, 1, 4, 4)
    assert as_frames(images) is images


class ImagesOnlyPerceptual(torch.nn.Module):
    """Stand-in for LPIPS (builds no VGG, so the test stays fast) that accepts images [N, C, H, W] only."""

    def __init__(self, pretrained: bool = True):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()), requires_grad=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert x.ndim == y.ndim == 4, "the perceptual loss must see frames, not videos"
        return self.scale * (x - y).abs().mean()


def test_tokenizer_module_trains_on_videos_with_gan_and_perceptual(tmp_path, monkeypatch):
    monkeypatch.setattr("mmar.lit.tokenizer_module.PerceptualLoss", ImagesOnlyPerceptual)
    torch.manual_seed(0)
    data = MovingDigitsDataModule(
        image_size=16, num_frames=5, batch_size=2, num_clips_train=4, num_clips_val=2, digit_size=8
    )
    tokenizer = {"name": "video_fsq", **TINY, "temporal_downsample": 2}
    module = TokenizerModule(
        tokenizer=tokenizer,
        lr=1e-3,
        perceptual_weight=0.1,
        gan_weight=0.1,
        disc_channels=4,
        disc_layers=1,
        usage_buffer=128,
        export_dir=str(tmp_path / "tokenizer"),
    )
    before = {k: v.clone() for k, v in module.discriminator.state_dict().items()}
    trainer = Trainer(
        accelerator="cpu",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=data)
    metrics = trainer.callback_metrics
    assert {"train/perceptual", "train/g_adv", "train/d_loss", "val/psnr", "val/usage"} <= set(metrics)
    assert 0 < float(metrics["val/usage"]) <= 1 and float(metrics["val/psnr"]) > 0
    assert any(not torch.equal(before[k], v) for k, v in module.discriminator.state_dict().items())
    loaded = load_tokenizer(tmp_path / "tokenizer")
    batch = next(iter(DataLoader(data.val_dataset, batch_size=2)))
    assert torch.equal(loaded.encode(batch["video"]), module.tokenizer.eval().encode(batch["video"]))
