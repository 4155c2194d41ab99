"""Make ``sample_data/mni_brain_t1*.nii.gz``: a real T1 brain MR with tissue labels, from nilearn's wheel.

nilearn ships the MNI ICBM152 2009a nonlinear symmetric T1 template with grey- and white-matter
probability maps (1 mm, 189 x 233 x 197 voxels, uint8). This script averages 2 x 2 x 2 blocks (2 mm
voxels, the origin moved to the centre of the first block, direction kept) and writes:

- ``mni_brain_t1.nii.gz``: the T1 image, uint8 (plane, row, col) = (z, y, x) in ITK order;
- ``mni_brain_t1_labels.nii.gz``: 1 = white matter (WM probability >= 0.5), 2 = the rest of the
  brain (grey + white matter probability >= 0.5, holes filled: cortex, deep grey nuclei,
  ventricles), 0 = outside; both on the same grid.

Usage: ``python scripts/make_real_sample.py [NILEARN_WHEEL_OR_DATA_DIR] [--out sample_data]``.
Without an argument the wheel is fetched with ``pip download --no-deps nilearn`` into a temporary
folder. The licence (MNI/McGill, permissive with notice) is in ``sample_data/README.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from scipy import ndimage

PREFIX = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
DATA = "nilearn/datasets/data/"


def _find(source: Path, kind: str, scratch: Path) -> Path:
    """The path of the template file ``kind`` ("t1", "gm", "wm") inside a wheel or a data folder."""
    name = PREFIX.format(kind)
    if source.is_dir():
        hits = list(source.rglob(name))
        if not hits:
            raise FileNotFoundError(f"{source}: no {name} inside")
        return hits[0]
    with zipfile.ZipFile(source) as wheel:
        return Path(wheel.extract(DATA + name, scratch))


def _block_mean(array: np.ndarray, factor: int = 2) -> np.ndarray:
    """Mean over factor^3 blocks; trailing planes that do not fill a block are dropped."""
    shape = [s // factor for s in array.shape]
    cropped = array[: shape[0] * factor, : shape[1] * factor, : shape[2] * factor].astype(np.float32)
    return cropped.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean(axis=(1, 3, 5))


def make(source: Path, out: Path) -> tuple[Path, Path]:
    import SimpleITK as sitk

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from napari_vfmseg.io.atomic import atomic_path

    with tempfile.TemporaryDirectory() as scratch:
        t1_image = sitk.ReadImage(str(_find(source, "t1", Path(scratch))))
        gm = sitk.GetArrayFromImage(sitk.ReadImage(str(_find(source, "gm", Path(scratch))))).astype(np.float32) / 255
        wm = sitk.GetArrayFromImage(sitk.ReadImage(str(_find(source, "wm", Path(scratch))))).astype(np.float32) / 255
    t1 = sitk.GetArrayFromImage(t1_image)
    image = np.clip(np.rint(_block_mean(t1)), 0, 255).astype(np.uint8)
    gm2, wm2 = _block_mean(gm), _block_mean(wm)
    brain = ndimage.binary_fill_holes(gm2 + wm2 >= 0.5)
    parts, count = ndimage.label(brain)
    if count > 1:  # keep the largest body
        brain = parts == (np.argmax(np.bincount(parts.ravel())[1:]) + 1)
    for index in range(brain.shape[0]):  # ventricles open to a plane's edge are still brain
        brain[index] = ndimage.binary_fill_holes(brain[index])
    labels = np.where(brain, 2, 0).astype(np.uint8)
    labels[brain & (wm2 >= 0.5)] = 1

    spacing = np.array(t1_image.GetSpacing()) * 2
    direction = np.array(t1_image.GetDirection()).reshape(3, 3)
    origin = np.array(t1_image.GetOrigin()) + direction @ (np.array(t1_image.GetSpacing()) * 0.5)
    written = []
    for array, name in ((image, "mni_brain_t1.nii.gz"), (labels, "mni_brain_t1_labels.nii.gz")):
        itk = sitk.GetImageFromArray(array)
        itk.SetSpacing(tuple(float(v) for v in spacing))
        itk.SetOrigin(tuple(float(v) for v in origin))
        itk.SetDirection(tuple(float(v) for v in direction.ravel()))
        path = out / name
        with atomic_path(path) as temporary:
            sitk.WriteImage(itk, str(temporary), useCompression=True)
        written.append(path)
    return written[0], written[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", nargs="?", help="nilearn wheel (.whl) or a folder holding its template files")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "sample_data"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as download:
        source = Path(args.source) if args.source else None
        if source is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "nilearn", "-d", download],
                           check=True)
            source = next(Path(download).glob("nilearn-*.whl"))
        image, labels = make(source, Path(args.out))
    print(f"wrote {image} ({image.stat().st_size:,} B) and {labels} ({labels.stat().st_size:,} B)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
