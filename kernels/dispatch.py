"""Choosing an implementation for each op: `impl` in {"auto", "torch", ...}.

`DEFAULT_IMPL` is the module-level switch tests use to force one path everywhere.
"""

from __future__ import annotations

DEFAULT_IMPL: str | None = None  # set to e.g. "torch" to override every "auto"


def resolve_impl(impl: str, available: tuple[str, ...]) -> str:
    """Map "auto" to the preferred available implementation; reject unknown names clearly."""
    if impl == "auto":
        impl = DEFAULT_IMPL or available[0]
    if impl not in available:
        raise ValueError(f"impl='{impl}' is not available for this op; choose one of {('auto', *available)}")
    return impl
