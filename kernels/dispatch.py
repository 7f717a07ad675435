"""Choosing an implementation for each op: `impl` in {"auto", "torch", "triton"}.

`auto` picks Triton when every tensor is on CUDA and the op supports the input, torch otherwise (CPU,
unsupported head dim, vocabulary too wide for one program...). `impl="triton"` on an input the kernel
cannot take raises with the reason instead of falling back. `DEFAULT_IMPL` is the module-level switch
that overrides every "auto" (e.g. "torch" to rule Triton out everywhere); the environment variable
MMAR_KERNEL_IMPL sets it at start-up.
"""

from __future__ import annotations

import os

from mmar.kernels.triton_support import interpreting, triton_problem

IMPLS = ("torch", "triton")
DEFAULT_IMPL: str | None = os.environ.get("MMAR_KERNEL_IMPL") or None  # "torch" / "triton" override "auto"


def resolve_impl(impl: str, *tensors, problem: str | None = None) -> str:
    """Map `impl` to "torch" or "triton" for these tensors; `problem` is an op-specific reason against
    Triton (None when the op supports the input)."""
    if impl not in ("auto", *IMPLS):
        raise ValueError(f"impl='{impl}' is not available for this op; choose one of {('auto', *IMPLS)}")
    if impl == "auto" and DEFAULT_IMPL is not None:
        if DEFAULT_IMPL not in IMPLS:
            raise ValueError(f"MMAR_KERNEL_IMPL / DEFAULT_IMPL is '{DEFAULT_IMPL}'; set it to one of {IMPLS}")
        impl = DEFAULT_IMPL
    if impl == "torch":
        return impl
    problem = triton_problem(*tensors) or problem
    if impl == "triton":
        if problem is not None:
            raise ValueError(f"impl='triton' cannot run: {problem}; use impl='torch' or 'auto'")
        return impl
    on_cuda = all(t.is_cuda for t in tensors)
    return "triton" if problem is None and on_cuda and not interpreting() else "torch"
