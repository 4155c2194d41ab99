"""DICOM headers of a folder: one :class:`SliceHeader` per file, grouped into image series.

Headers are read with pydicom (pixel data deferred, never decoded here). A file is an image of a
series when it has Rows and Columns and is not a DICOM Segmentation; the other DICOM objects found
in PACS exports (structured reports, presentation states, DICOMDIR, segmentations) are set aside
and never mixed into a series. Series are keyed by SeriesInstanceUID.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from napari_vfmseg.io.errors import VolumeReadError

__all__ = [
    "SliceHeader",
    "DicomSeriesInfo",
    "SEGMENTATION_SOP_CLASS",
    "read_header",
    "scan_folder",
    "list_dicom_series",
    "choose_series",
    "looks_like_dicom_file",
    "folder_has_dicom",
]

SEGMENTATION_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_DICM_MAGIC_OFFSET = 128


@dataclass(frozen=True)
class SliceHeader:
    """What the series checks need from one file (DICOM patient coordinates, LPS, mm).

    ``orientation`` is ImageOrientationPatient: the direction along a row of pixels, then along a
    column. ``pixel_spacing`` is PixelSpacing: (between rows, between columns).
    """

    path: str
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: Optional[str]
    description: str
    rows: Optional[int]
    cols: Optional[int]
    orientation: Optional[tuple[float, ...]]
    position: Optional[tuple[float, float, float]]
    pixel_spacing: Optional[tuple[float, float]]
    rescale: tuple[float, float]
    instance_number: Optional[int]
    n_frames: int
    has_pixels: bool

    @property
    def name(self) -> str:
        return Path(self.path).name

    @property
    def is_segmentation(self) -> bool:
        return self.sop_class_uid == SEGMENTATION_SOP_CLASS

    @property
    def is_image(self) -> bool:
        """An image slice: Rows and Columns, not a segmentation (its pixel data may still be missing:
        the series checks name such a file instead of silently leaving a gap)."""
        return self.rows is not None and self.cols is not None and not self.is_segmentation


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One image series of a folder: UID, description, modality and its files' headers."""

    uid: str
    headers: tuple[SliceHeader, ...]
    description: str = ""
    modality: Optional[str] = None

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(h.path for h in self.headers)

    @property
    def n_slices(self) -> int:
        return len(self.headers)

    def label(self) -> str:
        """'UID (N slices, 'description')' for messages."""
        return f"{self.uid} ({self.n_slices} slices, {self.modality or 'no modality'}, {self.description!r})"


def looks_like_dicom_file(path: str | os.PathLike) -> bool:
    """True if ``path`` has a .dcm extension or the 'DICM' magic at byte 128 (reads 132 bytes)."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix.lower() == ".dcm":
        return True
    try:
        with open(p, "rb") as handle:
            head = handle.read(_DICM_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return head[_DICM_MAGIC_OFFSET:] == b"DICM"


def folder_has_dicom(folder: str | os.PathLike, max_files: int = 64) -> bool:
    """True if one of the first ``max_files`` files in ``folder`` looks like DICOM."""
    p = Path(folder)
    if not p.is_dir():
        return False
    try:
        entries = sorted(os.scandir(p), key=lambda e: e.name)
    except OSError:
        return False
    checked = 0
    for entry in entries:
        if not entry.is_file() or entry.name.startswith("."):
            continue
        if looks_like_dicom_file(entry.path):
            return True
        checked += 1
        if checked >= max_files:
            break
    return False


def _floats(value, count: int) -> Optional[tuple[float, ...]]:
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def read_header(path: str | os.PathLike) -> SliceHeader:
    """The header facts of one DICOM file (pixel data not decoded).

    Raises:
        VolumeReadError: the file is not a readable DICOM file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    failures = (InvalidDicomError, OSError, ValueError, EOFError, KeyError, IndexError, TypeError, AttributeError)
    try:
        ds = pydicom.dcmread(str(path), defer_size="2 KB", force=False)
    except InvalidDicomError as exc:
        # older exports omit the 128-byte preamble and 'DICM': read the data set itself, and accept it
        # only if it names an instance
        try:
            ds = pydicom.dcmread(str(path), defer_size="2 KB", force=True)
            if "SOPInstanceUID" not in ds:
                raise InvalidDicomError("no DICOM preamble and no SOP Instance UID")
        except failures as again:
            raise VolumeReadError(f"{path}: not a readable DICOM file ({again})") from exc
    except failures as exc:
        raise VolumeReadError(f"{path}: not a readable DICOM file ({exc})") from exc
    try:
        rescale = (float(ds.get("RescaleSlope", 1.0) or 1.0), float(ds.get("RescaleIntercept", 0.0) or 0.0))
        number = ds.get("InstanceNumber")
        frames = ds.get("NumberOfFrames")
        return SliceHeader(
            path=str(path),
            sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
            sop_class_uid=str(ds.get("SOPClassUID", "")),
            series_uid=str(ds.get("SeriesInstanceUID", "")),
            study_uid=str(ds.get("StudyInstanceUID", "")),
            frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "")),
            modality=(str(ds.get("Modality", "")).strip() or None),
            description=str(ds.get("SeriesDescription", "")),
            rows=None if ds.get("Rows") is None else int(ds.Rows),
            cols=None if ds.get("Columns") is None else int(ds.Columns),
            orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
            pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
            rescale=rescale,
            instance_number=None if number in (None, "") else int(number),
            n_frames=1 if frames in (None, "") else int(frames),
            has_pixels=any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")),
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise VolumeReadError(f"{path}: DICOM header has an invalid value ({exc})") from exc


def scan_folder(folder: str | os.PathLike) -> tuple[list[SliceHeader], list[str]]:
    """Headers of the DICOM files directly in ``folder``, and messages for files that could not be read."""
    headers: list[SliceHeader] = []
    unreadable: list[str] = []
    for entry in sorted(Path(folder).iterdir()):
        if entry.name.startswith(".") or not looks_like_dicom_file(entry):
            continue
        try:
            headers.append(read_header(entry))
        except VolumeReadError as exc:
            unreadable.append(str(exc))
    return headers, unreadable


def list_dicom_series(folder: str | os.PathLike) -> list[DicomSeriesInfo]:
    """The image series directly inside ``folder``, largest first.

    Raises:
        VolumeReadError: the folder holds no image series; the message says what was found instead
            (unreadable files, files without pixel data, segmentations).
    """
    headers, unreadable = scan_folder(folder)
    images = [h for h in headers if h.is_image and h.series_uid]
    if not any(h.has_pixels for h in images):
        found = []
        if unreadable:
            found.append(f"{len(unreadable)} unreadable file(s), e.g. {unreadable[0]}")
        no_pixels = [h.name for h in headers if not h.has_pixels]
        if no_pixels:
            found.append(f"{len(no_pixels)} file(s) without pixel data ({', '.join(no_pixels[:3])})")
        segs = [h.name for h in headers if h.is_segmentation]
        if segs:
            found.append(f"{len(segs)} DICOM Segmentation(s) ({', '.join(segs[:3])}), which are labels, not scans")
        detail = f": {'; '.join(found)}" if found else ""
        raise VolumeReadError(f"{folder}: no DICOM series found in this folder{detail}")
    by_uid: dict[str, list[SliceHeader]] = {}
    for header in images:
        by_uid.setdefault(header.series_uid, []).append(header)
    series = []
    for uid, members in by_uid.items():
        if not any(h.has_pixels for h in members):
            continue  # e.g. a series of headers only: nothing to show
        first = members[0]
        series.append(DicomSeriesInfo(uid, tuple(members), first.description, first.modality))
    return sorted(series, key=lambda s: (-s.n_slices, s.uid))


def choose_series(series: Sequence[DicomSeriesInfo], series_uid: Optional[str], folder: str) -> DicomSeriesInfo:
    """The series with ``series_uid``, else the one with the most slices (``series`` is largest first)."""
    if series_uid is not None:
        for info in series:
            if info.uid == series_uid:
                return info
        available = ", ".join(s.label() for s in series)
        raise VolumeReadError(f"{folder}: no DICOM series with UID {series_uid}; available: {available}")
    return series[0]
