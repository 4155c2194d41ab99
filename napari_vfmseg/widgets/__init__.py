"""napari widgets of napari-vfmseg: the "Segment (VFM)" annotator and its building blocks.

Qt-free parts (usable from scripts and tests without a display): :mod:`.session`
(prompts per plane, preview, commits, undo/redo, export), :mod:`.objects` (object table),
:mod:`.history`, :mod:`.planes`, :mod:`.prompts`, :mod:`.model_choice` (the default model).
Qt/napari parts: :mod:`.annotator` (the dock widget), :mod:`.objects_panel`,
:mod:`.prompt_layers`, :mod:`.propagate_panel` (3D propagation), :mod:`.workers`.
"""

from __future__ import annotations

from napari_vfmseg.widgets._gl_compat import guard_triton

# napari imports this package when the user opens the widget from its Plugins menu, with OpenGL
# already up: mark triton unloadable before any of our modules can import torch.
guard_triton()

__all__ = ["AnnotatorWidget", "AnnotationSession", "default_model_name"]


def __getattr__(name: str):
    # Lazy, so that importing the Qt-free modules never starts Qt.
    if name == "AnnotatorWidget":
        from napari_vfmseg.widgets.annotator import AnnotatorWidget

        return AnnotatorWidget
    if name == "AnnotationSession":
        from napari_vfmseg.widgets.session import AnnotationSession

        return AnnotationSession
    if name == "default_model_name":
        from napari_vfmseg.widgets.model_choice import default_model_name

        return default_model_name
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
