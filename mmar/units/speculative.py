"""Speculative Jacobi decoding for the raster next-token units (SJD: Teng et al., 2024, "Accelerating
Auto-regressive Text-to-Image Generation with Training-free Speculative Jacobi Decoding"), with LANTERN's
relaxed acceptance (Jang et al., 2024, "LANTERN: Accelerating Visual Autoregressive Models with Relaxed
Speculative Decoding").

Training-free: the model drafts for itself. A window of W draft tokens follows the decoded ones, and one
causal, KV-cached trunk pass over [the last decoded token, the W drafts] gives at every draft position i
the target distribution p_i given the drafts before it: exactly what plain decoding samples from
(`Sampler.probs`: guidance, temperature, filters). Draft i was drawn from a known q_i; the drafts are
accepted in order with probability min(1, p_i(x_i) / q_i(x_i)) (speculative sampling). At the first
rejection that position is drawn from the residual norm(max(0, p_i - q_i)) and the later drafts are
dropped; when every draft is accepted the position after them is drawn from its p. Every pass thus
decodes at least one token (passes <= N), and the tokens follow the model's distribution exactly. The
positions the pass predicted beyond the decoded ones get new drafts drawn from their p (the Jacobi
iteration: these p become the next pass's q), and the window is refilled with uniform drafts (q = 1/V).
The rejected drafts' keys and values leave the cache (`KVCache.truncate`).

Rows accept different numbers of drafts (ragged acceptance) while the KV cache stays aligned: the cache
keeps the tokens every row has decided (the fewest accepted drafts of any row, plus each row's next
token), and a row that decided more carries its extra tokens at the head of its next window as "sure"
drafts, fed again and accepted without a test. No row loses what it decided and each row's tokens remain
its own speculative-sampling chain, so the output stays exact. The CFG batch feeds the same drafts to
both halves and accepts on the guided p.

LANTERN ("lantern") accepts draft x with probability min(1, p~(x) / q(x)), where p~(x) adds to p(x) the
probability of x's nearest codes in latent space (its `lantern_k` neighbours, nearest first) for as long
as the borrowed mass stays within the total-variation budget `lantern_delta`; a rejection still draws
from norm(max(0, p - q)). It trades exactness for tokens per pass; delta = 0 is exact SJD.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from mmar.errors import ConfigError
from mmar.kernels import Causal
from mmar.sampling import Sampler
from mmar.trunk import Trunk

if TYPE_CHECKING:
    from mmar.units.next_token import NextToken


def nearest_neighbours(codes: torch.Tensor, k: int, chunk: int = 1024) -> torch.Tensor:
    """Code vectors [V, Z] -> ids [V, min(k, V - 1)] of each code's nearest other codes (Euclidean),
    nearest first; the [V, V] distances are formed `chunk` rows at a time."""
    codes = codes.detach().float()
    k = min(k, len(codes) - 1)
    tables = []
    for first in range(0, len(codes), chunk):
        dist = torch.cdist(codes[first : first + chunk], codes)  # (chunk, V)
        own = torch.arange(first, first + len(dist), device=codes.device)
        dist[torch.arange(len(dist), device=codes.device), own] = float("inf")  # a code is not its neighbour
        tables.append(dist.topk(k, dim=-1, largest=False).indices)  # (chunk, k)
    return torch.cat(tables)


def relaxed_probability(
    probs: torch.Tensor, drafts: torch.Tensor, neighbours: torch.Tensor, delta: float
) -> torch.Tensor:
    """LANTERN's p~(x): probs [..., V], drafts [...], neighbours [V, k] -> [...]: p(x) plus the mass of the
    longest run of x's nearest neighbours (nearest first) whose total stays within `delta`."""
    own = probs.gather(-1, drafts[..., None])[..., 0]  # (...)
    if neighbours.shape[1] == 0:
        return own
    lent = probs.gather(-1, neighbours[drafts]).cumsum(-1)  # (..., k) nondecreasing
    return own + torch.where(lent <= delta, lent, 0.0).amax(-1)


def accept_drafts(target: torch.Tensor, proposal: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Speculative sampling's test: accept a draft with probability min(1, target / proposal), its p(x)
    (or LANTERN's p~(x)) over its q(x); all [...] -> bool [...]; `uniform` holds U[0, 1) draws."""
    return uniform * proposal < target


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The distribution a rejected position is drawn from: norm(max(0, p - q)) over [..., V] (p itself
    where rounding leaves nothing)."""
    left = (p - q).clamp_min(0)  # (..., V)
    total = left.sum(-1, keepdim=True)
    return torch.where(total > 0, left / total.clamp_min(torch.finfo(left.dtype).tiny), p)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One id per distribution: probs [..., V] -> ids [...]."""
    if probs[..., 0].numel() == 0:
        return torch.zeros(probs.shape[:-1], dtype=torch.long, device=probs.device)
    return torch.multinomial(probs.flatten(0, -2), 1, generator=generator).view(probs.shape[:-1])


def _pin(
    probs: torch.Tensor, pins: tuple[torch.Tensor, torch.Tensor] | None, at: torch.Tensor
) -> torch.Tensor:
    """probs [B, T, V] of positions `at` [T], with the pinned positions' rows one-hot on their values."""
    if pins is None:
        return probs
    values, mask = pins[0][:, at], pins[1][:, at]  # (B, T)
    onehot = F.one_hot(values.clamp_min(0), probs.shape[-1]).to(probs.dtype)
    return torch.where(mask[..., None], onehot, probs)


def _uniform_drafts(
    rows: int, at: torch.Tensor, vocab: int, pins, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fresh drafts of positions `at` [T]: (ids [B, T], their q [B, T, V]), uniform unless pinned."""
    q = _pin(torch.full((rows, len(at), vocab), 1.0 / vocab, device=at.device), pins, at)
    return draw(q, generator), q


def _verify(
    p: torch.Tensor,
    q: torch.Tensor,
    drafts: torch.Tensor,
    target: torch.Tensor,
    sure: torch.Tensor,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass's speculative sampling, row by row.

    Args:
        p: targets [B, F + 1, V] of the window's positions (F + 1 >= W: one more when it fits in N).
        q: the drafts' proposals [B, W, V].
        drafts: ids [B, W].
        target: p(x) of each draft (or LANTERN's p~(x)) [B, W].
        sure: [B, W] drafts decided in an earlier pass, accepted without a test.
        generator: the call's random stream.

    Returns:
        first [B]: each row's drafts accepted before its first rejection, and decided ids [B, W + 1]: a
        row's first first + 1 are its decided tokens, the accepted drafts and then its next token (drawn
        from the residual where the row rejected, from the target after a fully accepted window).
    """
    rows, width = drafts.shape
    proposal = q.gather(-1, drafts[..., None])[..., 0]  # (B, W): q(x)
    uniform = torch.rand(rows, width, generator=generator, device=drafts.device)  # (B, W)
    accepted = accept_drafts(target, proposal, uniform) | sure  # (B, W)
    first = accepted.long().cumprod(1).sum(1)  # (B,)
    index = torch.arange(rows, device=drafts.device)
    p_next = p[index, first.clamp(max=p.shape[1] - 1)]  # (B, V)
    q_next = q[index, first.clamp(max=width - 1)]  # (B, V)
    rejected = (first < width)[:, None]  # (B, 1)
    own = draw(torch.where(rejected, residual(p_next, q_next), p_next), generator)  # (B,)
    decided = torch.cat([drafts, own[:, None]], dim=1).scatter(1, first[:, None], own[:, None])
    return first, decided  # (B,), (B, W + 1)


def speculative_generate(
    unit: NextToken,
    trunk: Trunk,
    cond: torch.Tensor,
    sampler: Sampler,
    use_cache: bool = True,
    prefix: torch.Tensor | None = None,
    fixed: tuple[torch.Tensor, torch.Tensor] | None = None,
    neighbours: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode a next-token unit's N tokens by speculative Jacobi decoding (see the module docstring).

    Args:
        unit: a `NextToken` unit (or subclass) with a categorical head (one id per position).
        trunk: the trunk (possibly `PrefixPadded`).
        cond: condition tokens [B or 2B (CFG), n_cond, D].
        sampler: the settings; `sampler.speculative` picks "sjd" or "lantern", `sampler.window` W.
        use_cache: KV-cached passes (True) or full forwards over the whole sequence.
        prefix: given first slices [B, k, *grid[1:]], kept as the output's first tokens.
        fixed: (values, mask), both [B or 1, N]: entries set instead of sampled.
        neighbours: LANTERN's table [V, >= lantern_k] of each code's nearest codes, nearest first
            (`nearest_neighbours` of the tokenizer's code vectors); default: from the head's input embeddings.

    Returns:
        ids [B, N] in raster order.
    """
    head, n, n_cond, vocab = unit.head, unit.seq_len, cond.shape[1], unit.vocab_size
    if tuple(getattr(head, "token_shape", ())) != ():
        raise ConfigError(
            f"speculative decoding needs one id per position (the categorical head), not the "
            f"{type(head).__name__}'s {head.token_shape}; drop sampler.speculative"
        )
    device, window = cond.device, sampler.window
    rows = cond.shape[0] // (2 if sampler.guided else 1)
    lantern, delta = sampler.speculative == "lantern", sampler.lantern_delta
    if lantern:
        if neighbours is None:
            neighbours = nearest_neighbours(head.embedding.weight, sampler.lantern_k)
        neighbours = neighbours[:, : sampler.lantern_k].to(device)  # (V, k)
    pins = None
    if fixed is not None:
        pins = tuple(t.expand(rows, n).to(device) for t in fixed)  # (B, N) values and mask
    positions = unit.positions(n_cond, device)  # (n_cond + N, A)
    cache = trunk.make_cache(cond.shape[0], n_cond + n - 1, device, cond.dtype) if use_cache else None
    generator = sampler.generator(device)

    tokens = torch.zeros(rows, n, dtype=torch.long, device=device)  # (B, N) decoded ids
    given, pending = unit.start_inputs(cond, sampler, prefix)  # inputs not in the cache yet
    done = 0  # the last pending input predicts token `done`
    if given is not None:
        done = given.shape[1]
        tokens[:, :done] = given
    drafts, q = _uniform_drafts(
        rows, torch.arange(done, min(done + window, n), device=device), vocab, pins, generator
    )
    sure = torch.zeros_like(drafts, dtype=torch.bool)  # (B, width): tokens a row decided in an earlier pass
    while done < n:
        width = drafts.shape[1]  # drafts of positions done .. done + width - 1
        fed = width if done + width < n else width - 1  # the last position's input would predict past N
        x = torch.cat([pending, head.embed(sampler.cfg_batch(drafts[:, :fed]))], dim=1)  # (B', T, D)
        start = cache.length if use_cache else 0
        hidden = trunk(
            unit.add_target_embedding(x, start, n_cond),
            positions[start : start + x.shape[1]],
            Causal(),
            cache=cache,
        )
        at = torch.arange(done, done + fed + 1, device=device)  # the positions this pass predicts
        p = _pin(sampler.probs(head(hidden[:, -(fed + 1) :]), at / n), pins, at)  # (B, fed + 1, V)

        if lantern:
            target = relaxed_probability(p[:, :width], drafts, neighbours, delta)  # (B, width): p~(x)
        else:
            target = p[:, :width].gather(-1, drafts[..., None])[..., 0]  # (B, width): p(x)
        first, decided = _verify(p, q, drafts, target, sure, generator)  # (B,), (B, width + 1)
        a = int(first.min())
        step = min(a + 1, n - done)  # tokens every row has decided
        tokens[:, done : done + step] = decided[:, :step]
        if done + step == n:
            break
        token = decided[:, a]  # (B,)
        kept = pending.shape[1] + a  # inputs whose keys and values stay: the pending ones, accepted drafts
        embedded = head.embed(sampler.cfg_batch(token))[:, None]  # (B', 1, D)
        if use_cache:
            cache.truncate(start + kept)
            pending = embedded
        else:
            pending = torch.cat([x[:, :kept], embedded], dim=1)
        done += a + 1

        carried = p[:, a + 1 :]  # (B, fed - a, V): targets of the next positions given the old drafts
        ahead = (first - a).clamp(max=n - done)[:, None]  # (B, 1) tokens a row decided past the step
        kept_ahead = torch.arange(carried.shape[1], device=device) < ahead  # (B, fed - a)
        carried_drafts = torch.where(kept_ahead, decided[:, a + 1 : fed + 1], draw(carried, generator))
        fresh = torch.arange(done + carried.shape[1], min(done + window, n), device=device)
        fresh_drafts, fresh_q = _uniform_drafts(rows, fresh, vocab, pins, generator)
        drafts = torch.cat([carried_drafts, fresh_drafts], dim=1)  # (B, width')
        q = torch.cat([carried, fresh_q], dim=1)  # (B, width', V)
        sure = torch.cat([kept_ahead, torch.zeros_like(fresh_drafts, dtype=torch.bool)], dim=1)
    return tokens
