"""Sample data: synthetic CT, MR and ultrasound phantoms with exact ground-truth label maps.

The files live in the repository's ``sample_data/`` folder (see its README for provenance and
licence). An installed package without that folder regenerates them, deterministically from the
seeded generators, into a per-user cache on first use: ``$VFMSEG_HOME/sample_data/v<N>`` or
``~/.cache/napari-vfmseg/sample_data/v<N>``.

    >>> from napari_vfmseg.data import SAMPLES, sample_paths, label_names
    >>> image_path, labels_path = sample_paths("abdomen_ct")   # DICOM folder, NIfTI labels
    >>> label_names("abdomen_ct")[1]
    'liver'

Nothing here imports Qt or napari.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from napari_vfmseg.data.catalog import GENERATOR_VERSION, SAMPLES, SampleInfo

if TYPE_CHECKING:
    from napari_vfmseg.io import Volume

__all__ = ["SAMPLES", "SampleInfo", "sample_dir", "sample_paths", "label_names", "load_sample"]


def _repo_sample_dir() -> Path | None:
    """``<repo>/sample_data`` when the package runs from a source checkout (editable install)."""
    candidate = Path(__file__).resolve().parents[2] / "sample_data"
    return candidate if (candidate / "README.md").is_file() else None


def _cache_sample_dir() -> Path:
    home = os.environ.get("VFMSEG_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "napari-vfmseg"
    return base / "sample_data" / f"v{GENERATOR_VERSION}"


def sample_dir() -> Path:
    """The folder that holds (or will hold) the sample files.

    The repository's ``sample_data/`` when present next to the package, otherwise the per-user
    cache folder (which may not exist yet: :func:`sample_paths` fills it on demand).
    """
    return _repo_sample_dir() or _cache_sample_dir()


def _info(name: str) -> SampleInfo:
    try:
        return SAMPLES[name]
    except KeyError:
        raise ValueError(f"unknown sample {name!r}; available: {', '.join(SAMPLES)}") from None


def sample_paths(name: str) -> tuple[Path, Path]:
    """(image path, labels path) of sample ``name``; the image is a folder for a DICOM series.

    In the per-user cache, missing files are generated first (a few seconds, once).

    Raises:
        ValueError: unknown sample name.
        FileNotFoundError: the repository's ``sample_data/`` lacks a file (regenerate it with
            ``python scripts/make_sample_data.py``).
    """
    info = _info(name)
    folder = sample_dir()
    image, labels = folder / info.image, folder / info.labels
    if image.exists() and labels.exists():
        return image, labels
    if folder == _repo_sample_dir():
        missing = image if not image.exists() else labels
        raise FileNotFoundError(
            f"{missing}: sample file missing from the repository's sample_data/ folder; "
            "regenerate it with `python scripts/make_sample_data.py`"
        )
    from napari_vfmseg.data.build import write_sample

    return write_sample(name, folder)


def label_names(name: str) -> dict[int, str]:
    """Label id → structure name for sample ``name`` (background 0 not included)."""
    return dict(_info(name).label_names)


def load_sample(name: str) -> tuple[Volume, Volume]:
    """Read sample ``name`` as (image volume, label volume) with their geometry."""
    from napari_vfmseg.io import read_volume

    image_path, labels_path = sample_paths(name)
    return read_volume(image_path), read_volume(labels_path)
