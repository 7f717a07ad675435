"""The test split of the embedded DataModules: held out from train and val where the data is procedural,
the same items on every run, and what `predict` reads in order."""

import pytest
import torch

from mmar.data import DigitsDataModule, EmbeddedNotesDataModule, MovingDigitsDataModule, ShapesDataModule

PROCEDURAL = {
    "shapes": (lambda: ShapesDataModule(image_size=16, num_train=4, num_val=3, batch_size=2), "image"),
    "moving": (
        lambda: MovingDigitsDataModule(
            image_size=16, digit_size=8, num_frames=5, num_clips_train=4, num_clips_val=3, batch_size=2
        ),
        "video",
    ),
    "notes": (
        lambda: EmbeddedNotesDataModule(duration=0.1, num_clips_train=4, num_clips_val=3, batch_size=2),
        "audio",
    ),
}


def items(dataset, key: str) -> torch.Tensor:
    return torch.stack([dataset[i][key] for i in range(len(dataset))])


@pytest.mark.parametrize("name", sorted(PROCEDURAL))
def test_procedural_test_split_is_held_out_and_deterministic(name):
    make, key = PROCEDURAL[name]
    data = make()
    data.setup()
    test = items(data.test_dataset, key)
    assert len(test) == len(data.val_dataset) == 3
    for other in (items(data.val_dataset, key), items(data.train_dataset, key)):
        assert not any(torch.equal(t, o) for t in test for o in other)
    assert torch.equal(items(make().test_dataloader().dataset, key), test)  # another run: the same items
    predicted = torch.cat([batch[key] for batch in data.predict_dataloader()])
    assert torch.equal(predicted, test)  # predict reads the test split in order


def test_digits_test_split_is_the_val_split():
    data = DigitsDataModule(image_size=8, batch_size=4)
    assert data.test_dataloader().dataset is data.val_dataset
