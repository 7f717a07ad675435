"""Rebuild tests/data/notes_codec/: a tiny residual-VQ codec (3 levels of 16 codes, ~73k parameters)
trained on the embedded notes, which tests/unit/test_codec_ladder.py decodes at every bitrate. A trained
codec is needed there: an untrained decoder maps every level to about the same audio.

    python tests/data/make_notes_codec.py          # ~7 minutes on 2 CPU cores
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmar.data.audio import EmbeddedNotesDataset
from tokenizers_audio import RVQCodec

SR, DURATION, LEVELS, STEPS = 8000, 0.25, 3, 3000
OUT = Path(__file__).parent / "notes_codec"


def notes(num: int, split: str) -> torch.Tensor:
    data = EmbeddedNotesDataset(num, SR, DURATION, seed=0, split=split)
    return torch.stack([data[i]["audio"] for i in range(num)])  # [num, 1, 2000]


def main() -> None:
    torch.manual_seed(0)
    codec = RVQCodec(
        sample_rate=SR,
        channels=4,
        latent_dim=8,
        strides=[2, 4, 2, 5],
        num_quantizers=LEVELS,
        codebook_size=16,
        quantizer_dropout=0.5,  # every prefix of the levels trains as a codec of its own
        time_loss="mse",
        time_weight=100.0,
        mel_weight=0.1,
        stft_weight=0.0,
    )
    train = notes(1024, "train")
    optimizer = torch.optim.AdamW(codec.parameters(), lr=2e-3, betas=(0.8, 0.99))
    codec.train()
    for step in range(STEPS):
        x = train[(step * 16) % len(train) :][:16]  # [16, 1, 2000]
        recon, _, aux = codec(x)
        loss = sum(codec.reconstruction_losses(recon, x).values()) + aux
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    codec.eval().save_pretrained(OUT)
    print(f"saved to {OUT}")


if __name__ == "__main__":
    main()
