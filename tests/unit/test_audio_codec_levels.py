"""The bitrate ladder of a trained residual codec: with quantizer dropout every prefix of the levels is a
codec, and decoding with more levels brings the audio closer to the input (multi-scale mel distance and
SI-SDR on held-out notes), monotonically."""

import itertools

import torch

from mmar.data import EmbeddedNotesDataModule
from mmar.eval.audio import mel_distance, si_sdr
from tokenizers_audio import RVQCodec

LEVELS = 4


def notes(split: str, n: int) -> torch.Tensor:
    data = EmbeddedNotesDataModule(sample_rate=8000, duration=0.25, num_clips_train=n, num_clips_val=n)
    data.setup()
    dataset = data.train_dataset if split == "train" else data.val_dataset
    return torch.stack([dataset[i]["audio"] for i in range(n)])


def test_more_levels_decode_closer_to_the_input():
    torch.manual_seed(0)
    codec = RVQCodec(
        sample_rate=8000,
        channels=8,
        latent_dim=16,
        strides=[2, 4, 2, 5],
        num_quantizers=LEVELS,
        codebook_size=32,
        quantizer_dropout=0.5,
        threshold_ema_dead_code=0.0,
        time_loss="mse",  # the losses of configs/audio/notes_codec.yaml: fast to converge
        time_weight=100.0,
        mel_weight=0.1,
        stft_weight=0.1,
    )
    optimizer = torch.optim.Adam(codec.parameters(), lr=3e-3)
    train = notes("train", 64)
    codec.train()
    for step in range(150):
        batch = train[(step % 8) * 8 : (step % 8 + 1) * 8]
        recon, _, commitment = codec(batch)
        loss = sum(codec.reconstruction_losses(recon, batch).values()) + commitment
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    codec.eval()
    held_out = notes("val", 16)
    mel, sdr = [], []
    with torch.no_grad():
        for q in range(1, LEVELS + 1):
            recon = codec.decode(codec.encode(held_out, num_quantizers=q))
            mel.append(mel_distance(recon, held_out, 8000))
            sdr.append(si_sdr(recon, held_out).mean().item())
    assert all(b < a for a, b in itertools.pairwise(mel)), mel
    assert all(b > a for a, b in itertools.pairwise(sdr)), sdr
