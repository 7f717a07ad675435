"""Boundaries of segment maps: the targets of the shapes data's boundary maps and what
`mmar.eval.segmentation` scores segmenters with (kept here, so the data never imports the evaluation)."""

from __future__ import annotations

import torch


def boundary_map(segments: torch.Tensor) -> torch.Tensor:
    """Thick boundaries of a segment map: True where a 4-neighbour has a different segment id.

    Both sides of every edge between two segments are marked (skimage's `find_boundaries(mode="thick")`),
    so boundaries are two pixels wide; the image border is not a boundary.

    Args:
        segments: integer segment ids [..., H, W].

    Returns:
        bool [..., H, W].
    """
    edges = torch.zeros(segments.shape, dtype=torch.bool, device=segments.device)
    dy = segments[..., 1:, :] != segments[..., :-1, :]  # [..., H-1, W]
    dx = segments[..., :, 1:] != segments[..., :, :-1]  # [..., H, W-1]
    edges[..., 1:, :] |= dy
    edges[..., :-1, :] |= dy
    edges[..., :, 1:] |= dx
    edges[..., :, :-1] |= dx
    return edges
