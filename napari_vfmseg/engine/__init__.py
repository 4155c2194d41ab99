"""Engine: prompts → masks with SAM-family models, embedding cache, background prefetch and 3D
propagation. Qt-free: nothing here imports Qt or napari."""

from napari_vfmseg.engine.cache import DiskCache, Embedding, MemoryCache, embedding_key
from napari_vfmseg.engine.prefetch import PrefetchHandle, outward_order
from napari_vfmseg.engine.preprocess import Geometry
from napari_vfmseg.engine.propagate import (
    PlanePrompt,
    PlaneVisit,
    PromptPolicy,
    PropagationConfig,
    PropagationResult,
    WalkStop,
    propagate,
)
from napari_vfmseg.engine.segmenter import EngineStats, Prediction, Segmenter

__all__ = [
    "Segmenter",
    "Prediction",
    "EngineStats",
    "Embedding",
    "MemoryCache",
    "DiskCache",
    "embedding_key",
    "PrefetchHandle",
    "outward_order",
    "Geometry",
    "propagate",
    "PropagationConfig",
    "PropagationResult",
    "PromptPolicy",
    "PlanePrompt",
    "PlaneVisit",
    "WalkStop",
]
