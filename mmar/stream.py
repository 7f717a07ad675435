"""One token stream for text and images (Emu3, Wang et al. 2024; Lumina-mGPT, Liu et al. 2024).

Text and image tokens share one vocabulary and one next-token trunk:

    [ text ids (the text tokenizer's; <|bos|> = 0, <|eos|> = 1) | image ids + offset | BOI | EOI ]

and a sample is one of these sequences:

- text:           [BOS, text, EOS]                       (documents, packed for language modelling)
- text-to-image:  [BOS, text, BOI, image, EOI]           (text dropped, [BOS, BOI, image, EOI], for CFG)
- captioning:     [BOS, BOI, image, EOI, text, EOS]

RoPE positions: a text-only stream has 1D positions. With images every token has two coordinates, a
2-axis form of Qwen2-VL's multimodal RoPE: text at stream position p sits at (p, p), so offsets between
text tokens are 1D; the image cell (r, c) after a BOI at p sits at (p + 1 + r, p + 1 + c), so offsets
between cells are 2D; the token after the image continues at p + 1 + max(h, w).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmar.errors import ConfigError
from mmar.units.base import grid_positions

TEXT, IMAGE = "text", "image"
MODALITIES = (TEXT, IMAGE)


@dataclass(frozen=True)
class StreamVocab:
    """Where each kind of token lives in the one vocabulary."""

    text: int
    """Text vocabulary size (the text tokenizer's, its BOS and EOS included)."""
    image: int = 0
    """Image vocabulary size; 0 for a text-only stream (no image ids, no BOI/EOI)."""
    bos: int = 0
    eos: int = 1

    @property
    def image_offset(self) -> int:
        return self.text

    @property
    def boi(self) -> int:
        return self.text + self.image

    @property
    def eoi(self) -> int:
        return self.boi + 1

    @property
    def size(self) -> int:
        return self.text + self.image + (2 if self.image else 0)

    def emits(self, modality: str) -> tuple[int, int]:
        """The id range [lo, hi) that a position generating `modality` samples from: text positions emit
        EOS or a text token (never BOS), image positions an image token. Both ranges are contiguous, so
        decoding computes logits over that slice only and can never emit an id of the other modality."""
        if not self.can_emit(modality):
            raise ConfigError(f"this stream cannot emit '{modality}' tokens (image vocabulary {self.image})")
        return (self.eos, self.text) if modality == TEXT else (self.text, self.text + self.image)

    def can_emit(self, modality: str) -> bool:
        return modality == TEXT or (modality == IMAGE and self.image > 0)

    def in_range(self, ids: torch.Tensor, modality: str) -> torch.Tensor:
        """Which ids a position generating `modality` can emit (`emits`); BOS, BOI and EOI are in none."""
        lo, hi = self.emits(modality)
        return (ids >= lo) & (ids < hi)


class StreamLayout:
    """Builds token sequences and their RoPE positions for one vocabulary and image grid."""

    def __init__(self, vocab: StreamVocab, grid: tuple[int, ...] = ()):
        self.vocab, self.grid = vocab, tuple(grid)
        self.axes = 2 if vocab.image else 1

    def text_positions(self, start: int, length: int, device=None) -> torch.Tensor:
        """[length, axes]: stream positions start .. start + length - 1 on every axis."""
        p = torch.arange(start, start + length, device=device)
        return p[:, None].expand(length, self.axes)

    def image_positions(self, start: int, device=None) -> torch.Tensor:
        """[h * w, 2]: the image grid's raster cells, shifted to start at stream position `start`."""
        return grid_positions(self.grid, device) + start

    def sequence(
        self, segments: list[tuple[str, list[int] | torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenate segments into (ids [T], positions [T, axes]).

        Args:
            segments: ("text", ids incl. any BOS/EOS) or ("image", raw image ids [h * w] of the image
                tokenizer), in order; an image is wrapped in BOI ... EOI and its ids offset here.
        """
        ids, positions, p = [], [], 0
        for modality, values in segments:
            if modality == TEXT:
                ids.append(torch.as_tensor(values, dtype=torch.long).reshape(-1))
                positions.append(self.text_positions(p, len(ids[-1])))
                p += len(ids[-1])
                continue
            if not self.vocab.image:
                raise ConfigError("a text-only stream cannot hold images; give the model an image_tokenizer")
            image = torch.as_tensor(values).long().reshape(-1).cpu() + self.vocab.image_offset
            ids += [torch.tensor([self.vocab.boi]), image, torch.tensor([self.vocab.eoi])]
            after = p + 1 + max(self.grid)
            positions += [
                self.text_positions(p, 1),
                self.image_positions(p + 1),
                self.text_positions(after, 1),
            ]
            p = after + 1
        return torch.cat(ids), torch.cat(positions)

    def next_position(self, positions: torch.Tensor) -> int:
        """The stream position after a sequence whose positions are [T, axes]."""
        return int(positions.max()) + 1 if len(positions) else 0

    def text_to_image(self, text: list[int] | None, image: torch.Tensor | None = None):
        """[BOS, text, BOI, image, EOI]; text None drops it ([BOS, BOI, ...]: the CFG null); image None
        gives the generation prompt, which ends at BOI."""
        segments = [(TEXT, [self.vocab.bos, *(text or [])])]
        if image is not None:
            return self.sequence([*segments, (IMAGE, image)])
        ids, positions = self.sequence(segments)
        return torch.cat([ids, torch.tensor([self.vocab.boi])]), torch.cat(
            [positions, self.text_positions(self.next_position(positions), 1)]
        )

    def captioning(self, image: torch.Tensor, text: list[int] | None = None):
        """[BOS, BOI, image, EOI, text, EOS]; text None gives the generation prompt, which ends at EOI."""
        segments = [(TEXT, [self.vocab.bos]), (IMAGE, image)]
        if text is not None:
            segments.append((TEXT, [*text, self.vocab.eos]))
        return self.sequence(segments)

    def document(self, text: list[int], close: bool = True):
        """[BOS, text, EOS] (without EOS when `close` is False: a prompt to continue)."""
        return self.sequence([(TEXT, [self.vocab.bos, *text, *([self.vocab.eos] if close else [])])])


def pad(sequences: list[tuple[torch.Tensor, torch.Tensor]], pad_id: int, left: bool = False):
    """Batch sequences of different lengths: (ids [B, T], positions [B, T, A], real [B, T] bool).

    Right padding (training) sits after each sequence, so a causal mask keeps it out of every real
    position and the loss skips it through `real`. Left padding (decoding prompts) aligns the prompts at
    their ends, so every row's next token lands in the same column; the padded keys are hidden from
    attention through `real` (a key-padding mask)."""
    length = max(len(ids) for ids, _ in sequences)
    axes = sequences[0][1].shape[-1]
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    positions = torch.zeros(len(sequences), length, axes, dtype=torch.long)
    real = torch.zeros(len(sequences), length, dtype=torch.bool)
    for row, (seq, pos) in enumerate(sequences):
        cols = slice(length - len(seq), length) if left else slice(0, len(seq))
        ids[row, cols], positions[row, cols], real[row, cols] = seq, pos, True
    return ids, positions, real
