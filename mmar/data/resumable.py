"""A training DataLoader whose order and augmentations are a pure function of (seed, epoch, batch), so a
run resumed mid-epoch sees exactly the batches the uninterrupted run would have seen.

- `ResumableSampler` shuffles with its own seeded generator per epoch (never the global RNG) and shards
  across ranks like `DistributedSampler` (it is one, so Lightning leaves it in place under DDP); it can
  start an epoch at a given batch.
- `ResumableLoader` reseeds the global RNGs before fetching each batch (and restores them after), so
  random augmentations in `Dataset.__getitem__` neither depend on nor disturb the model's RNG stream.
  This is exact with `num_workers=0`; worker processes draw their own seeds, so with workers the order
  stays exact but the augmentations of a resumed epoch differ.

The DataModule records where training stands (`batches_done` of Lightning's progress, not how far the
loader has prefetched) in its checkpoint state and hands it back through `resume_at`.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

_SEED_MIX = 1_000_003  # a prime: distinct (seed, epoch, batch, rank) give distinct batch seeds


class ResumableSampler(DistributedSampler):
    """Seeded per-epoch shuffle of this rank's share of `dataset`, optionally starting mid-epoch."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
    ):
        distributed = dist.is_available() and dist.is_initialized()
        num_replicas = num_replicas or (dist.get_world_size() if distributed else 1)
        rank = rank if rank is not None else (dist.get_rank() if distributed else 0)
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.batch_size = batch_size
        self.start_batch = 0  # batches of `self.epoch` already trained on; applies to the next pass only
        self._epoch_offset = 0  # data epoch minus Lightning's epoch number
        self._resumed_epoch: int | None = None  # set until Lightning's numbering is aligned to it
        self._lightning_epoch: int | None = None
        self._in_resumed_pass = False

    def resume_at(self, epoch: int, start_batch: int) -> None:
        """The next pass yields epoch `epoch` from batch `start_batch` on."""
        self.epoch, self.start_batch, self._resumed_epoch = epoch, start_batch, epoch
        self._lightning_epoch, self._in_resumed_pass = None, False

    def set_epoch(self, epoch: int) -> None:
        # After a checkpoint written at the end of an epoch, Lightning counts one epoch ahead of the data
        # (and may set it twice before the pass), so its numbers are aligned to the resumed epoch: by the
        # last one set before the resumed pass starts, or else the first one set during it.
        if self._resumed_epoch is not None:
            if self._in_resumed_pass:
                self._epoch_offset, self._resumed_epoch = self._resumed_epoch - epoch, None
            else:
                self._lightning_epoch = epoch
            return
        epoch += self._epoch_offset
        if epoch != self.epoch:
            self.start_batch = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        if self._resumed_epoch is not None and self._lightning_epoch is not None:
            self._epoch_offset, self._resumed_epoch = self._resumed_epoch - self._lightning_epoch, None
        elif self._resumed_epoch is not None:
            self._in_resumed_pass = True
        indices = list(super().__iter__())[self.start_batch * self.batch_size :]
        self.start_batch = 0
        return iter(indices)


class ResumableLoader(DataLoader):
    """A DataLoader over a `ResumableSampler` that fetches each batch under its own seeded RNGs."""

    def __init__(self, dataset: Dataset, sampler: ResumableSampler, **kwargs):
        super().__init__(dataset, sampler=sampler, **kwargs)

    def state_dict(self) -> dict:
        """Nothing: the position lives in the DataModule, which knows what was trained on rather than
        prefetched. Being stateful tells Lightning that a mid-epoch resume is supported."""
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        pass

    def __iter__(self) -> Iterator:
        sampler = self.sampler
        epoch, batch = sampler.epoch, sampler.start_batch

        def seed() -> int:
            return (
                ((sampler.seed * _SEED_MIX + epoch) * _SEED_MIX + batch) * _SEED_MIX + sampler.rank
            ) % 2**63

        with seeded_rngs(seed()):  # creating the iterator draws the workers' base seed
            batches = super().__iter__()
        while True:
            with seeded_rngs(seed()):
                try:
                    item = next(batches)
                except StopIteration:
                    return
            yield item
            batch += 1


@contextmanager
def seeded_rngs(seed: int):
    """Run the block with torch (CPU), numpy and Python RNGs seeded by `seed`; restore them after."""
    states = torch.get_rng_state(), np.random.get_state(), random.getstate()
    torch.default_generator.manual_seed(seed), np.random.seed(seed % 2**32), random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(states[0]), np.random.set_state(states[1]), random.setstate(states[2])
