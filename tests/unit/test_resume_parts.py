"""The parts of exact resume: a sampler that starts mid-epoch, per-batch data seeds, RNG states that
survive a weights-only checkpoint, and a cosine schedule that refuses to change length."""

import os
import random
import signal

import numpy as np
import pytest
import torch

from mmar.data.resumable import ResumableLoader, ResumableSampler, seeded_rngs
from mmar.errors import ConfigError
from mmar.lit.interrupt import SaveOnInterrupt
from mmar.lit.optim import WarmupSchedule
from mmar.lit.rng_state import rng_states, set_rng_states


def test_sampler_resumed_mid_epoch_yields_the_rest_of_that_epoch():
    data = list(range(50))
    full = ResumableSampler(data, batch_size=4, seed=3)
    full.set_epoch(2)
    resumed = ResumableSampler(data, batch_size=4, seed=3)
    resumed.resume_at(epoch=2, start_batch=5)
    resumed.set_epoch(2)  # Lightning sets the resumed epoch again at its start
    assert list(resumed) == list(full)[20:]
    assert list(resumed) == list(full)  # the start applies to one pass only
    resumed.set_epoch(3)  # a new epoch starts from its first batch
    full.set_epoch(3)
    assert list(resumed) == list(full) != list(range(50))


@pytest.mark.parametrize("set_before_pass", [[], [2], [2, 3]])
def test_sampler_follows_lightnings_epoch_count_from_the_resumed_epoch_on(set_before_pass):
    """Lightning sets epochs before or after a resumed pass starts, and after a checkpoint written at the
    end of an epoch it counts one ahead (here: its 3 is the data's 2)."""
    data = list(range(50))
    full, resumed = ResumableSampler(data, batch_size=4), ResumableSampler(data, batch_size=4)
    resumed.resume_at(epoch=2, start_batch=1)
    for lightning_epoch in set_before_pass:
        resumed.set_epoch(lightning_epoch)
    full.set_epoch(2)
    assert list(resumed) == list(full)[4:]
    lightning = set_before_pass[-1] if set_before_pass else 3
    resumed.set_epoch(lightning)  # set again during the pass: no change
    resumed.set_epoch(lightning + 1), full.set_epoch(3)
    assert list(resumed) == list(full)


def test_sampler_shards_are_disjoint_and_cover_the_data():
    data = list(range(40))
    shards = [list(ResumableSampler(data, batch_size=4, seed=0, num_replicas=2, rank=r)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == data


def test_loader_augmentations_depend_on_the_batch_not_the_global_rng():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, index):
            return torch.rand(()) + random.random() + float(np.random.rand())

    def batches(start_batch: int, global_seed: int) -> list[torch.Tensor]:
        sampler = ResumableSampler(Noisy(), batch_size=3, seed=0)
        sampler.resume_at(epoch=1, start_batch=start_batch)
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        out = list(ResumableLoader(Noisy(), sampler, batch_size=3))
        assert torch.equal(torch.get_rng_state(), before)  # the model's stream is untouched
        return out

    full, resumed = batches(0, global_seed=0), batches(2, global_seed=1)
    assert len(full) == 4 and all(torch.equal(a, b) for a, b in zip(full[2:], resumed, strict=True))
    assert not torch.equal(full[0], full[1])


def test_seeded_rngs_restores_every_generator():
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    expected = torch.rand(2), np.random.rand(2), random.random()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    with seeded_rngs(123):
        torch.rand(5), np.random.rand(5), random.random()
    assert torch.equal(torch.rand(2), expected[0]) and np.array_equal(np.random.rand(2), expected[1])
    assert random.random() == expected[2]


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(5), np.random.seed(5), random.seed(5)
    torch.save({"rng": rng_states()}, tmp_path / "state.ckpt")
    expected = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_rng_states(torch.load(tmp_path / "state.ckpt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def schedule(total_steps: int, kind: str = "cosine") -> WarmupSchedule:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    return WarmupSchedule(optimizer, warmup_steps=2, total_steps=total_steps, schedule=kind, min_lr_ratio=0.1)


def test_cosine_schedule_refuses_another_length_on_resume():
    saved = schedule(100)
    for _ in range(10):
        saved.optimizer.step(), saved.step()
    with pytest.raises(ConfigError, match=r"spans 100 steps but this run has 200; .*max_steps=100"):
        schedule(200).load_state_dict(saved.state_dict())
    same = schedule(100)
    same.load_state_dict(saved.state_dict())
    assert same.get_last_lr() == saved.get_last_lr()


def test_constant_schedule_resumes_with_any_length():
    saved = schedule(100, "constant")
    for _ in range(10):
        saved.optimizer.step(), saved.step()
    longer = schedule(300, "constant")
    longer.load_state_dict(saved.state_dict())
    assert longer.total_steps == 300 and longer.get_last_lr() == saved.get_last_lr() == [1.0]


def test_first_signal_is_noted_and_a_second_interrupts_at_once():
    callback, before = SaveOnInterrupt(), signal.getsignal(signal.SIGTERM)
    callback.on_train_start(None, None)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert callback.received == signal.SIGTERM  # noted; the step in flight goes on
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        callback.on_exception(None, None, KeyboardInterrupt())
    assert signal.getsignal(signal.SIGTERM) is before
