"""napari widgets of napari-vfmseg: the "Segment (VFM)" annotator and its building blocks.

Only Qt and napari code lives here: :mod:`.annotator` (the dock widget's composition root),
:mod:`.annotator_ui` (its controls), :mod:`.viewer_planes` (plane on screen, displayed axis,
painted planes), :mod:`.layer_lifecycle` (the widget's layers and shortcuts),
:mod:`.model_actions`, :mod:`.prompt_actions`, :mod:`.object_actions` (what the user does),
:mod:`.autosave_actions` (autosave and the restore offer),
:mod:`.labels_colormap`, :mod:`.engine_link` and :mod:`.workers` (every engine call off the UI
thread), :mod:`.model_panel`, :mod:`.objects_panel`, :mod:`.prompt_layers`,
:mod:`.propagate_panel`, :mod:`.finetune_panel` (with :mod:`.loss_plot`,
:mod:`.adapter_switch`, :mod:`.auto_adapt`, :mod:`.finetune_sources`) and :mod:`.notify`. The Qt-free state they
show is in :mod:`napari_vfmseg.annotation`; :mod:`napari_vfmseg._view_orientation` turns the
camera head-up.
"""

from __future__ import annotations

from napari_vfmseg.annotation._gl_compat import guard_triton

# napari imports this package when the user opens the widget from its Plugins menu, with OpenGL
# already up: mark triton unloadable before any of our modules can import torch.
guard_triton()

__all__ = ["AnnotatorWidget"]


def __getattr__(name: str):
    # Lazy, so that importing a panel module does not build the whole annotator.
    if name == "AnnotatorWidget":
        from napari_vfmseg.widgets.annotator import AnnotatorWidget

        return AnnotatorWidget
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
