"""Post-training dimension-wise quantisation of a continuous tokenizer (TokenBridge: Wang et al., 2025,
"Bridging Continuous and Discrete Tokens for Autoregressive Visual Generation").

A trained continuous tokenizer whose normalised latents are roughly N(0, 1) per channel is turned into a
discrete one without retraining: every channel of every latent is quantised on its own into
L = 2 ** `bits` levels. The bins follow the Gaussian prior: the L + 1 edges are the quantiles of the
standard normal truncated to [-r, r] (r = `value_range`) at probabilities i / L, so each bin holds the
same probability mass, and a bin is reconstructed by the mean of the truncated normal inside it,

    edge_i  = Phi^-1(Phi(-r) + i / L (Phi(r) - Phi(-r))),
    value_i = (phi(edge_i) - phi(edge_{i+1})) / (Phi(edge_{i+1}) - Phi(edge_i)).

Values outside [-r, r] fall into the end bins; their share on data is measured by `fit_statistics`
(stored as `out_of_range_fraction`) and `measure`. A grid cell becomes C ids (one per channel), so
`token_shape = (C,)` and `vocab_size = L` (levels per channel): the generator predicts them with the
channel-wise autoregressive head (`mmar.heads.ChannelARHead`).

TokenBridge's code clamps the plain normal's quantiles to [-r, r], which makes the two end bins wider
and heavier than the others; the truncated normal here keeps every bin at mass 1 / L of the prior.

Saving: the inner tokenizer's name and constructor kwargs are part of this tokenizer's config, and its
weights sit in the same safetensors file under `inner.`, so `load_tokenizer(path)` rebuilds the whole
stack from one self-contained folder with the unchanged base `save_pretrained` / `load_tokenizer`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

from mmar.errors import ConfigError
from mmar.tokenizer import TOKENIZERS, Tokenizer, register_tokenizer

MAX_BITS = 16


def gaussian_edges(levels: int, value_range: float) -> torch.Tensor:
    """Bin edges [levels + 1] (float64): quantiles i / levels of N(0, 1) truncated to [-r, r].

    The lower half is computed directly and mirrored, so the edges are exactly symmetric and the upper
    tail does not lose precision to 1 - p cancellation.
    """
    r = torch.tensor(float(value_range), dtype=torch.float64)
    lo = torch.special.ndtr(-r)  # Phi(-r)
    mass = 1 - 2 * lo  # Phi(r) - Phi(-r)
    i = torch.arange(levels // 2 + 1, dtype=torch.float64)  # (L/2 + 1,)
    lower = torch.special.ndtri(lo + i / levels * mass)  # (L/2 + 1,), edges -r .. 0
    lower[0], lower[-1] = -r, 0.0  # exact end points (levels is even)
    return torch.cat([lower, -lower[:-1].flip(0)])  # (L + 1,)


def gaussian_centroids(edges: torch.Tensor) -> torch.Tensor:
    """Reconstruction values [L] (float64): the mean of N(0, 1) restricted to each bin of `edges`.

    Closed form (phi(a) - phi(b)) / (Phi(b) - Phi(a)) on the lower half, mirrored to the upper half.
    """
    half = (len(edges) - 1) // 2
    a, b = edges[:half], edges[1 : half + 1]  # lower bins, (L/2,) each
    pdf = lambda t: torch.exp(-0.5 * t**2) / math.sqrt(2 * math.pi)
    lower = (pdf(a) - pdf(b)) / (torch.special.ndtr(b) - torch.special.ndtr(a))  # (L/2,)
    return torch.cat([lower, -lower.flip(0)])  # (L,)


@register_tokenizer
class PostQuantTokenizer(Tokenizer):
    """A continuous tokenizer with post-training Gaussian-quantile quantisation per channel.

    Images [B, C_img, H, W] <-> ids [B, h, w, C] (long, in [0, 2 ** bits)), C = the inner latent_dim.

    Args:
        inner: the trained continuous tokenizer (kind "continuous", normalised latents [B, h, w, C]), or
            its config {"name": ..., **constructor kwargs} as stored by `save_pretrained`; it is frozen
            (eval mode, no gradients) and its own statistics (latent scale/shift) are kept as they are.
        bits: bits per channel; L = 2 ** bits levels (TokenBridge uses 6, i.e. 64 levels).
        value_range: r, the bins cover [-r, r] of the normalised latents (e.g. 3.0 standard deviations).
        out_of_range_fraction: share of latent values with |z| > r on the data, set by `fit_statistics`.
    """

    name = "tokenbridge"
    kind = "discrete"

    def __init__(
        self,
        inner: Tokenizer | dict[str, Any],
        bits: int = 6,
        value_range: float = 3.0,
        out_of_range_fraction: float | None = None,
    ):
        super().__init__()
        if not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
            raise ConfigError(f"bits={bits!r} must be an integer in [1, {MAX_BITS}], e.g. bits=6 (64 levels)")
        if not (isinstance(value_range, int | float) and math.isfinite(value_range) and value_range > 0):
            raise ConfigError(f"value_range={value_range!r} must be a positive number, e.g. value_range=3.0")
        self.inner = _build_inner(inner)
        self.bits, self.value_range = bits, float(value_range)
        self.out_of_range_fraction = out_of_range_fraction
        self.in_channels, self.downsample = self.inner.in_channels, self.inner.downsample
        self.channels = int(self.inner.latent_dim)
        self.vocab_size = 2**bits
        self.token_shape = (self.channels,)
        edges = gaussian_edges(self.vocab_size, self.value_range)
        # derived from (bits, value_range): not saved, so the weights file holds only the inner tokenizer
        self.register_buffer("edges", edges, persistent=False)  # (L + 1,) float64
        self.register_buffer("values", gaussian_centroids(edges), persistent=False)  # (L,) float64

    @property
    def config(self) -> dict[str, Any]:
        """Constructor kwargs, read live so statistics fitted later are saved too."""
        return {
            "inner": {"name": self.inner.name, **self.inner.config},
            "bits": self.bits,
            "value_range": self.value_range,
            "out_of_range_fraction": self.out_of_range_fraction,
        }

    def grid(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        return self.inner.grid(input_shape)

    def quantize(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [..., C] -> ids [..., C] (long): the bin holding each value, end bins beyond +-r."""
        z = latents.detach().to(torch.float64).contiguous()  # fp64: compare against exact edges
        return torch.bucketize(z, self.edges[1:-1].double(), right=True)  # edges[i] <= z < edges[i + 1] -> i

    def dequantize(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids [..., C] -> latents [..., C] (float32): each bin's reconstruction value."""
        return self.values.float()[ids]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images [B, C_img, H, W] in [-1, 1] -> ids [B, h, w, C] (long)."""
        return self.quantize(self.inner.encode(x))

    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids [B, h, w, C] -> images [B, C_img, H, W] through the inner decoder."""
        self._check_ids(ids)
        return self.inner.decode(self.dequantize(ids))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(recon [B, C_img, H, W], ids [B, h, w, C], zero aux loss): post-training, nothing to learn."""
        ids = self.encode(x)
        return self.decode(ids), ids, x.new_zeros(())

    @torch.no_grad()
    def measure(self, batches: Iterable[torch.Tensor]) -> dict[str, float | int]:
        """Share of latent values outside [-r, r] over image batches [B, C_img, H, W] (counted exactly)."""
        outside = total = 0
        for x in batches:
            z = self.inner.encode(x)  # (B, h, w, C)
            outside += int((z.abs() > self.value_range).sum())
            total += z.numel()
        if total == 0:
            raise ConfigError("no data to measure the out-of-range fraction on; pass non-empty batches")
        return {"out_of_range_fraction": outside / total, "num_values": total}

    def fit_statistics(self, batches: Iterable[torch.Tensor]) -> None:
        """Measure and store `out_of_range_fraction` (the inner tokenizer's own statistics stay fixed)."""
        self.out_of_range_fraction = self.measure(batches)["out_of_range_fraction"]

    def _check_ids(self, ids: torch.Tensor) -> None:
        """ConfigError unless ids are integers [..., C] with values in [0, L)."""
        if ids.is_floating_point() or ids.is_complex() or ids.ndim < 2 or ids.shape[-1] != self.channels:
            raise ConfigError(
                f"decode expects integer ids [B, h, w, {self.channels}] (one per latent channel), got "
                f"{tuple(ids.shape)} {ids.dtype}; check the generator's head channels"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ConfigError(
                f"ids must lie in [0, {self.vocab_size}) (bits={self.bits}), got values in "
                f"[{int(ids.min())}, {int(ids.max())}]; check that the generator's vocab_size matches"
            )


def _build_inner(inner: Tokenizer | dict[str, Any]) -> Tokenizer:
    """The wrapped continuous tokenizer, from an instance or a {"name": ..., **kwargs} config."""
    if isinstance(inner, dict):
        kwargs = dict(inner)
        name = kwargs.pop("name", None)
        if name not in TOKENIZERS:
            raise ConfigError(
                f"unknown inner tokenizer name {name!r} in inner; known: {sorted(TOKENIZERS)} "
                "(import the module that registers it)"
            )
        inner = TOKENIZERS[name](**kwargs)
    if not isinstance(inner, Tokenizer) or inner.kind != "continuous" or not inner.latent_dim:
        kind = getattr(inner, "kind", type(inner).__name__)
        raise ConfigError(
            f"inner must be a continuous tokenizer with a latent_dim (got {kind}); wrap a trained "
            "continuous tokenizer such as kl_vae, e.g. PostQuantTokenizer(load_tokenizer(path))"
        )
    return inner.eval().requires_grad_(False)
