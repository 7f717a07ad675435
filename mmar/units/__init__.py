"""Prediction units by name. Registering a new unit is one line in `UNITS`."""

from __future__ import annotations

import inspect

from mmar.errors import ConfigError
from mmar.units.base import PredictionUnit, UnitBatch, grid_positions
from mmar.units.hi_mar import HiMAR
from mmar.units.masked_ar import MaskedAR
from mmar.units.next_block import NextBlock
from mmar.units.next_neighbor import NextNeighbor
from mmar.units.next_token import NextToken
from mmar.units.next_x import NextX
from mmar.units.random_order import RandomOrder

UNITS: dict[str, type[PredictionUnit]] = {
    NextToken.name: NextToken,
    NextBlock.name: NextBlock,
    NextNeighbor.name: NextNeighbor,
    MaskedAR.name: MaskedAR,
    HiMAR.name: HiMAR,
    NextX.name: NextX,
    RandomOrder.name: RandomOrder,
}


def build_unit(name: str, **kwargs) -> PredictionUnit:
    """Instantiate the unit registered as `name` with its constructor kwargs."""
    if name not in UNITS:
        raise ConfigError(f"unknown prediction unit '{name}'; registered units: {sorted(UNITS)}")
    params = inspect.signature(UNITS[name]).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        raise ConfigError(
            f"unknown argument(s) {unknown} of the {name} unit in model.unit_kwargs; valid: {sorted(params)}"
        )
    return UNITS[name](**kwargs)


__all__ = [
    "UNITS",
    "NextBlock",
    "NextToken",
    "PredictionUnit",
    "RandomOrder",
    "UnitBatch",
    "build_unit",
    "grid_positions",
]
