"""Boundary maps of segmentations and boundary precision / recall with a pixel tolerance.

Used to score segmenters (e.g. the boundary predictor of subobject-level tokenization, Chen et al., 2024,
"Subobject-level Image Tokenization", against SLIC) on data with ground-truth segment maps. The measure
is the tolerant boundary matching of the BSDS benchmark (Martin et al., 2004) without its one-to-one
assignment: a predicted boundary pixel counts as correct when a ground-truth boundary pixel lies within
Euclidean distance `tolerance` of it (precision), and a ground-truth boundary pixel counts as found when
a predicted one lies within `tolerance` of it (recall). Counts are pooled over the batch (micro average).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmar.data.segments import boundary_map  # re-exported: segment maps and their boundaries are data
from mmar.errors import ConfigError

__all__ = ["boundary_map", "boundary_precision_recall", "segment_boundary_scores"]


def disk(radius: int) -> torch.Tensor:
    """Bool [2r+1, 2r+1] kernel of the offsets (dy, dx) with dy^2 + dx^2 <= r^2."""
    offsets = torch.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels within Euclidean distance `radius` of a True pixel of `mask` [B, H, W] (bool -> bool)."""
    if radius == 0:
        return mask.clone()
    kernel = disk(radius).to(mask.device, torch.float32)[None, None]  # [1, 1, 2r+1, 2r+1]
    hits = F.conv2d(mask[:, None].float(), kernel, padding=radius)  # [B, 1, H, W] neighbour counts
    return hits[:, 0] > 0.5


def boundary_precision_recall(
    pred: torch.Tensor, target: torch.Tensor, tolerance: int = 1
) -> dict[str, float]:
    """Tolerant boundary precision, recall and F1 of boolean boundary maps, pooled over the batch.

    Args:
        pred: predicted boundary pixels, bool [H, W] or [B, H, W].
        target: ground-truth boundary pixels, same shape.
        tolerance: largest Euclidean distance (pixels, integer >= 0) at which a boundary pixel still
            matches one of the other map; 0 asks for exact overlap.

    Returns:
        {"precision", "recall", "f1"} as floats. An empty prediction has precision 1 (nothing is wrong)
        and an empty target recall 1 (nothing was missed); F1 is 0 when both are 0.
    """
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ConfigError(f"tolerance must be an integer number of pixels >= 0, got {tolerance!r}")
    if pred.shape != target.shape or pred.ndim not in (2, 3):
        raise ConfigError(
            f"boundary maps must both be [H, W] or [B, H, W] with the same shape, got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    pred, target = pred.bool().reshape(-1, *pred.shape[-2:]), target.bool().reshape(-1, *target.shape[-2:])
    num_pred, num_target = int(pred.sum()), int(target.sum())
    correct = int((pred & dilate(target, tolerance)).sum())  # predictions near a true boundary
    found = int((target & dilate(pred, tolerance)).sum())  # true boundaries near a prediction
    precision = correct / num_pred if num_pred else 1.0
    recall = found / num_target if num_target else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def segment_boundary_scores(
    pred_segments: torch.Tensor, target_segments: torch.Tensor, tolerance: int = 1
) -> dict[str, float]:
    """`boundary_precision_recall` of the thick boundaries of two segment maps [B, H, W] (or [H, W])."""
    return boundary_precision_recall(boundary_map(pred_segments), boundary_map(target_segments), tolerance)
