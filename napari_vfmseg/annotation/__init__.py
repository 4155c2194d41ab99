"""Qt-free annotation state behind the "Segment (VFM)" widget and the demo.

:mod:`.session` (prompts per plane, preview, commits, undo/redo, export) composes
:mod:`.preview` (how the per-plane masks and a propagation make one preview), :mod:`.objects`
(object table), :mod:`.history` (undo/redo of label edits), :mod:`.planes`, :mod:`.prompts`;
:mod:`.autosave` keeps committed objects safe across crashes; :mod:`.model_choice` is the
default-model policy and the model loading a viewer uses (with :mod:`._gl_compat`). Nothing here
imports Qt, napari or magicgui, and importing the package loads no torch.
"""

from __future__ import annotations

__all__ = ["AnnotationSession", "Plane", "PlanePrompts", "ObjectTable", "default_model_name", "ModelSource"]

_WHERE = {
    "AnnotationSession": "session",
    "Plane": "planes",
    "PlanePrompts": "prompts",
    "ObjectTable": "objects",
    "default_model_name": "model_choice",
    "ModelSource": "model_choice",
}


def __getattr__(name: str):
    if name in _WHERE:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
