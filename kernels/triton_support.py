"""When the Triton path can run, and the one-line reasons when it cannot.

Triton runs on CUDA tensors, or on CPU tensors under `TRITON_INTERPRET=1` (the interpreter the tests
use; it must be set before triton is first imported, and it computes bf16 wrongly, so bf16 is refused
there). `auto` picks Triton only on CUDA; the interpreter is for tests, never a silent default.
"""

from __future__ import annotations

import importlib.util
import os

import torch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# looked up once: a file-system search on every call cost ~100 us per attention and sample call of a decode
# step on CPU (and a module constant, unlike a cached function, is plain to torch.compile)
TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def triton_installed() -> bool:
    return TRITON_INSTALLED


def triton_problem(*tensors: torch.Tensor) -> str | None:
    """Why these tensors cannot take the Triton path (None when they can)."""
    if not triton_installed():
        return "triton is not installed (pip install triton)"
    devices = {t.device.type for t in tensors}
    if devices != {"cuda"} and not (interpreting() and devices == {"cpu"}):
        return f"the Triton path needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1); got {devices}"
    if interpreting() and any(t.dtype == torch.bfloat16 for t in tensors):
        return "the Triton interpreter computes bf16 wrongly; use float32 or float16 under TRITON_INTERPRET=1"
    return None
