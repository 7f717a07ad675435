"""Class labels to generate for: the prediction data of `mmar predict` with a class-conditional model.

Batches are {"label": long [B]}, `per_class` of each class in class order (the ADM protocol samples 50
per class for 50k-image evaluations).
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from mmar.errors import ConfigError


class ClassLabelsDataModule(LightningDataModule):
    """`per_class` labels of each of `num_classes` classes, for `predict`.

    Args:
        num_classes: number of classes.
        per_class: samples to generate per class.
        batch_size: labels per batch.
    """

    def __init__(self, num_classes: int = 10, per_class: int = 10, batch_size: int = 100):
        super().__init__()
        if num_classes < 1 or per_class < 1 or batch_size < 1:
            raise ConfigError("num_classes, per_class and batch_size must all be >= 1")
        self.labels = torch.arange(num_classes).repeat_interleave(per_class)  # (N,)
        self.batch_size = batch_size

    def predict_dataloader(self) -> DataLoader:
        items = [{"label": label} for label in self.labels]
        return DataLoader(items, batch_size=self.batch_size, shuffle=False)
