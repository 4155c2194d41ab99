"""Intensity windows: turn a CT/MR slice of any dtype into the 8-bit image a SAM model expects.

A window is (level, width) in the image's own units (HU for CT). Values below
``level - width/2`` map to 0, above ``level + width/2`` to 255. NaN maps to 0, +inf to 255,
-inf to 0.

One meaning for each choice. The viewer, the CLI and training all turn a user's choice into the
model's window with :func:`model_window` and show it with :func:`display_window`:

- "auto" (or None): 8-bit grey data goes in as it is (as SAM sees a grey photo); CT (by modality
  tag, or integer data that looks like HU) gets the soft-tissue preset; anything else the
  0.5-99.5 percentile window of the whole volume;
- a preset name, "percentile", a :class:`Window` or (level, width): that window, on any dtype.

The window is resolved once on the whole array given (a volume, not a plane), so every plane is
mapped alike. :data:`WINDOW_CHOICES` is the list the widget offers; its values are what the CLI's
``--window`` accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

__all__ = [
    "Window",
    "CT_PRESETS",
    "WINDOW_CHOICES",
    "AS_IS",
    "model_window",
    "display_window",
    "percentile_window",
    "auto_window",
    "resolve_window",
    "apply_window",
]


@dataclass(frozen=True)
class Window:
    """A linear intensity window: ``level`` is its centre, ``width`` its extent (same units as data)."""

    level: float
    width: float
    name: str = "custom"

    def __post_init__(self) -> None:
        if not np.isfinite(self.level) or not np.isfinite(self.width) or self.width <= 0:
            raise ValueError(f"invalid window level={self.level!r} width={self.width!r}: width must be > 0")
        # plain floats (not numpy scalars) keep reprs, JSON and cache keys stable
        object.__setattr__(self, "level", float(self.level))
        object.__setattr__(self, "width", float(self.width))

    @property
    def low(self) -> float:
        return self.level - self.width / 2.0

    @property
    def high(self) -> float:
        return self.level + self.width / 2.0

    def as_tuple(self) -> tuple[float, float]:
        """(level, width), used in cache keys."""
        return (float(self.level), float(self.width))


CT_PRESETS: dict[str, Window] = {
    "soft_tissue": Window(40.0, 400.0, "soft_tissue"),
    "lung": Window(-600.0, 1500.0, "lung"),
    "bone": Window(400.0, 1800.0, "bone"),
    "brain": Window(40.0, 80.0, "brain"),
}

WindowSpec = Union[None, str, Window, tuple, list]

#: The identity window of 8-bit data: ``apply_window(x, AS_IS)`` returns uint8 ``x`` unchanged.
AS_IS = Window(127.5, 255.0, "as_is")

#: (label shown, value) of the widget's window menu; the value is what ``--window`` accepts (None = "auto").
WINDOW_CHOICES: tuple[tuple[str, Union[str, None]], ...] = (
    ("auto", None),
    ("soft tissue (40/400)", "soft_tissue"),
    ("lung (-600/1500)", "lung"),
    ("bone (400/1800)", "bone"),
    ("brain (40/80)", "brain"),
    ("percentile 0.5-99.5", "percentile"),
)


def _as_numeric(array: np.ndarray) -> np.ndarray:
    """``array`` as a numpy array on which arithmetic works (boolean masks become 0/1 uint8)."""
    values = np.asarray(array)
    return values.astype(np.uint8) if values.dtype == bool else values


def _finite_min(values: np.ndarray) -> float:
    """Smallest finite value (NaN if there is none), without numpy's all-NaN warning."""
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
    return float(values.min()) if values.size else float("nan")


def percentile_window(array: np.ndarray, low: float = 0.5, high: float = 99.5, name: str = "percentile") -> Window:
    """Window spanning the ``low``–``high`` percentiles of the finite values of ``array`` (any shape)."""
    values = _as_numeric(array)
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values.ravel()
    if finite.size == 0:
        return Window(0.5, 1.0, name)
    if finite.size > 2_000_000:  # subsample big volumes: percentiles are stable, sorting is not free
        step = finite.size // 2_000_000 + 1
        finite = finite.ravel()[::step]
    lo, hi = np.percentile(finite, [low, high]).astype(np.float64)
    if hi <= lo:  # constant image: any window that keeps it mid-grey
        hi = lo + 1.0
    return Window((lo + hi) / 2.0, hi - lo, name)


def auto_window(array: np.ndarray, modality: str | None = None) -> Window:
    """Choose a window from the DICOM modality, or else from the value range.

    8-bit grey data (dtype uint8) gets :data:`AS_IS`, whatever the modality: its pixels go to the
    model unchanged. CT (modality "CT", or data reaching below -500 like HU air) gets the
    soft-tissue preset; everything else (MR, PET, ...) the 0.5–99.5 percentile window.
    """
    if np.asarray(array).dtype == np.uint8:
        return AS_IS
    if modality is not None and modality.upper() == "CT":
        return CT_PRESETS["soft_tissue"]
    values = _as_numeric(array)
    if values.size and modality is None:
        finite_min = _finite_min(values)
        if np.isfinite(finite_min) and finite_min <= -500 and _looks_like_hu(values):
            return CT_PRESETS["soft_tissue"]
    return percentile_window(values, 0.5, 99.5, "mr_percentile")


def _looks_like_hu(values: np.ndarray) -> bool:
    """Heuristic: CT in HU has air near -1000 and little above +3000."""
    sample = values.ravel()[:: max(1, values.size // 200_000)]
    sample = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
    if sample.size == 0:
        return False
    return float(np.percentile(sample, 1)) < -500 and float(np.percentile(sample, 99.9)) < 4000


def _is_auto(spec: WindowSpec) -> bool:
    return spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto")


def model_window(spec: WindowSpec, array: np.ndarray, modality: str | None = None) -> Window | None:
    """The window the model is given for the choice ``spec`` on ``array`` (the whole volume or image).

    None means "use the pixels as they are": "auto" on 8-bit grey data. The engine, the CLI and
    training call this, so one choice gives the same pixels everywhere.
    """
    if _is_auto(spec) and np.asarray(array).dtype == np.uint8:
        return None
    return resolve_window(spec, array, modality)


def display_window(spec: WindowSpec, array: np.ndarray, modality: str | None = None) -> Window:
    """The window to show ``array`` with for the choice ``spec``: the model's, :data:`AS_IS` for None."""
    return model_window(spec, array, modality) or AS_IS


def resolve_window(spec: WindowSpec, array: np.ndarray, modality: str | None = None) -> Window:
    """Turn a user's window choice into a :class:`Window`.

    ``spec`` is None or "auto" (see :func:`auto_window`), a CT preset name, "percentile"/"mr",
    a :class:`Window`, or a ``(level, width)`` pair.
    """
    if _is_auto(spec):
        return auto_window(array, modality)
    if isinstance(spec, Window):
        return spec
    if isinstance(spec, str):
        key = spec.lower().replace("-", "_").replace(" ", "_")
        if key in CT_PRESETS:
            return CT_PRESETS[key]
        if key in ("percentile", "mr", "mr_percentile"):
            return percentile_window(array, 0.5, 99.5, "mr_percentile")
        raise ValueError(
            f"unknown window {spec!r}: use 'auto', 'percentile', one of {sorted(CT_PRESETS)}, or (level, width)"
        )
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return Window(float(spec[0]), float(spec[1]))
    raise ValueError(f"cannot interpret window {spec!r}")


def apply_window(array: np.ndarray, window: Window) -> np.ndarray:
    """Map ``array`` (any shape, any real dtype) through ``window`` to uint8 of the same shape."""
    values = np.asarray(array, dtype=np.float32)
    scaled = (values - np.float32(window.low)) * np.float32(255.0 / window.width)
    scaled = np.nan_to_num(scaled, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
