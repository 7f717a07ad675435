"""LR schedule: linear warmup, then cosine to min_lr_ratio (or constant)."""

import math

import pytest

from mmar.errors import ConfigError
from mmar.lit.optim import scheduled, warmup_schedule


def test_warmup_then_cosine_endpoints():
    f = lambda step: warmup_schedule(step, 10, 110, "cosine", 0.1)
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    assert warmup_schedule(70, 10, 110, "constant", 0.1) == 1.0


def test_unknown_schedule_is_named():
    with pytest.raises(ConfigError, match="lr_schedule 'step'"):
        scheduled(None, 0, 10, "step")
