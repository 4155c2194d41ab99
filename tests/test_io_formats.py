"""One list of supported file suffixes: the reader, the writer, the napari manifest, layer names and
the CLI's default output all follow napari_vfmseg.io.formats."""

from __future__ import annotations

from pathlib import Path

import yaml

import napari_vfmseg
from napari_vfmseg.cli.segment import default_output
from napari_vfmseg.io import SUPPORTED_LABEL_EXTENSIONS, SUPPORTED_READ_EXTENSIONS
from napari_vfmseg.io.formats import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    LABEL_SUFFIXES,
    READ_SUFFIXES,
    VOLUME_SUFFIXES,
    path_extension,
    strip_suffix,
)


def _manifest() -> dict:
    return yaml.safe_load((Path(napari_vfmseg.__file__).parent / "napari.yaml").read_text())


def test_reader_and_writer_use_the_one_list():
    assert SUPPORTED_READ_EXTENSIONS == READ_SUFFIXES
    assert SUPPORTED_LABEL_EXTENSIONS == LABEL_SUFFIXES
    assert set(VOLUME_SUFFIXES) <= set(READ_SUFFIXES) and set(LABEL_SUFFIXES) <= set(VOLUME_SUFFIXES)
    assert ".dcm" not in IMAGE_SUFFIXES and set(IMAGE_SUFFIXES) | {".dcm"} == set(READ_SUFFIXES)


def test_manifest_lists_the_same_suffixes():
    contributions = _manifest()["contributions"]
    patterns = contributions["readers"][0]["filename_patterns"]
    assert {f"*{s}" for s in (*VOLUME_SUFFIXES, *DICOM_SUFFIXES)} <= set(patterns)
    assert contributions["writers"][0]["filename_extensions"] == [*LABEL_SUFFIXES, *DICOM_SUFFIXES]


def test_names_without_suffix():
    assert path_extension("/a/B.NII.GZ") == ".nii.gz" and path_extension("x") == ""
    assert [strip_suffix(n) for n in ("ct.nii.gz", "scan.nhdr", "us.png", "series/", "notes.txt")] == [
        "ct", "scan", "us", "series", "notes.txt"]
    assert default_output("/data/brain.mhd").name == "brain_mask.nii.gz"
