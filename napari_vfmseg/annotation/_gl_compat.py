"""Keep torch from crashing the viewer: triton must not load next to an OpenGL driver's LLVM.

On Linux, Mesa's OpenGL drivers (llvmpipe on a virtual display, radeonsi, ...) load the system's
``libLLVM``. triton bundles its own LLVM, and importing it into a process that already holds
the system one ends in a segmentation fault. torch imports triton lazily (``torch._dynamo``,
reached through torchvision, which segment-anything imports), so opening the annotator in a
running napari would crash it. napari-vfmseg never uses ``torch.compile``, which is all triton
is for; :func:`guard_triton` therefore marks triton as not installed — only when the system
LLVM is already loaded and triton is not, i.e. exactly when importing it would crash.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["guard_triton"]


def guard_triton() -> bool:
    """Make ``import triton`` raise ImportError if it would crash this process; True if it did so."""
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return False
    if "libLLVM" not in maps:
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]  # import → ImportError; torch: "no triton"
    return True
