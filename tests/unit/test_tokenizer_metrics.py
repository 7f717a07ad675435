"""Tokenizer metrics: SSIM identities, frame flattening, reconstruction Fréchet distance closed forms."""

import torch

from mmar.eval import as_frames, reconstruction_fd, ssim


def test_ssim_identity_and_ordering():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    assert ssim(x, x).item() == 1.0
    slight, heavy = x + 0.05 * torch.randn_like(x), x + 0.5 * torch.randn_like(x)
    assert 1.0 > ssim(x, slight).item() > ssim(x, heavy).item()


def test_videos_are_scored_frame_by_frame():
    video = torch.randn(2, 3, 5, 8, 8)  # (B, C, T, H, W)
    frames = as_frames(video)
    assert frames.shape == (10, 3, 8, 8)
    assert torch.equal(frames[7], video[1, :, 2])
    noisy = video + 0.1 * torch.randn_like(video)
    torch.testing.assert_close(
        ssim(video.clamp(-1, 1), noisy), ssim(as_frames(video.clamp(-1, 1)), as_frames(noisy))
    )


def test_reconstruction_fd_closed_form():
    torch.manual_seed(0)
    originals = torch.randn(20000, 3)
    identity = lambda x: x
    assert reconstruction_fd(identity, originals, originals) < 1e-9
    # a shift by m moves the mean only: FD = |m|^2 (same covariance)
    shifted = originals + torch.tensor([1.0, -2.0, 0.5])
    assert abs(reconstruction_fd(identity, originals, shifted) - 5.25) < 1e-6
