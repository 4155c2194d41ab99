"""Reference lung masks for the two real chest CT of ``fetch_real_cases.py`` (lung1, lung2).

    python scripts/lung_fields.py                 # writes lung1_lungs.nrrd, lung2_lungs.nrrd beside the cases

PyRadiomics' chest CT come with a nodule label only. The lungs are the largest objects a user of a
chest CT segments, and their reference can be derived from Hounsfield units without a model, the
classical way: the body is what is denser than -500 HU; the lungs are the air below -400 HU
inside it that does not touch the image border; vessels inside them are filled slice by slice;
the trachea and main bronchi (small pieces near the midline of an axial plane) are removed; the two lungs are told apart by 3D connected components, eroded until they part where the
airways join them. Labels: 1 = right lung (the patient's right, low x in LPS), 2 = left lung.

These are threshold references, not expert contours: they follow the pleura to a voxel but put
the hilum's large vessels and main bronchi where the threshold does. The same rule labels both
subjects, so an adapter trained on one and scored on the other meets a consistent definition.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _largest(mask: np.ndarray, count: int = 1) -> list[np.ndarray]:
    """The ``count`` largest 3D connected components of ``mask`` (largest first)."""
    from scipy import ndimage

    labelled, n = ndimage.label(mask)
    if n == 0:
        return []
    sizes = np.bincount(labelled.ravel())[1:]
    order = np.argsort(sizes)[::-1][:count]
    return [labelled == (k + 1) for k in order]


def _close(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary closing of ``mask`` that treats the volume's faces as continuing (nothing is eaten
    away at the first and last planes)."""
    from scipy import ndimage

    padded = np.pad(mask, iterations, mode="edge")
    closed = ndimage.binary_closing(padded, iterations=iterations)
    return closed[tuple(slice(iterations, -iterations) for _ in range(mask.ndim))]


def _fill_slices(mask: np.ndarray) -> np.ndarray:
    """``mask`` (planes, rows, cols) with the holes of every axial plane filled."""
    from scipy import ndimage

    return np.stack([ndimage.binary_fill_holes(plane) for plane in mask])


def _drop_airways(lungs: np.ndarray, body: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """``lungs`` without the trachea and main bronchi: in every axial plane, the small connected
    pieces (under 6 cm²) whose centre lies within 30 mm of the body's midline."""
    from scipy import ndimage

    kept = lungs.copy()
    area_mm2 = pixel_mm[0] * pixel_mm[1]
    for index, plane in enumerate(lungs):
        if not plane.any():
            continue
        midline = np.nonzero(body[index])[1].mean()
        labelled, count = ndimage.label(plane)
        for piece in range(1, count + 1):
            rows, cols = np.nonzero(labelled == piece)
            if rows.size * area_mm2 < 600 and abs(cols.mean() - midline) * pixel_mm[1] < 30:
                kept[index][labelled == piece] = False
    return kept


def lung_fields(hu: np.ndarray, pixel_mm: tuple[float, float] = (1.0, 1.0), direction_x_sign: float = 1.0) -> np.ndarray:
    """Right (1) and left (2) lung of a chest CT ``hu`` (planes, rows, cols), in Hounsfield units.

    ``pixel_mm`` is the in-plane spacing (row, col) in mm; ``direction_x_sign`` the sign of the
    image's column axis along LPS x (+1 when columns run to the patient's left, the usual DICOM
    orientation).
    """
    from scipy import ndimage

    body = _largest(hu > -500)[0]
    body = _fill_slices(_close(body, 2))
    air = (hu < -400) & body
    air[:, 0, :] = air[:, -1, :] = air[:, :, 0] = air[:, :, -1] = False
    lungs = np.zeros_like(air)
    for part in _largest(air, 3):
        if part.sum() > 0.05 * air.sum():
            lungs |= part
    lungs = _fill_slices(_close(lungs, 1))
    lungs = _drop_airways(lungs, body, pixel_mm)
    seeds: list[np.ndarray] = []
    eroded = lungs
    for _ in range(12):   # erode until the airways that join the lungs part
        parts = _largest(eroded, 2)
        if len(parts) == 2 and parts[1].sum() > 0.2 * parts[0].sum():
            seeds = parts
            break
        eroded = ndimage.binary_erosion(eroded, iterations=1)
    if not seeds:
        raise ValueError("the two lungs could not be separated")
    markers = np.zeros(lungs.shape, np.int32)
    columns = [np.nonzero(seed)[2].mean() for seed in seeds]
    first_is_right = (columns[0] < columns[1]) == (direction_x_sign > 0)
    for seed, value in zip(seeds, (1, 2) if first_is_right else (2, 1)):
        markers[seed] = value
    _, nearest = ndimage.distance_transform_edt(markers == 0, return_indices=True)
    grown = markers[tuple(nearest)]
    return np.where(lungs, grown, 0).astype(np.uint8)


def write_lung_fields(case: str, folder: Path | None = None) -> Path:
    """Derive and write ``<case>_lungs.nrrd`` (atomically) beside ``<case>_image.nrrd``; returns its path."""
    import SimpleITK as sitk

    from fetch_real_cases import case_paths

    image_path, _ = case_paths(case, folder)
    target = image_path.with_name(f"{case}_lungs.nrrd")
    if target.exists():
        return target
    image = sitk.ReadImage(str(image_path))
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    spacing = image.GetSpacing()   # (x, y, z) in mm
    labels = lung_fields(hu, pixel_mm=(spacing[1], spacing[0]),
                         direction_x_sign=float(np.sign(image.GetDirection()[0]) or 1.0))
    out = sitk.GetImageFromArray(labels)
    out.CopyInformation(image)
    temporary = target.with_name(target.name + ".part.nrrd")
    sitk.WriteImage(out, str(temporary), True)
    temporary.replace(target)
    return target


def main(argv=None) -> int:
    import SimpleITK as sitk

    from fetch_real_cases import fetch

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="the cases' folder (default: fetch_real_cases.py's)")
    args = parser.parse_args(argv)
    folder = fetch(Path(args.out) if args.out else None)
    for case in ("lung1", "lung2"):
        path = write_lung_fields(case, folder)
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        print(f"{case}: {path}  right {int((labels == 1).sum())} voxels, left {int((labels == 2).sum())} voxels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
