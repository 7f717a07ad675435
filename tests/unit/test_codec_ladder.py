"""The residual-VQ codec's bitrate ladder on decoded audio: a small codec trained on the embedded notes
(tests/data/make_notes_codec.py; quantizer dropout makes every prefix of its levels a codec of its own)
reconstructs held-out notes closer to the input with every level it is given: the multi-scale mel
distance and the waveform error both fall strictly from 1 to 3 levels."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from mmar.data.audio import EmbeddedNotesDataset
from mmar.eval.audio import mel_distance
from mmar.tokenizer import load_tokenizer

CODEC = Path(__file__).parents[1] / "data" / "notes_codec"


@torch.no_grad()
def test_mel_distance_falls_with_every_level_of_a_trained_codec():
    codec = load_tokenizer(CODEC).eval()
    data = EmbeddedNotesDataset(64, codec.sample_rate, 0.25, seed=0, split="val")
    val = torch.stack([data[i]["audio"] for i in range(len(data))])  # [64, 1, 2000] held-out notes
    recons = [codec.decode(codec.encode(val, num_quantizers=q)) for q in range(1, codec.num_quantizers + 1)]
    mel = [mel_distance(r, val, codec.sample_rate) for r in recons]
    mse = [float((r - val).pow(2).mean()) for r in recons]
    assert all(b < a for a, b in itertools.pairwise(mel)), mel
    assert all(b < a for a, b in itertools.pairwise(mse)), mse
