"""What :func:`~napari_vfmseg.engine.propagate.propagate` needs from a segmenter, as protocols.

:class:`PlaneSegmenter` is required: planes to walk, the axis they are taken along, and a
``predict`` on one plane. The engine's :class:`~napari_vfmseg.engine.Segmenter` also has the
optional capabilities below, which the walk uses when present (a stand-in used in tests or by
another tool may have none of them): intensities for the appearance checks, a background
prefetch, an encoder-call counter, the plane the user looks at, and the model whose propagation
preset is the default. Each is checked with ``isinstance`` (the protocols are runtime-checkable;
a method set to None counts as absent).
"""

from __future__ import annotations

from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

__all__ = [
    "PlanePrediction",
    "PlaneSegmenter",
    "GivesIntensities",
    "Prefetches",
    "CountsEncoderCalls",
    "KeepsCurrentPlane",
    "HasModel",
    "segmenter_model",
]


class PlanePrediction(Protocol):
    """One plane's answer: ``mask`` bool (rows, cols), ``score`` (predicted IoU), ``logits`` the
    low-resolution logits (L, L) to prompt the next plane with, or None."""

    mask: np.ndarray
    score: float
    logits: Optional[np.ndarray]


@runtime_checkable
class PlaneSegmenter(Protocol):
    """Required: a volume of ``plane_count`` planes along ``volume_axis`` (0, 1 or 2), and a
    prediction on one of them from prompts in (row, col) order (box (row0, col0, row1, col1))."""

    @property
    def plane_count(self) -> int: ...

    @property
    def volume_axis(self) -> Optional[int]: ...

    def predict(self, points=None, point_labels=None, box=None, mask_input=None, plane: Optional[int] = None
                ) -> PlanePrediction: ...


@runtime_checkable
class GivesIntensities(Protocol):
    """Optional: plane ``plane`` as stored (rows, cols), in the volume's units (HU for CT); enables
    the appearance checks."""

    def plane_image(self, plane: int) -> np.ndarray: ...


@runtime_checkable
class Prefetches(Protocol):
    """Optional: embed ``order``'s planes on a background thread; returns a handle with ``cancel()``
    and ``wait()`` (see :class:`~napari_vfmseg.engine.prefetch.PrefetchHandle`)."""

    def prefetch(self, order: Optional[Sequence[int]] = None) -> Any: ...


@runtime_checkable
class CountsEncoderCalls(Protocol):
    """Optional: encoder forward passes so far (the result reports how many the walk needed)."""

    @property
    def encoder_calls(self) -> int: ...


@runtime_checkable
class KeepsCurrentPlane(Protocol):
    """Optional: the plane the user looks at; ``predict`` moves it, the walk puts it back."""

    current_plane: Optional[int]


@runtime_checkable
class HasModel(Protocol):
    """Optional: the model (a :class:`~napari_vfmseg.models.base.LoadedModel`), whose
    ``info["propagation"]`` names the default preset."""

    model: Any


def segmenter_model(segmenter: object) -> Any:
    """The model of a segmenter that has one (:class:`HasModel`), else None."""
    return segmenter.model if isinstance(segmenter, HasModel) else None
