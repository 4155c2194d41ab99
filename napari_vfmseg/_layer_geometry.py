"""Glue between a :class:`~napari_vfmseg.io.Volume` and napari layer keyword arguments.

The scan's geometry travels in ``layer.metadata["vfmseg"]`` so that labels drawn on top of it can
be written back with exactly the source's spacing, origin and direction (and, for a DICOM series,
the source files a DICOM-SEG export references). Axis-aligned volumes are shown with
``scale``/``translate`` (mm); oblique or flipped ones with a full ``affine`` so they display
correctly in world space. A layer without that metadata is written from its own transform:
``affine`` after (``rotate`` · ``shear`` · ``scale``, ``translate``), as napari composes them.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from napari_vfmseg.io import Volume
from napari_vfmseg.io.errors import LabelWriteError
from napari_vfmseg.io.formats import strip_suffix
from napari_vfmseg.io.windowing import display_window

GEOMETRY_KEY = "vfmseg"

# What a DICOM-SEG export needs of the source series, copied from Volume.metadata.
_DICOM_KEYS = ("dicom_series_uid", "dicom_series_description", "dicom_study_uid", "dicom_frame_of_reference_uid",
               "dicom_plane_files", "dicom_plane_sop_instance_uids", "dicom_interpolated_planes")
# Largest |cos| between two axes of a layer that still counts as orthogonal (no shear).
_ORTHOGONAL_TOL = 1e-6


def geometry_metadata(volume: Volume) -> dict[str, Any]:
    """JSON-friendly geometry of ``volume`` in array axis order (mm)."""
    stored: dict[str, Any] = {
        "spacing": [float(s) for s in volume.spacing],
        "origin": [float(o) for o in volume.origin],
        "direction": np.asarray(volume.direction, dtype=float).tolist(),
        "source": str(volume.path) if volume.path is not None else None,
        "modality": volume.modality,
    }
    if volume.metadata.get("format") == "DICOM" and volume.metadata.get("dicom_plane_files"):
        stored["dicom"] = {key: volume.metadata.get(key) for key in _DICOM_KEYS}
    return stored


def source_volume(stored: dict, shape: tuple[int, ...]) -> Volume:
    """A stand-in :class:`Volume` (no pixels) of the scan described by a layer's stored geometry.

    Carries what :func:`napari_vfmseg.io.write_dicom_seg` needs: shape, geometry, source path and
    the DICOM source files. Raises ValueError if the layer came from no DICOM series.
    """
    dicom = stored.get("dicom")
    if not dicom:
        raise ValueError(f"the layer's scan ({stored.get('source') or 'unknown'}) was not read from a DICOM series")
    return Volume(array=np.broadcast_to(np.zeros((), np.uint8), shape), spacing=stored["spacing"],
                  origin=stored["origin"], direction=np.asarray(stored["direction"], dtype=float),
                  path=stored.get("source"), modality=stored.get("modality"), metadata={"format": "DICOM", **dicom})


def _placement(volume: Volume) -> dict[str, Any]:
    # a flipped axis (e.g. a RAS NIfTI) is not oblique, but scale/translate alone would mirror it
    if not volume.has_identity_direction:
        return {"affine": np.asarray(volume.affine, dtype=float)}
    return {"scale": tuple(volume.scale), "translate": tuple(volume.translate)}


def image_layer_kwargs(volume: Volume, name: Optional[str] = None) -> dict[str, Any]:
    """Keyword arguments for ``viewer.add_image`` (physical placement, contrast window, metadata)."""
    kwargs: dict[str, Any] = {
        "name": name or _display_name(volume),
        "metadata": {GEOMETRY_KEY: geometry_metadata(volume)},
        **_placement(volume),
    }
    if volume.is_rgb:
        kwargs["rgb"] = True
    else:
        window = display_window(None, volume.array, volume.modality)  # "auto": what the model sees
        kwargs["contrast_limits"] = (float(window.low), float(window.high))
        kwargs["colormap"] = "gray"
    return kwargs


def labels_layer_kwargs(volume: Volume, name: Optional[str] = None) -> dict[str, Any]:
    """Keyword arguments for ``viewer.add_labels`` placed exactly on ``volume``."""
    return {
        "name": name or f"{_display_name(volume)} labels",
        "metadata": {GEOMETRY_KEY: geometry_metadata(volume)},
        **_placement(volume),
    }


def geometry_from_layer(metadata: dict, scale, translate, ndim: int, *, rotate=None, shear=None, affine=None,
                        where: str = "layer") -> dict[str, Any]:
    """Geometry to write a layer with: the stored scan geometry if any, else the layer's transform.

    Returns ``{"spacing", "origin", "direction"}`` in array axis order. A layer that came from our
    reader (or was created by our widgets) carries the scan's exact geometry. Any other layer is
    written from napari's data-to-world transform: ``affine`` applied after ``rotate``, ``shear``,
    ``scale`` and ``translate``. Label files keep orthogonal axes only.

    Raises:
        LabelWriteError: the layer is sheared (its axes are not orthogonal in the world), naming ``where``.
    """
    stored = (metadata or {}).get(GEOMETRY_KEY)
    if stored and len(stored.get("spacing", ())) == ndim:
        return {
            "spacing": tuple(stored["spacing"]),
            "origin": tuple(stored["origin"]),
            "direction": np.asarray(stored["direction"], dtype=float),
        }
    matrix = layer_world_matrix(ndim, scale, translate, rotate=rotate, shear=shear, affine=affine)
    linear = matrix[:ndim, :ndim]
    spacing = np.linalg.norm(linear, axis=0)
    if not np.all(spacing > 0):
        scales = np.round(spacing, 6).tolist()
        raise LabelWriteError(f"{where}: the layer's transform collapses an axis (scale {scales})")
    direction = linear / spacing
    cosines = direction.T @ direction - np.eye(ndim)
    if np.max(np.abs(cosines)) > _ORTHOGONAL_TOL:
        angle = float(np.degrees(np.arccos(np.clip(np.max(np.abs(cosines)), 0.0, 1.0))))
        raise LabelWriteError(
            f"{where}: the layer is sheared (two of its axes meet at {angle:.2f} degrees instead of 90); "
            "label files store orthogonal axes only, so it cannot be written without moving voxels. Set the "
            "layer's shear to 0, or draw the labels on a layer placed like the scan"
        )
    return {
        "spacing": tuple(float(v) for v in spacing),
        "origin": tuple(float(v) for v in matrix[:ndim, ndim]),
        "direction": direction,
    }


def layer_world_matrix(ndim: int, scale, translate, *, rotate=None, shear=None, affine=None) -> np.ndarray:
    """(ndim+1, ndim+1) data-to-world matrix of a napari layer, composed by napari's own transforms."""
    from napari.utils.transforms import Affine

    composite = Affine(
        scale=tuple(float(v) for v in np.asarray(scale, dtype=float)[-ndim:]),
        translate=tuple(float(v) for v in np.asarray(translate, dtype=float)[-ndim:]),
        rotate=None if rotate is None else _last_block(rotate, ndim),
        shear=None if shear is None else _shear_for(shear, ndim),
        ndim=ndim,
    ).affine_matrix
    if affine is None:
        return composite
    outer = affine.affine_matrix if hasattr(affine, "affine_matrix") else np.asarray(affine, dtype=float)
    outer = _last_block(outer, ndim + 1)
    return outer @ composite


def _last_block(matrix, size: int) -> np.ndarray:
    values = np.asarray(matrix, dtype=float)
    return values[-size:, -size:]


def _shear_for(shear, ndim: int) -> np.ndarray:
    values = np.asarray(shear, dtype=float)
    if values.ndim == 2:
        return values[-ndim:, -ndim:]
    count = ndim * (ndim - 1) // 2
    return values[-count:] if values.size >= count else values


def _display_name(volume: Volume) -> str:
    if volume.path is None:
        return "volume"
    return strip_suffix(volume.path)


def export_labels(path, labels: np.ndarray, metadata: dict, geometry: dict, *, names: Optional[dict] = None,
                  model: Optional[str] = None, adapter: Optional[str] = None) -> str:
    """Write the labels drawn on an image layer: a DICOM-SEG for a ``.dcm`` path, else a label file.

    ``metadata`` is the image layer's metadata (its ``GEOMETRY_KEY`` entry names the DICOM source);
    ``geometry`` the ``{"spacing", "origin", "direction"}`` the labels are written with otherwise
    (:func:`geometry_from_layer`). ``names`` (label value → name), ``model`` and ``adapter`` go
    into the DICOM-SEG's segments. Returns the written path.

    Raises:
        LabelWriteError: a DICOM-SEG for an image that was not read from a DICOM series, or any
            error of :func:`napari_vfmseg.io.write_labels` / :func:`napari_vfmseg.io.write_dicom_seg`.
    """
    from napari_vfmseg.io import write_dicom_seg, write_labels
    from napari_vfmseg.io.formats import DICOM_SUFFIXES, path_extension

    values = np.asarray(labels)
    if path_extension(path) not in DICOM_SUFFIXES:
        return str(write_labels(path, values, **geometry))
    try:
        like = source_volume((metadata or {}).get(GEOMETRY_KEY) or {}, values.shape)
    except (ValueError, KeyError) as exc:
        raise LabelWriteError(f"{path}: cannot write a DICOM-SEG: {exc}; save as .nii.gz, .nrrd or .mha") from exc
    return write_dicom_seg(path, values, like, names=names, model=model, adapter=adapter)
