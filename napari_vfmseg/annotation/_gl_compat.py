"""Keep torch from crashing the viewer: triton must not load next to an OpenGL driver's LLVM.

On Linux, Mesa's OpenGL drivers (llvmpipe on a virtual display, radeonsi, ...) load the system's
``libLLVM``. triton bundles its own LLVM, and importing it into a process that already holds
the system one ends in a segmentation fault. torch imports triton lazily (``torch._dynamo``,
reached through torchvision, which segment-anything imports), so opening the annotator in a
running napari would crash it. napari-vfmseg never uses ``torch.compile``, which is all triton
is for.

:func:`guard_triton` installs an import hook that decides when ``import triton`` actually runs:
if the system LLVM is loaded by then (and triton is not), the import raises ModuleNotFoundError, which
torch reads as "triton is not installed". Deciding at import time matters because the widget
package may be imported before the viewer opens its OpenGL context (a script, a test session),
and torch may first reach triton long after that.
"""

from __future__ import annotations

import importlib.abc
import sys
from pathlib import Path

__all__ = ["guard_triton", "llvm_loaded"]


def llvm_loaded() -> bool:
    """True when this process has a system ``libLLVM`` mapped (an OpenGL driver loaded it)."""
    try:
        return "libLLVM" in Path("/proc/self/maps").read_text()
    except OSError:
        return False


class _TritonGuard(importlib.abc.MetaPathFinder):
    """Refuses ``import triton`` (and its submodules) while a system LLVM is loaded."""

    def find_spec(self, name, path=None, target=None):  # noqa: D401  (importlib protocol)
        if (name == "triton" or name.startswith("triton.")) and "triton" not in sys.modules and llvm_loaded():
            # ModuleNotFoundError: torch's probes (find_spec, import) read it as "not installed"
            raise ModuleNotFoundError("triton is not loaded beside the OpenGL driver's LLVM (it would crash napari)",
                                      name=name)
        return None


def guard_triton() -> bool:
    """Make ``import triton`` raise ImportError whenever it would crash this process.

    Idempotent. Returns True when the guard is in place (Linux, triton not already imported).
    """
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False
    if not any(isinstance(finder, _TritonGuard) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TritonGuard())
    return True
