"""Check a DICOM series against its slices' own positions, then read it onto a regular grid.

The checks, from each file's ImagePositionPatient (IPP), ImageOrientationPatient (IOP), Rows,
Columns, PixelSpacing, Modality and rescale tags:

- every file has pixel data, a position and an orientation; all share the orientation (within
  :data:`ORIENTATION_TOL` per direction cosine), rows, columns, pixel spacing (within
  :data:`SPACING_RTOL` relative) and modality — else :class:`VolumeReadError`;
- positions are projected on the slice normal (row direction x column direction) and sorted;
  two files at one position (within :data:`POSITION_TOL` mm): exact copies (same SOP instance)
  keep one with a warning, different images are refused;
- shear: a position off the line through the first slice along the normal (slices sliding
  sideways, as with gantry tilt) by more than a tenth of a pixel (:data:`SHEAR_PIXEL_FRACTION`,
  at least :data:`SHEAR_TOL` mm, so rounded header values pass) is refused with the tilt in
  degrees — a label map on an orthogonal grid would be misplaced;
- spacing: the gaps between neighbours must agree with their median within
  ``max(POSITION_TOL, STEP_RTOL * median)``. If not (a missing slice, a change of spacing), the
  series is read onto a regular grid at the slices' true positions: grid planes that coincide
  with a slice are that slice, the others are interpolated linearly between their two
  neighbours along the normal, and a UserWarning names the folder and the irregular gaps.

Pixels are read file by file (GDCM through SimpleITK, so compressed transfer syntaxes work),
each with its own RescaleSlope/RescaleIntercept. Arrays are (plane, row, col) with planes in
increasing position along the normal, like :func:`napari_vfmseg.io.dicom.write_dicom_series`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from napari_vfmseg.io.dicom_headers import DicomSeriesInfo, SliceHeader
from napari_vfmseg.io.errors import VolumeReadError

__all__ = [
    "ORIENTATION_TOL",
    "SPACING_RTOL",
    "POSITION_TOL",
    "STEP_RTOL",
    "SHEAR_TOL",
    "SHEAR_PIXEL_FRACTION",
    "SeriesLayout",
    "plan_series",
    "read_series",
    "layout_metadata",
]

#: Largest difference between two files' direction cosines that still counts as one orientation.
ORIENTATION_TOL = 1e-4
#: Relative tolerance on PixelSpacing between files.
SPACING_RTOL = 1e-4
#: Positions (mm) closer than this along the normal are one position.
POSITION_TOL = 0.01
#: A slice further off the normal than this fraction of the smaller pixel spacing is sheared ...
SHEAR_PIXEL_FRACTION = 0.1
#: ... and at least this far (mm): headers round positions and orientations to a few decimals.
SHEAR_TOL = 0.05
#: Gaps between neighbouring slices are uniform when they agree with the median within this fraction.
STEP_RTOL = 0.01


@dataclass
class SeriesLayout:
    """Where each plane of the grid comes from, and the grid's geometry (array order).

    ``sources[k]`` is the header of the slice at grid plane ``k``, or None for an interpolated plane;
    ``between[k]`` is then (lower slice index, upper slice index, weight of the upper one) into
    ``slices`` (the kept slices in position order).
    """

    slices: list[SliceHeader]
    sources: list[Optional[SliceHeader]]
    between: dict[int, tuple[int, int, float]]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    notes: list[str] = field(default_factory=list)


def _where(folder: str, info: DicomSeriesInfo) -> str:
    return f"{folder}: DICOM series {info.uid}"


def _check_consistent(info: DicomSeriesInfo, folder: str) -> None:
    where = _where(folder, info)
    for header in info.headers:
        if not header.has_pixels:
            raise VolumeReadError(f"{header.path}: DICOM file of series {info.uid} has no pixel data")
        if header.n_frames != 1:
            raise VolumeReadError(
                f"{header.path}: a multi-frame file ({header.n_frames} frames) inside series {info.uid}; "
                "open the file itself"
            )
        if header.position is None or header.orientation is None:
            missing = "ImagePositionPatient" if header.position is None else "ImageOrientationPatient"
            raise VolumeReadError(f"{header.path}: DICOM file of series {info.uid} has no {missing}, so its "
                                  "place in the volume is unknown")
    modalities: dict[Optional[str], list[str]] = {}
    for header in info.headers:
        modalities.setdefault(header.modality, []).append(header.name)
    if len(modalities) > 1:
        listing = "; ".join(f"{m or 'none'}: {len(n)} file(s), e.g. {n[0]}" for m, n in modalities.items())
        raise VolumeReadError(f"{where} mixes modalities ({listing}); one series must be one acquisition")
    sizes: dict[tuple, str] = {}
    for header in info.headers:
        sizes.setdefault((header.rows, header.cols), header.name)
    if len(sizes) > 1:
        listing = "; ".join(f"{name}: {r} rows x {c} cols" for (r, c), name in sizes.items())
        raise VolumeReadError(f"{where} has slices of inconsistent sizes ({listing})")
    first = info.headers[0]
    for header in info.headers[1:]:
        gap = np.max(np.abs(np.subtract(header.orientation, first.orientation)))
        if gap > ORIENTATION_TOL:
            raise VolumeReadError(
                f"{where} has slices of inconsistent orientation: {first.name} {_fmt(first.orientation)}, "
                f"{header.name} {_fmt(header.orientation)}"
            )
        if (header.pixel_spacing is None) != (first.pixel_spacing is None) or (
            header.pixel_spacing is not None
            and not np.allclose(header.pixel_spacing, first.pixel_spacing, rtol=SPACING_RTOL, atol=0)
        ):
            raise VolumeReadError(
                f"{where} has slices of inconsistent pixel spacing: {first.name} {first.pixel_spacing}, "
                f"{header.name} {header.pixel_spacing}"
            )


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _axes(header: SliceHeader) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit vectors along a row (column index), along a column (row index) and the slice normal."""
    along_row = np.asarray(header.orientation[:3], dtype=np.float64)
    along_col = np.asarray(header.orientation[3:], dtype=np.float64)
    along_row /= np.linalg.norm(along_row)
    along_col /= np.linalg.norm(along_col)
    normal = np.cross(along_row, along_col)
    return along_row, along_col, normal / np.linalg.norm(normal)


def _drop_duplicates(order: list[SliceHeader], distance: np.ndarray, where: str, notes: list[str]
                     ) -> tuple[list[SliceHeader], np.ndarray]:
    kept, kept_d, copies = [order[0]], [distance[0]], []
    for header, d in zip(order[1:], distance[1:]):
        if abs(d - kept_d[-1]) > POSITION_TOL:
            kept.append(header)
            kept_d.append(d)
            continue
        other = kept[-1]
        if header.sop_instance_uid and header.sop_instance_uid == other.sop_instance_uid:
            copies.append(f"{header.name} = {other.name}")
            continue
        raise VolumeReadError(
            f"{where} has two different images at one position ({d:.3f} mm along the slice normal): "
            f"{other.name} and {header.name} (two acquisitions or echoes in one series?); remove one of them"
        )
    if copies:
        notes.append(f"{len(copies)} duplicated file(s) of one image ignored ({', '.join(copies[:3])})")
    return kept, np.asarray(kept_d)


def _check_shear(slices: list[SliceHeader], normal: np.ndarray, where: str) -> None:
    positions = np.asarray([h.position for h in slices], dtype=np.float64)
    offsets = positions - positions[0]
    sideways = offsets - np.outer(offsets @ normal, normal)
    drift = np.linalg.norm(sideways, axis=1)
    worst = int(np.argmax(drift))
    pixel = min(slices[0].pixel_spacing or (1.0, 1.0))
    if drift[worst] > max(SHEAR_TOL, SHEAR_PIXEL_FRACTION * pixel):
        along = abs(float(offsets[worst] @ normal))
        tilt = float(np.degrees(np.arctan2(drift[worst], along))) if along > 0 else 90.0
        raise VolumeReadError(
            f"{where} is sheared: slice {slices[worst].name} sits {drift[worst]:.2f} mm sideways of the slice "
            f"normal through {slices[0].name} (a tilt of {tilt:.1f} degrees, as with gantry tilt). A label map on "
            "an orthogonal grid would be misplaced, so it is not read; resample the series onto an orthogonal "
            "grid first (e.g. dcm2niix corrects gantry tilt)"
        )


def _step_for(slices: list[SliceHeader]) -> float:
    """Slice spacing of a one-slice series: SpacingBetweenSlices or SliceThickness when readable, else 1 mm."""
    import pydicom

    try:
        ds = pydicom.dcmread(slices[0].path, stop_before_pixels=True)
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = ds.get(keyword)
            if value not in (None, "") and float(value) > 0:
                return float(value)
    except Exception:  # a header value we cannot parse: the default below is stated in the docstring
        pass
    return 1.0


def plan_series(info: DicomSeriesInfo, folder: str) -> SeriesLayout:
    """Validate ``info`` and decide the regular grid (see the module docstring). Reads headers only.

    Raises:
        VolumeReadError: missing pixel data or position, mixed modalities, inconsistent sizes,
            orientation or pixel spacing, two different images at one position, a sheared series.
    """
    where = _where(folder, info)
    _check_consistent(info, folder)
    along_row, along_col, normal = _axes(info.headers[0])
    distance = np.asarray([np.dot(h.position, normal) for h in info.headers])
    order_index = np.argsort(distance, kind="stable")
    notes: list[str] = []
    slices, distance = _drop_duplicates([info.headers[i] for i in order_index], distance[order_index], where, notes)
    _check_shear(slices, normal, where)

    rows_mm, cols_mm = slices[0].pixel_spacing or (1.0, 1.0)
    direction_itk = np.stack([along_row, along_col, normal], axis=1)  # columns: x (col), y (row), z (plane)
    origin = tuple(float(v) for v in np.asarray(slices[0].position)[::-1])
    if len(slices) == 1:
        step = _step_for(slices)
        return SeriesLayout(slices, list(slices), {}, (step, float(rows_mm), float(cols_mm)), origin,
                            direction_itk[::-1, ::-1].copy(), notes)

    gaps = np.diff(distance)
    step = float(np.median(gaps))
    tolerance = max(POSITION_TOL, STEP_RTOL * step)
    irregular = np.flatnonzero(np.abs(gaps - step) > tolerance)
    if irregular.size == 0:
        spacing = float((distance[-1] - distance[0]) / (len(slices) - 1))
        return SeriesLayout(slices, list(slices), {}, (spacing, float(rows_mm), float(cols_mm)), origin,
                            direction_itk[::-1, ::-1].copy(), notes)

    extent = float(distance[-1] - distance[0])
    count = int(round(extent / step)) + 1
    grid_step = extent / (count - 1)
    grid = distance[0] + grid_step * np.arange(count)
    sources: list[Optional[SliceHeader]] = []
    between: dict[int, tuple[int, int, float]] = {}
    for k, position in enumerate(grid):
        nearest = int(np.argmin(np.abs(distance - position)))
        if abs(distance[nearest] - position) <= tolerance:
            sources.append(slices[nearest])
            continue
        upper = int(np.searchsorted(distance, position))
        lower = upper - 1
        weight = float((position - distance[lower]) / (distance[upper] - distance[lower]))
        sources.append(None)
        between[k] = (lower, upper, weight)
    described = ", ".join(
        f"slices {i}–{i + 1} ({slices[i].name}, {slices[i + 1].name}) are {gaps[i]:.3g} mm apart"
        for i in irregular[:3]
    ) + (f" and {irregular.size - 3} more gaps" if irregular.size > 3 else "")
    interpolated = sorted(between)
    message = (
        f"{where}: {described}, the others {step:.3g} mm (slices numbered from 0 in position order). "
        f"Read onto a regular {grid_step:.4g} mm grid at the slices' true positions; "
        + (f"{len(interpolated)} plane(s) ({', '.join(map(str, interpolated[:6]))}"
           f"{', ...' if len(interpolated) > 6 else ''}) interpolated between their neighbours"
           if interpolated else "no plane interpolated, but planes not on the grid were moved to it")
    )
    if any(s is not None and abs(np.dot(s.position, normal) - g) > POSITION_TOL for s, g in zip(sources, grid)):
        message += "; some slices lie off the grid by more than 0.01 mm and were snapped to it"
    notes.append(message)
    return SeriesLayout(slices, sources, between, (grid_step, float(rows_mm), float(cols_mm)), origin,
                        direction_itk[::-1, ::-1].copy(), notes)


def _read_pixels(header: SliceHeader, where: str) -> np.ndarray:
    """(rows, cols) real values of one file, its own rescale applied (GDCM decodes any transfer syntax)."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(header.path, imageIO="GDCMImageIO")
    except RuntimeError as exc:
        raise VolumeReadError(f"{header.path}: cannot decode the pixels of this DICOM file of {where} "
                              f"({str(exc).strip().splitlines()[-1]})") from exc
    array = sitk.GetArrayFromImage(image)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeReadError(f"{header.path}: colour DICOM slices are not supported in a series ({where})")
    return array.reshape(array.shape[-2:])


def _output_dtype(planes: list[np.ndarray]) -> np.dtype:
    if all(p.dtype.kind in "iu" for p in planes):
        low = min(int(p.min()) for p in planes)
        high = max(int(p.max()) for p in planes)
        for dtype in (np.int16, np.int32):
            if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max:
                return np.dtype(dtype)
        return np.dtype(np.float64)
    return np.dtype(np.float32)


def read_series(info: DicomSeriesInfo, folder: str) -> tuple[np.ndarray, SeriesLayout]:
    """Validate and read ``info``: the (plane, row, col) array on the regular grid and its layout.

    Integer values (after rescale) that fit int16 come back as int16 (CT in HU), else int32;
    non-integer values as float32. Interpolated planes of integer data are rounded.
    Each note of the layout (irregular spacing, duplicates) is also issued as a UserWarning.
    """
    layout = plan_series(info, folder)
    where = _where(folder, info)
    planes = [_read_pixels(h, where) for h in layout.slices]
    dtype = _output_dtype(planes)
    index_of = {id(h): i for i, h in enumerate(layout.slices)}
    volume = np.empty((len(layout.sources), *planes[0].shape), dtype=dtype)
    for k, source in enumerate(layout.sources):
        if source is not None:
            volume[k] = planes[index_of[id(source)]]
            continue
        lower, upper, weight = layout.between[k]
        mixed = (1.0 - weight) * planes[lower].astype(np.float64) + weight * planes[upper].astype(np.float64)
        volume[k] = np.rint(mixed) if dtype.kind in "iu" else mixed
    for note in layout.notes:
        warnings.warn(note if note.startswith(str(folder)) else f"{where}: {note}", UserWarning, stacklevel=4)
    return volume, layout


def layout_metadata(info: DicomSeriesInfo, layout: SeriesLayout, n_series: int) -> dict:
    """What a :class:`Volume` keeps of its DICOM source (for DICOM-SEG export and the reader's notes)."""
    first = layout.slices[0]
    return {
        "format": "DICOM",
        "dicom_series_uid": info.uid,
        "dicom_series_description": info.description,
        "dicom_study_uid": first.study_uid,
        "dicom_frame_of_reference_uid": first.frame_of_reference_uid,
        "dicom_n_slices": len(layout.slices),
        "dicom_n_series_in_folder": n_series,
        "dicom_files": [h.path for h in layout.slices],
        "dicom_plane_files": [None if h is None else h.path for h in layout.sources],
        "dicom_plane_sop_instance_uids": [None if h is None else h.sop_instance_uid for h in layout.sources],
        "dicom_interpolated_planes": sorted(layout.between),
        "dicom_notes": list(layout.notes),
    }

