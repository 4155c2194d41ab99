"""Which model the annotator and the demo use when the user has not chosen one.

:func:`default_model_name` is the single place where that policy lives. Qt-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["default_model_name", "BUILTIN_MODEL", "NO_MODEL_HELP", "ModelSource", "load_engine"]

# The built-in model's registry name, repeated so that importing this module does not import torch
# (napari_vfmseg.models does); tests check that it equals napari_vfmseg.models.BUILTIN_MODEL.
BUILTIN_MODEL = "builtin"

NO_MODEL_HELP = (
    "no model weights are on this machine yet: choose a registry model to download "
    "(`vfmseg models --download NAME`, or pick it in the widget) or a checkpoint file"
)


def default_model_name() -> Optional[str]:
    """:func:`napari_vfmseg.models.default_model_name`, imported safely inside a running viewer."""
    from napari_vfmseg.annotation._gl_compat import guard_triton

    guard_triton()
    from napari_vfmseg.models import default_model_name as registry_default

    return registry_default()


@dataclass(frozen=True)
class ModelSource:
    """What the user chose: a registry ``name``, a ``checkpoint`` file, or both (other weights for
    that registry model's architecture); an optional fine-tuned ``adapter`` file; the ``device``."""

    name: Optional[str] = None
    checkpoint: Optional[str] = None
    adapter: Optional[str] = None
    device: str = "auto"

    def describe(self) -> str:
        base = self.name or (self.checkpoint or "no model")
        if self.name and self.checkpoint:
            base = f"{self.name} ({self.checkpoint})"
        return base + (f" + adapter {self.adapter}" if self.adapter else "")


def load_engine(source: ModelSource, cache_dir=None, download: bool = True):
    """Load the model of ``source`` (applying its adapter) and return a ready Segmenter.

    Slow (reads, maybe downloads, weights): call it off the UI thread. ``cache_dir``: the disk
    embedding cache (None: memory only). Raises ValueError / FileNotFoundError with the reason.
    """
    from napari_vfmseg.annotation._gl_compat import guard_triton

    guard_triton()
    from napari_vfmseg.engine import Segmenter
    from napari_vfmseg.models import load_model

    if source.name:
        model = load_model(source.name, device=source.device, checkpoint=source.checkpoint, download=download)
    elif source.checkpoint:
        model = load_model(source.checkpoint, device=source.device, download=download)
    else:
        raise ValueError(NO_MODEL_HELP)
    if source.adapter:
        from napari_vfmseg.training.adapters import apply_adapter

        apply_adapter(model, source.adapter)
    return Segmenter(model, cache_dir=cache_dir)
