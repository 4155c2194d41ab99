"""Engine: prompts → masks with SAM-family models, embedding cache, background prefetch and 3D
propagation. Qt-free: nothing here imports Qt or napari.

Importing this package loads neither torch nor the models: :class:`Segmenter` and the cache
classes are imported on first use (as in ``napari_vfmseg.io``), so panels can import the real
propagation defaults (:class:`PropagationConfig`, :func:`preset`) without paying for torch.
The propagation package is pure numpy/scipy and is imported here directly (its function
``propagate`` shares its name with the subpackage, and must win).
"""

from importlib import import_module

from napari_vfmseg.engine.coords import rc_to_xy, xy_to_rc
from napari_vfmseg.engine.errors import NonFiniteImageError
from napari_vfmseg.engine.propagate import (
    PlanePrompt,
    PlaneSegmenter,
    PlaneVisit,
    PromptPolicy,
    PropagationConfig,
    PropagationResult,
    WalkStop,
    preset,
    propagate,
)

# name → module that defines it; imported on first access (these pull in torch)
_LAZY = {
    "Segmenter": "segmenter",
    "Prediction": "decoding",
    "EngineStats": "embeddings",
    "EmbeddingProvider": "embeddings",
    "Embedding": "cache",
    "MemoryCache": "cache",
    "DiskCache": "cache",
    "embedding_key": "cache",
    "scan_fingerprint": "cache",
    "PrefetchHandle": "prefetch",
    "outward_order": "prefetch",
    "Geometry": "preprocess",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f"napari_vfmseg.engine.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'napari_vfmseg.engine' has no attribute {name!r}")


__all__ = [
    "Segmenter",
    "Prediction",
    "EngineStats",
    "EmbeddingProvider",
    "Embedding",
    "MemoryCache",
    "DiskCache",
    "embedding_key",
    "scan_fingerprint",
    "PrefetchHandle",
    "outward_order",
    "Geometry",
    "NonFiniteImageError",
    "rc_to_xy",
    "xy_to_rc",
    "propagate",
    "preset",
    "PropagationConfig",
    "PropagationResult",
    "PromptPolicy",
    "PlanePrompt",
    "PlaneSegmenter",
    "PlaneVisit",
    "WalkStop",
]
