"""DICOM Segmentation (DICOM-SEG) export and import with highdicom, aligned with the source series.

A label map drawn on a volume read from a DICOM series folder is written as one SEG instance that
references the source series (study, series, SOP instances, frame of reference): one segment per
label value, named, with the model and adapter that produced it as its algorithm identification.
Frame ``k`` of the SEG lies exactly on source slice ``k`` (same ImagePositionPatient and
orientation), so PACS viewers overlay it where it was drawn.

Label values survive the round trip: segment numbers run 1..n as DICOM requires, and each
segment's TrackingID "vfmseg label V" keeps the original value V. Planes of a volume that were
interpolated over a missing slice (see :mod:`.dicom_series`) have no source image; labels drawn
on them cannot be stored and are dropped with a warning.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Optional, Union

import numpy as np

from napari_vfmseg.io.atomic import atomic_path
from napari_vfmseg.io.dicom_headers import SEGMENTATION_SOP_CLASS, folder_has_dicom, looks_like_dicom_file
from napari_vfmseg.io.errors import LabelWriteError, VolumeReadError
from napari_vfmseg.io.volume import Volume

__all__ = ["write_dicom_seg", "read_segmentation", "is_dicom_seg", "find_source_folder"]

_TRACKING = re.compile(r"^vfmseg label (\d+)$")


def is_dicom_seg(path: Union[str, os.PathLike]) -> bool:
    """True when ``path`` is a DICOM file whose SOP class is Segmentation Storage (reads the header only)."""
    import pydicom

    p = Path(path)
    if not p.is_file():
        return False
    try:
        ds = pydicom.dcmread(str(p), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # not DICOM at all: the answer is simply no
        return False
    return str(ds.get("SOPClassUID", "")) == SEGMENTATION_SOP_CLASS


def _source_datasets(like: Volume, out: Path) -> tuple[list, list[int]]:
    """The pydicom datasets of the source slices in plane order, and the planes they belong to."""
    import pydicom

    plane_files = like.metadata.get("dicom_plane_files")
    if like.metadata.get("format") != "DICOM" or not plane_files:
        source = like.path or "the source volume"
        raise LabelWriteError(
            f"{out}: a DICOM-SEG references the DICOM series it was drawn on, but {source} was not read from a "
            "DICOM series folder; save the labels as .nii.gz, .nrrd or .mha instead"
        )
    if len(plane_files) != like.spatial_shape[0]:
        raise LabelWriteError(f"{out}: the source's DICOM file list ({len(plane_files)} planes) does not match "
                              f"its {like.spatial_shape[0]} planes")
    datasets, planes = [], []
    for plane, name in enumerate(plane_files):
        if name is None:
            continue
        try:
            datasets.append(pydicom.dcmread(name, stop_before_pixels=True))  # highdicom needs headers only
        except (OSError, ValueError) as exc:
            raise LabelWriteError(f"{out}: cannot read the source slice {name} ({exc})") from exc
        planes.append(plane)
    return datasets, planes


def write_dicom_seg(
    path: Union[str, os.PathLike],
    labels: np.ndarray,
    like: Volume,
    *,
    names: Optional[Mapping[int, str]] = None,
    model: Optional[str] = None,
    adapter: Optional[str] = None,
    series_description: str = "vfmseg segmentation",
) -> str:
    """Write ``labels`` (plane, row, col) of the DICOM-sourced volume ``like`` as a DICOM-SEG file.

    Args:
        path: the .dcm file to write (atomically).
        labels: non-negative integers, shape ``like.spatial_shape``; 0 is background.
        like: a Volume read from a DICOM series folder (its metadata names the source files).
        names: label value → segment name (default "object V").
        model, adapter: the model (and adapter) that produced the labels; with ``model`` the segments
            are SEMIAUTOMATIC with that algorithm identification, without it MANUAL.

    Returns:
        The written path.

    Raises:
        LabelWriteError: the source is not a DICOM series or its files are gone, shape mismatch,
            negative or non-integer labels, no object to store.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from napari_vfmseg.io.writer import checked_labels

    out = Path(path)
    values = checked_labels(np.asarray(labels), out)
    if values.shape != like.spatial_shape or values.ndim != 3:
        raise LabelWriteError(f"{out}: labels shape {values.shape} does not match the DICOM series' shape "
                              f"{like.spatial_shape} (from {like.path})")
    datasets, planes = _source_datasets(like, out)
    dropped = [p for p in range(values.shape[0]) if p not in set(planes) and values[p].any()]
    if dropped:
        warnings.warn(f"{out}: planes {dropped} were interpolated over missing slices of {like.path}; DICOM-SEG "
                      "can only store labels on the source's own slices, so theirs are left out", UserWarning,
                      stacklevel=2)
    kept = values[planes]
    objects = [int(v) for v in np.unique(kept) if v > 0]
    if not objects:
        raise LabelWriteError(f"{out}: the labels hold no object on the source's slices; nothing to export")
    number_of = {value: i + 1 for i, value in enumerate(objects)}
    lookup = np.zeros(max(objects) + 1, dtype=np.uint16)
    for value, number in number_of.items():
        lookup[value] = number
    segment_map = lookup[kept]

    if model:
        algorithm = hd.AlgorithmIdentificationSequence(
            name=str(model), family=codes.cid7162.ArtificialIntelligence, version=str(adapter or "no adapter"))
        kind = hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC
    else:
        algorithm, kind = None, hd.seg.SegmentAlgorithmTypeValues.MANUAL
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number_of[value],
            segment_label=str((names or {}).get(value, f"object {value}"))[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=kind,
            algorithm_identification=algorithm,
            tracking_id=f"vfmseg label {value}",
            tracking_uid=hd.UID(),
        )
        for value in objects
    ]
    from napari_vfmseg import __version__

    try:
        seg = hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=segment_map,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=900,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="napari-vfmseg",
            manufacturer_model_name=str(model or "manual"),
            software_versions=str(__version__),
            device_serial_number="0",
            series_description=series_description[:64],
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise LabelWriteError(f"{out}: highdicom cannot build a DICOM-SEG from {like.path} ({exc})") from exc
    with atomic_path(out) as temporary:
        seg.save_as(str(temporary))
    return str(out)


def find_source_folder(seg_path: Path, series_uid: str) -> Path:
    """The folder holding series ``series_uid``: the SEG's own folder, one of its subfolders or its siblings."""
    folder = seg_path.parent
    candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
    if folder.parent != folder:
        candidates += sorted(p for p in folder.parent.iterdir() if p.is_dir() and p != folder)
    for candidate in candidates:
        if folder_has_dicom(candidate) and _holds_series(candidate, series_uid):
            return candidate
    raise VolumeReadError(
        f"{seg_path}: its source DICOM series {series_uid} is not in {folder}, its subfolders or the folders "
        "beside it; give the folder of the scan it was drawn on (source=)"
    )


def _holds_series(folder: Path, series_uid: str) -> bool:
    """True when an image file of ``folder`` belongs to ``series_uid`` (reads two tags per file)."""
    import pydicom

    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not looks_like_dicom_file(entry):
            continue
        try:
            ds = pydicom.dcmread(str(entry), stop_before_pixels=True,
                                 specific_tags=["SeriesInstanceUID", "SOPClassUID"])
        except Exception:  # unreadable files are not the source; the reader reports them if chosen
            continue
        is_image = str(ds.get("SOPClassUID", "")) != SEGMENTATION_SOP_CLASS
        if is_image and str(ds.get("SeriesInstanceUID", "")) == series_uid:
            return True
    return False


def read_segmentation(path: Union[str, os.PathLike], source: Union[str, os.PathLike, Volume, None] = None
                      ) -> tuple[Volume, Volume]:
    """Read a DICOM-SEG as a label Volume on the grid of its source series.

    Args:
        path: the SEG file.
        source: the source series as a folder or an already read Volume; by default it is looked
            for beside the SEG (:func:`find_source_folder`).

    Returns:
        (labels, source): labels (plane, row, col) uint8/16/32 with the original label values and
        exactly the source's spacing, origin and direction; ``labels.metadata["label_names"]``
        maps values to segment names.

    Raises:
        VolumeReadError: not a SEG, its source series cannot be found or is another series.
    """
    import highdicom as hd

    from napari_vfmseg.io.reader import read_volume
    from napari_vfmseg.io.writer import label_dtype

    seg_path = Path(path)
    if not is_dicom_seg(seg_path):
        raise VolumeReadError(f"{seg_path}: not a DICOM Segmentation file")
    try:
        seg = hd.seg.segread(str(seg_path))
    except Exception as exc:  # highdicom raises many kinds for malformed files; all mean "unreadable"
        raise VolumeReadError(f"{seg_path}: cannot read this DICOM-SEG ({exc})") from exc
    series_uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    if source is None:
        source = find_source_folder(seg_path, series_uid)
    volume = source if isinstance(source, Volume) else read_volume(source, series=series_uid)
    if volume.metadata.get("dicom_series_uid") != series_uid:
        raise VolumeReadError(f"{seg_path}: drawn on series {series_uid}, but the source given is series "
                              f"{volume.metadata.get('dicom_series_uid')} ({volume.path})")
    plane_uids = volume.metadata["dicom_plane_sop_instance_uids"]
    planes = [k for k, uid in enumerate(plane_uids) if uid is not None]
    numbers = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[plane_uids[k] for k in planes], combine_segments=True, relabel=False,
        assert_missing_frames_are_empty=True)
    value_of, label_names = {}, {}
    for number in seg.get_segment_numbers():
        description = seg.get_segment_description(number)
        match = _TRACKING.match(str(description.tracking_id or ""))
        value_of[number] = int(match.group(1)) if match else int(number)
        label_names[value_of[number]] = str(description.segment_label)
    lookup = np.zeros(max(value_of) + 1, dtype=np.int64)
    for number, value in value_of.items():
        lookup[number] = value
    top = max(value_of.values())
    labels = np.zeros(volume.spatial_shape, dtype=label_dtype(np.asarray([top])))
    labels[planes] = lookup[np.asarray(numbers, dtype=np.int64)]
    result = Volume(array=labels, spacing=volume.spacing, origin=volume.origin, direction=volume.direction,
                    path=str(seg_path), modality="SEG",
                    metadata={"format": "DICOM-SEG", "label_names": label_names, "source": volume.path,
                              "dicom_series_uid": series_uid})
    return result, volume
