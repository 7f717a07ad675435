"""The residual-VQ codec's bitrate ladder on real signals: a small codec trained here on the embedded notes
(quantizer dropout, so every prefix of the levels is a codec of its own) reconstructs held-out notes with a
multi-scale mel distance that falls with every level it is given, and so does the waveform error."""

from __future__ import annotations

import itertools

import torch

from mmar.data.audio import EmbeddedNotesDataset
from mmar.eval.audio import mel_distance
from tokenizers_audio import RVQCodec

SR, DURATION, LEVELS = 8000, 0.25, 3


def notes(num: int, split: str) -> torch.Tensor:
    data = EmbeddedNotesDataset(num, SR, DURATION, seed=0, split=split)
    return torch.stack([data[i]["audio"] for i in range(num)])  # [num, 1, 2000]


def test_mel_distance_falls_with_every_level_of_a_trained_codec():
    torch.manual_seed(0)
    codec = RVQCodec(
        sample_rate=SR,
        channels=8,
        latent_dim=16,
        strides=[2, 4, 2, 5],
        num_quantizers=LEVELS,
        codebook_size=32,
        quantizer_dropout=1.0,  # every batch trains a random prefix of the levels
        time_loss="mse",
        time_weight=100.0,
        mel_weight=0.1,
        stft_weight=0.0,
    )
    train, val = notes(512, "train"), notes(32, "val")
    optimizer = torch.optim.AdamW(codec.parameters(), lr=3e-3, betas=(0.8, 0.99))
    codec.train()
    for step in range(240):
        x = train[(step * 16) % len(train) :][:16]  # [16, 1, 2000]
        recon, _, aux = codec(x)
        loss = sum(codec.reconstruction_losses(recon, x).values()) + aux
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    codec.eval()
    with torch.no_grad():
        recons = [codec.decode(codec.encode(val, num_quantizers=q)) for q in range(1, LEVELS + 1)]
    mel = [mel_distance(r, val, SR) for r in recons]
    mse = [float((r - val).pow(2).mean()) for r in recons]
    assert all(b < a for a, b in itertools.pairwise(mel)), mel
    assert all(b < a for a, b in itertools.pairwise(mse)), mse
