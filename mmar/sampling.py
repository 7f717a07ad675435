"""Sampler settings and classifier-free guidance schedules shared by every prediction unit.

A unit's generation loop calls `sampler.pick(logits, progress, generator)` once per step, where
`progress` in [0, 1) is the fraction of the output already generated before the step. The guidance
scale at that point follows one of these schedules (s = `cfg_scale`, p = progress):

- "constant": s
- "linear":   1 + (s - 1) p                             (linear ramp, as in MUSE/MAR)
- "cosine":   1 + (s - 1) (1 - cos(pi p^power)) / 2     (cosine-power ramp)
- "interval": s for lo <= p <= hi, else 1               (guidance in a limited interval)

The CFG batch is `cat([cond, null])` (LlamaGen): the first half of the logits is conditional.

`speculative` switches the next-token units to speculative Jacobi decoding (`mmar.units.speculative`):
"sjd" keeps the model's distribution exactly, "lantern" relaxes the acceptance for more tokens per pass.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from tqdm import tqdm

from mmar.errors import ConfigError
from mmar.kernels import cfg_mix, filter_logits, sample
from mmar.trunk import PassCounter

CFG_SCHEDULES = ("constant", "linear", "cosine", "interval")
FLOW_SOLVERS = ("euler", "euler_maruyama")
SPECULATIVE_MODES = ("sjd", "lantern")


@dataclass
class Sampler:
    temperature: float = 1.0
    """Softmax temperature; 0 is greedy."""
    top_k: int = 0
    """Keep the k most likely tokens (0 = off)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    min_p: float = 0.0
    """Keep tokens with probability >= min_p * the top probability (0 = off)."""
    cfg_scale: float = 1.0
    """Classifier-free guidance scale s in u + s (c - u); 1.0 disables guidance."""
    cfg_schedule: str = "constant"
    """How the scale evolves over generation: constant | linear | cosine | interval."""
    cfg_power: float = 1.0
    """Exponent of the cosine-power schedule."""
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    """Progress interval [lo, hi] in which the interval schedule guides."""
    seed: int | None = None
    """Seed of the per-call random generator (None = nondeterministic)."""
    flow_solver: str = "euler"
    """Continuous heads: ODE (euler) or SDE (euler_maruyama) integration of the flow from noise to data."""
    flow_noise: float = 1.0
    """Continuous heads: the Euler-Maruyama noise level gamma (diffusion g(t)^2 = 2 gamma t)."""
    speculative: str | None = None
    """Next-token units: None (one token per trunk pass), "sjd" (speculative Jacobi decoding, exact) or
    "lantern" (SJD with LANTERN's relaxed acceptance)."""
    window: int = 16
    """Speculative decoding: draft tokens verified per trunk pass."""
    lantern_k: int = 1000
    """LANTERN: a draft's nearest codes (by latent distance) that may lend it their probability."""
    lantern_delta: float = 0.1
    """LANTERN: the total-variation budget, the most probability a draft may borrow from its neighbours."""

    def __post_init__(self):
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise ConfigError(f"unknown cfg_schedule '{self.cfg_schedule}'; choose one of {CFG_SCHEDULES}")
        if self.flow_solver not in FLOW_SOLVERS or self.flow_noise < 0:
            raise ConfigError(
                f"flow_solver='{self.flow_solver}' must be one of {FLOW_SOLVERS} and flow_noise="
                f"{self.flow_noise} must be >= 0"
            )
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1 or not 0 <= self.min_p <= 1:
            raise ConfigError(
                f"invalid sampler settings (temperature={self.temperature}, top_k={self.top_k}, "
                f"top_p={self.top_p}, min_p={self.min_p}): need temperature >= 0, top_k >= 0, "
                "0 < top_p <= 1, 0 <= min_p <= 1"
            )
        if self.speculative is not None and self.speculative not in SPECULATIVE_MODES:
            raise ConfigError(
                f"unknown speculative decoding '{self.speculative}'; choose one of {SPECULATIVE_MODES} "
                "or None"
            )
        if self.window < 1 or self.lantern_k < 1 or not 0 <= self.lantern_delta <= 1:
            raise ConfigError(
                f"invalid speculative settings (window={self.window}, lantern_k={self.lantern_k}, "
                f"lantern_delta={self.lantern_delta}): need window >= 1, lantern_k >= 1, "
                "0 <= lantern_delta <= 1"
            )

    @property
    def guided(self) -> bool:
        """Whether generation runs the doubled CFG batch."""
        return self.cfg_scale != 1.0

    def cfg_batch(self, x: torch.Tensor) -> torch.Tensor:
        """What both halves of the CFG batch read: x [B, ...] -> cat([x, x]) [2B, ...] when guided, else x
        (a generated token is fed to the conditional and the null row alike)."""
        return torch.cat([x, x]) if self.guided else x

    def scale_at(self, progress: float) -> float:
        """Guidance scale after a fraction `progress` of the output has been generated."""
        s, p = self.cfg_scale, progress
        if self.cfg_schedule == "linear":
            return 1 + (s - 1) * p
        if self.cfg_schedule == "cosine":
            return 1 + (s - 1) * (1 - math.cos(math.pi * p**self.cfg_power)) / 2
        if self.cfg_schedule == "interval":
            lo, hi = self.cfg_interval
            return s if lo <= p <= hi else 1.0
        return s

    def scales(self, progress: float | torch.Tensor) -> float | torch.Tensor:
        """`scale_at` for one progress, or per row for a tensor of them [B] -> [B]."""
        if not isinstance(progress, torch.Tensor):
            return self.scale_at(progress)
        return torch.tensor([self.scale_at(p) for p in progress.tolist()], device=progress.device)

    def generator(self, device: torch.device | str, stream: int = 0) -> torch.Generator | None:
        """A fresh generator seeded with `seed` for one generate call (None when unseeded); `stream` > 0
        gives independent streams for other draws of the same call (e.g. teacher forcing)."""
        if self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed + 1_000_003 * stream)

    def pick(
        self,
        logits: torch.Tensor,
        progress: float | torch.Tensor = 0.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Tokens from logits [B, V] (or the CFG batch [2B, V], cond first) -> ids [B]; `progress` is one
        for all rows or one per row [B]."""
        uncond = None
        if self.guided:
            logits, uncond = logits.chunk(2)
        return sample(
            logits,
            uncond,
            cfg_scale=self.scales(progress),
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            min_p=self.min_p,
            generator=generator,
        )

    def probs(self, logits: torch.Tensor, progress: float | torch.Tensor = 0.0) -> torch.Tensor:
        """The distribution `pick` draws from, after guidance, temperature and the filters (one-hot on the
        argmax at temperature 0): logits [B, ..., V] (or the CFG batch [2B, ..., V], cond first) ->
        probabilities [B, ..., V] (fp32). `progress` is one float, one per row [B] for logits [B, V], or
        one per position [T] for logits [B, T, V]."""
        logits = logits.float()
        if self.guided:
            cond, uncond = logits.chunk(2)
            logits = cfg_mix(cond, uncond, self.scales(progress))
        if self.temperature == 0:
            return F.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        return filter_logits(logits / self.temperature, self.top_k, self.top_p, self.min_p).softmax(-1)


def add_sampler_arguments(parser: argparse.ArgumentParser) -> None:
    """The sampler's command-line options, shared by the sampling scripts (see `sampler_from_arguments`)."""
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--min-p", type=float, default=0.0)
    parser.add_argument("--cfg-scale", type=float, default=1.0)
    parser.add_argument("--cfg-schedule", default="constant", choices=CFG_SCHEDULES)
    parser.add_argument("--cfg-power", type=float, default=1.0)
    parser.add_argument("--cfg-interval", type=float, nargs=2, default=(0.0, 1.0))
    parser.add_argument("--flow-solver", default="euler", choices=FLOW_SOLVERS, help="continuous heads")
    parser.add_argument("--flow-noise", type=float, default=1.0, help="Euler-Maruyama noise level")
    parser.add_argument(
        "--speculative", choices=SPECULATIVE_MODES, help="next-token units: speculative Jacobi decoding"
    )
    parser.add_argument("--window", type=int, default=16, help="speculative draft tokens per trunk pass")
    parser.add_argument("--lantern-k", type=int, default=1000, help="LANTERN: neighbours per code")
    parser.add_argument("--lantern-delta", type=float, default=0.1, help="LANTERN: total-variation budget")


def sampler_from_arguments(args: argparse.Namespace) -> Sampler:
    """A Sampler from the options of `add_sampler_arguments` (unseeded: callers seed each batch)."""
    return Sampler(
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        min_p=args.min_p,
        cfg_scale=args.cfg_scale,
        cfg_schedule=args.cfg_schedule,
        cfg_power=args.cfg_power,
        cfg_interval=tuple(args.cfg_interval),
        flow_solver=args.flow_solver,
        flow_noise=args.flow_noise,
        speculative=args.speculative,
        window=args.window,
        lantern_k=args.lantern_k,
        lantern_delta=args.lantern_delta,
    )


def check_classes(classes: list[int], num_classes: int) -> None:
    """A one-line error unless every class id of `--classes` lies in [0, num_classes)."""
    if any(not 0 <= c < num_classes for c in classes):
        raise ConfigError(f"--classes must lie in [0, {num_classes}), got {classes}")


def class_labels(classes: list[int] | None, num_classes: int, per_class: int) -> torch.Tensor:
    """[N] labels of class-conditional samples, grouped by class: `per_class` of each of `classes` (every
    class when None or empty), the sampling scripts' `--classes` and `--per-class`."""
    classes = list(classes) if classes else list(range(num_classes))
    check_classes(classes, num_classes)
    if per_class < 1:
        raise ConfigError(f"--per-class must be >= 1, got {per_class}")
    return torch.tensor(classes).repeat_interleave(per_class)


def given_labels(labels: torch.Tensor, classes: list[int] | None, num_classes: int) -> torch.Tensor:
    """The condition of continued clips: `classes` (one per clip, or one for all) or, when None or empty,
    the clips' own `labels` [N]."""
    if not classes:
        return labels
    if len(classes) not in (1, len(labels)):
        raise ConfigError(f"--classes takes one class or one per clip ({len(labels)}), got {len(classes)}")
    check_classes(list(classes), num_classes)
    return torch.tensor(classes).expand(len(labels)).clone()


def sample_in_batches(
    model,
    labels: torch.Tensor,
    sampler: Sampler,
    batch_size: int,
    given: torch.Tensor | None = None,
    given_frames: int = 0,
    conditions: Callable = lambda labels: labels,
    progress: bool = False,
) -> tuple[torch.Tensor, float, float]:
    """(samples [N, ...] on the CPU, seconds, trunk passes per batch) of a generator over `labels` [N].

    Batch i of `batch_size` is sampled with `sampler` seeded `sampler.seed + i` (0 + i when unseeded), so a
    sample does not depend on the batches before it. `model.generate` gives the samples, clamped to
    [-1, 1]; with `given` clips [N, ...], `model.continue_clips` continues their first `given_frames`
    frames instead. `conditions` maps a batch of labels to the model's conditions (e.g. captions);
    `progress` shows a progress bar.
    """
    samples, start, base = [], time.perf_counter(), sampler.seed or 0
    batches = labels.split(batch_size)
    with PassCounter(model.trunk) as counter:
        for i, batch in enumerate(tqdm(batches, desc="sampling", unit="batch", disable=not progress)):
            seeded = replace(sampler, seed=base + i)
            if given is None:
                samples.append(model.generate(conditions(batch), seeded).float().clamp(-1, 1).cpu())
            else:
                clips = given[i * batch_size : i * batch_size + len(batch)]
                samples.append(model.continue_clips(clips, conditions(batch), given_frames, seeded).cpu())
    return torch.cat(samples), time.perf_counter() - start, counter.count / max(len(batches), 1)
