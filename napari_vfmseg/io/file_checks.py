"""Header checks SimpleITK does not make: truncated NIfTI data, invalid NIfTI spacing, and
detached data files (NRRD ``data file``, MetaImage ``ElementDataFile``) outside the header's folder.

SimpleITK reads a truncated .nii/.nii.gz without an error and fills the missing voxels with
zeros; it reads a NIfTI whose pixdim holds 0 or NaN by taking the spacing from the qform/sform,
which other tools do not do; and it follows a detached header's data path anywhere on the disk.
Each check raises :class:`VolumeReadError` naming the file and the problem.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from napari_vfmseg.io.errors import VolumeReadError

__all__ = ["check_nifti", "check_detached_data_file"]


def check_nifti(path: Path, compressed: bool) -> None:
    """Complete data and a valid spacing, from the header of a .nii or .nii.gz file."""
    head = _gunzip_head(path, 540) if compressed and _is_gzip(path) else path.read_bytes()[:540]
    _check_nifti_spacing(head, path)
    _check_nifti_complete(path, compressed)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(2) == b"\x1f\x8b"


def _check_nifti_spacing(header: bytes, path: Path) -> None:
    """pixdim of every spatial axis must be finite and positive; the sform, when used, finite."""
    if len(header) < 348:
        return  # too short: _nifti_needed_bytes reports it
    for endian in ("<", ">"):
        sizeof_hdr = struct.unpack_from(endian + "i", header, 0)[0]
        if sizeof_hdr == 348:
            ndim = struct.unpack_from(endian + "h", header, 40)[0]
            pixdim = struct.unpack_from(endian + "8f", header, 76)
            sform_code = struct.unpack_from(endian + "h", header, 254)[0]
            srow = struct.unpack_from(endian + "12f", header, 280)
            break
        if sizeof_hdr == 540 and len(header) >= 540:
            ndim = struct.unpack_from(endian + "q", header, 16)[0]
            pixdim = struct.unpack_from(endian + "8d", header, 104)
            sform_code = struct.unpack_from(endian + "i", header, 348)[0]
            srow = struct.unpack_from(endian + "12d", header, 400)
            break
    else:
        return  # not NIfTI: _nifti_needed_bytes reports it
    spatial = [float(v) for v in pixdim[1 : 1 + min(max(int(ndim), 0), 3)]]
    bad = [(axis, v) for axis, v in enumerate(spatial, start=1) if not (np.isfinite(v) and v > 0)]
    if bad:
        listing = ", ".join(f"pixdim[{axis}] = {v:g}" for axis, v in bad)
        raise VolumeReadError(
            f"{path}: NIfTI header has an invalid voxel spacing ({listing}); spacing must be a positive number "
            "of mm on every axis, so this file's geometry cannot be trusted"
        )
    if sform_code > 0 and not all(np.isfinite(v) for v in srow):
        raise VolumeReadError(f"{path}: NIfTI header's sform (voxel → patient matrix) holds NaN or infinite values")


def check_detached_data_file(path: Path, fmt: str) -> None:
    """A .nhdr / .mhd header's data files must sit in the header's folder or below it."""
    try:
        with open(path, "rb") as handle:
            text = handle.read(64 * 1024).decode("latin-1")
    except OSError as exc:
        raise VolumeReadError(f"{path}: cannot read the header ({exc.strerror or exc})") from exc
    folder = path.parent.resolve()
    for name in _data_file_names(text, fmt):
        target = Path(name) if os.path.isabs(name) else path.parent / name
        resolved = target.resolve()
        if resolved != folder and folder not in resolved.parents:
            raise VolumeReadError(
                f"{path}: the header's data file {name!r} lies outside the header's folder ({folder}); "
                "vfmseg reads detached data only from the header's own folder or below it"
            )
        if not resolved.is_file():
            raise VolumeReadError(f"{path}: the header's data file {name!r} does not exist")


def _data_file_names(text: str, fmt: str) -> list[str]:
    """The data file paths a NRRD or MetaImage header names (none when the data is inline)."""
    lines = text.splitlines()
    if fmt == "NRRD":
        for i, line in enumerate(lines):
            key, _, value = line.partition(":")
            if key.strip().lower() in ("data file", "datafile") and value.strip():
                value = value.strip()
                if value.upper().startswith("LIST"):
                    return [entry.strip() for entry in lines[i + 1 :] if entry.strip()]
                parts = value.split()
                if len(parts) >= 4 and "%" in parts[0]:  # "name%03d.raw min max step"
                    first, last, step = (int(p) for p in parts[1:4])
                    return [parts[0] % k for k in range(first, last + (1 if step > 0 else -1), step or 1)]
                return [value]
        return []
    for line in lines:  # MetaImage
        key, _, value = line.partition("=")
        if key.strip() == "ElementDataFile":
            value = value.strip()
            if value.upper() in ("LOCAL", "") or value.upper().startswith("LIST"):
                return []
            return [value]
    return []



def _nifti_needed_bytes(header: bytes, path: Path) -> int:
    """vox_offset + voxel bytes that a NIfTI-1/2 header announces."""
    if len(header) < 348:
        raise VolumeReadError(f"{path}: NIfTI file is shorter than its header ({len(header)} bytes)")
    for endian in ("<", ">"):
        sizeof_hdr = struct.unpack_from(endian + "i", header, 0)[0]
        if sizeof_hdr == 348:
            dims = struct.unpack_from(endian + "8h", header, 40)
            bitpix = struct.unpack_from(endian + "h", header, 72)[0]
            vox_offset = int(struct.unpack_from(endian + "f", header, 108)[0])
            break
        if sizeof_hdr == 540:
            if len(header) < 540:
                raise VolumeReadError(f"{path}: NIfTI-2 file is shorter than its header ({len(header)} bytes)")
            bitpix = struct.unpack_from(endian + "h", header, 14)[0]
            dims = struct.unpack_from(endian + "8q", header, 16)
            vox_offset = struct.unpack_from(endian + "q", header, 168)[0]
            break
    else:
        raise VolumeReadError(f"{path}: not a NIfTI file (header size field is neither 348 nor 540)")
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise VolumeReadError(f"{path}: NIfTI header has an invalid number of dimensions ({ndim})")
    shape = dims[1 : ndim + 1]
    if any(d <= 0 for d in shape):
        raise VolumeReadError(f"{path}: image has a zero-size dimension (NIfTI dims {tuple(shape)})")
    if bitpix <= 0 or bitpix % 8:
        raise VolumeReadError(f"{path}: NIfTI header has an invalid bitpix ({bitpix})")
    return max(vox_offset, sizeof_hdr) + int(np.prod(shape, dtype=np.int64)) * bitpix // 8


def _check_nifti_complete(path: Path, compressed: bool) -> None:
    """Raise if the file holds fewer bytes than its header needs (SimpleITK would pad with zeros).

    For .nii.gz the gzip trailer's ISIZE (uncompressed size mod 2**32) is compared with the header
    first; only when they disagree is the stream decompressed to count the bytes. A truncated
    stream ends in compressed data, so its last 4 bytes match by chance with probability 2**-32;
    a stream damaged in the middle fails SimpleITK's own CRC check.
    """
    with open(path, "rb") as handle:
        is_gzip = handle.read(2) == b"\x1f\x8b"
    if not (compressed and is_gzip):
        with open(path, "rb") as handle:
            header = handle.read(540)
        needed = _nifti_needed_bytes(header, path)
        present = path.stat().st_size
    else:
        needed = _nifti_needed_bytes(_gunzip_head(path, 540), path)
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            trailer_size = struct.unpack("<I", handle.read(4))[0]
        if trailer_size == needed % 2**32:
            return
        present = _gunzip_count(path)
    if present < needed:
        raise VolumeReadError(
            f"{path}: NIfTI file is truncated: its header announces {needed} bytes (header and voxels), "
            f"the data holds {present} ({100.0 * present / needed:.1f}%)"
        )


def _gunzip_head(path: Path, n_bytes: int) -> bytes:
    """The first ``n_bytes`` decompressed bytes (fewer if the stream is shorter)."""
    try:
        with gzip.open(path, "rb") as stream:
            return stream.read(n_bytes)
    except EOFError as exc:
        raise VolumeReadError(f"{path}: compressed file is truncated (the gzip stream ends early)") from exc
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise VolumeReadError(f"{path}: compressed file is corrupt ({exc})") from exc


def _gunzip_count(path: Path, chunk: int = 1 << 22) -> int:
    """Total decompressed size of a gzip file; raise if the stream is broken or ends early."""
    total = 0
    try:
        with gzip.open(path, "rb") as stream:
            while block := stream.read(chunk):
                total += len(block)
    except EOFError as exc:
        raise VolumeReadError(f"{path}: compressed file is truncated (the gzip stream ends early)") from exc
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise VolumeReadError(f"{path}: compressed file is corrupt ({exc})") from exc
    return total


