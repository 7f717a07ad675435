"""Shared DataModule plumbing: a train split, optional val and test splits, and one way to batch them."""

from __future__ import annotations

import os
from collections.abc import Callable

from lightning.pytorch import LightningDataModule
from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import DataLoader, Dataset

from mmar.data.resumable import ResumableLoader, ResumableSampler
from mmar.errors import ConfigError


class SplitDataModule(LightningDataModule):
    """Subclasses fill `train_dataset` (and `val_dataset`, may stay None or empty) in `setup`, and
    `test_dataset` where the data has a held-out split of its own (else the test split is the val split).

    `predict` reads the test split in order (its conditions for generators, its inputs for tokenizers);
    `trainer.limit_predict_batches` sets how many batches. Training batches are shuffled and drop the
    last incomplete batch when the dataset holds more than one batch. The shuffle is seeded by the run's
    `seed_everything` and the position in the epoch is saved in checkpoints, so a resumed run continues
    the data order exactly (see `mmar.data.resumable`).
    """

    collate_fn: Callable | None = None

    def __init__(self, batch_size: int, num_workers: int = 0):
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1")
        if num_workers < 0:
            raise ConfigError(f"num_workers={num_workers} must be >= 0 (0 reads in the main process)")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self._train_sampler: ResumableSampler | None = None
        self._resume_at: tuple[int, int] | None = None  # (epoch, batches done) from a checkpoint

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_dataset, train=True)

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        if self.val_dataset is None or len(self.val_dataset) == 0:
            return []
        return self._loader(self.val_dataset, train=False)

    def test_dataloader(self) -> DataLoader | list:
        self.setup()
        dataset = self.val_dataset if self.test_dataset is None else self.test_dataset
        if dataset is None or len(dataset) == 0:
            return []
        return self._loader(dataset, train=False)

    def predict_dataloader(self) -> DataLoader | list:
        return self.test_dataloader()

    def embedded_metrics(self, condition: str):
        """The embedded metric of generated samples that fits this data (`mmar.eval.sample_metrics`) for a
        generator whose condition reads batch[condition] ("label", "caption"), or None: then `mmar test`
        reports the generator's losses only (real data: FID through scripts/eval_fid.py)."""
        return None

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        kwargs = dict(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn,
        )
        if not train:
            return DataLoader(dataset, shuffle=False, **kwargs)
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))  # set by seed_everything, on every rank
        self._train_sampler = ResumableSampler(dataset, self.batch_size, seed=seed)
        if self._resume_at is not None:
            self._train_sampler.resume_at(*self._resume_at)
            self._resume_at = None
        drop_last = len(dataset) > self.batch_size
        return ResumableLoader(dataset, self._train_sampler, drop_last=drop_last, **kwargs)

    def state_dict(self) -> dict:
        """Where training stands in the data: the epoch and the batches of it trained on (Lightning's
        count, not the loader's, which has prefetched ahead); empty outside of fitting."""
        trainer, sampler = self.trainer, self._train_sampler
        if trainer is None or sampler is None or trainer.state.fn != TrainerFn.FITTING:
            return {}
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:  # saved at the end of an epoch: the next one starts
            return {"epoch": sampler.epoch + 1, "batches_done": 0}
        return {"epoch": sampler.epoch, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self._resume_at = (state["epoch"], state["batches_done"])


class FolderDataModule(SplitDataModule):
    """A SplitDataModule over a folder of files whose datasets know their `classes` and count the files
    they skipped (`num_skipped`): what image, video and audio folders share."""

    @property
    def num_classes(self) -> int:
        """Number of classes of the train split (class folders; 1 for a flat folder)."""
        self.setup()
        return len(self.train_dataset.classes)

    @property
    def num_skipped(self) -> int:
        """Files skipped as unreadable (or too short), train and val together, in this process."""
        return sum(d.num_skipped for d in (self.train_dataset, self.val_dataset) if d is not None)
