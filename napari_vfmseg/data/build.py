"""Generate the sample files (images + label maps) from the seeded phantoms, atomically.

Used by ``scripts/make_sample_data.py`` to refresh the repository's ``sample_data/`` and by
:func:`napari_vfmseg.data.sample_paths` to fill a per-user cache when the package is installed
without that folder. Every file is first written under a temporary name in the destination
folder and then moved into place with ``os.replace``: an interrupted run leaves no half-written
sample behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk

from napari_vfmseg.data.catalog import SAMPLES, SampleInfo
from napari_vfmseg.data.phantoms import make_abdomen_ct, make_brain_mr
from napari_vfmseg.data.ultrasound import make_ultrasound_2d

__all__ = ["generate_sample", "stored_image", "write_sample", "write_all_samples"]

_GENERATORS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray, dict[str, Any]]]] = {
    "abdomen_ct": make_abdomen_ct,
    "brain_mr": make_brain_mr,
    "ultrasound_2d": make_ultrasound_2d,
}


def _info(name: str) -> SampleInfo:
    try:
        return SAMPLES[name]
    except KeyError:
        raise ValueError(f"unknown sample {name!r}; available: {', '.join(SAMPLES)}") from None


def generate_sample(name: str, seed: int | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Run the generator of sample ``name`` at its shipped shape (seed defaults to the shipped one).

    Returns:
        (image, labels, meta) exactly as the phantom function returns them (float image).
    """
    info = _info(name)
    return _GENERATORS[name](seed=info.seed if seed is None else seed, shape=info.shape)


def stored_image(name: str, image: np.ndarray) -> np.ndarray:
    """The image values as they are stored on disk: HU rounded to integers for the CT (DICOM
    int16 with RescaleIntercept -1024), int16 for the MR, uint8 for the ultrasound PNG."""
    info = _info(name)
    if info.image_format == "png":
        return np.asarray(image, dtype=np.uint8)
    return np.rint(np.asarray(image, dtype=np.float64)).astype(np.int16)


def _itk_image(array: np.ndarray, meta: dict[str, Any]) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    if array.ndim == 3:
        direction = np.asarray(meta["direction"], dtype=np.float64)
        image.SetSpacing(tuple(float(v) for v in meta["spacing"][::-1]))
        image.SetOrigin(tuple(float(v) for v in meta["origin"][::-1]))
        image.SetDirection(tuple(float(v) for v in direction[::-1, ::-1].ravel()))
    return image


def _write_file_atomically(image: sitk.Image, out: Path) -> None:
    """Write with SimpleITK under a temporary name in ``out``'s folder, then ``os.replace``."""
    suffix = "".join(out.suffixes) or out.suffix
    handle, staged = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent)
    os.close(handle)
    try:
        sitk.WriteImage(image, staged, useCompression=suffix.endswith(".gz"))
        os.chmod(staged, 0o644)  # mkstemp creates 0600; samples are ordinary readable files
        os.replace(staged, out)
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise


def _write_dicom_atomically(folder: Path, hu: np.ndarray, meta: dict[str, Any], info: SampleInfo) -> None:
    """Write a DICOM series into a temporary sibling folder, then swap it in for ``folder``."""
    from napari_vfmseg.io.dicom import write_dicom_series

    staged = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write_dicom_series(
            staged,
            hu,
            meta["spacing"],
            meta["origin"],
            meta["direction"],
            modality=info.modality,
            rescale_intercept=-1024.0,
            rescale_slope=1.0,
            series_description=f"napari-vfmseg {info.name} phantom (synthetic, seed {info.seed})",
            patient_name="VFMSEG^PHANTOM",
            seed=info.seed,
        )
        os.chmod(staged, 0o755)  # mkdtemp creates 0700
        old = None
        if folder.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
            os.replace(folder, old / folder.name)
        os.replace(staged, folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def write_sample(name: str, folder: str | os.PathLike) -> tuple[Path, Path]:
    """Generate sample ``name`` (its shipped seed and shape) and write its files into ``folder``.

    Returns:
        (image path, labels path); the image path is a folder for the DICOM series.
    """
    from napari_vfmseg.io.writer import write_labels

    info = _info(name)
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    image, labels, meta = generate_sample(name)
    stored = stored_image(name, image)
    image_path, labels_path = root / info.image, root / info.labels

    if info.image_format == "dicom-series":
        _write_dicom_atomically(image_path, stored, meta, info)
    else:
        _write_file_atomically(_itk_image(stored, meta), image_path)

    if info.image_format == "png":
        _write_file_atomically(_itk_image(labels.astype(np.uint8), meta), labels_path)
    else:
        write_labels(labels_path, labels, spacing=meta["spacing"], origin=meta["origin"], direction=meta["direction"])
    return image_path, labels_path


def write_all_samples(folder: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
    """Write every sample in :data:`SAMPLES` into ``folder``; returns name → (image, labels)."""
    return {name: write_sample(name, folder) for name in SAMPLES}
