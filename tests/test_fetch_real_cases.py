"""scripts/fetch_real_cases.py: the unseen-subject cases are only extracted from the archive with the right sha256."""

from __future__ import annotations

import importlib.util
import io
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fetch_real_cases.py"


def _module():
    spec = importlib.util.spec_from_file_location("fetch_real_cases", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_an_archive_with_another_sha256_is_refused_and_nothing_is_written(tmp_path):
    fetch = _module()
    payload = b"not a real case"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("pyradiomics-3.1.0/data/brain1_image.nrrd")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    archive = tmp_path / "pyradiomics-3.1.0.tar.gz"
    archive.write_bytes(buffer.getvalue())
    out = tmp_path / "cases"
    with pytest.raises(SystemExit, match="sha256"):
        fetch.fetch(out, archive)
    assert not out.exists() or not any(out.iterdir())


def test_case_paths_name_the_image_and_label_and_refuse_unknown_cases(tmp_path):
    fetch = _module()
    image, label = fetch.case_paths("brain2", tmp_path)
    assert (image.name, label.name) == ("brain2_image.nrrd", "brain2_label.nrrd")
    assert image.parent == tmp_path
    with pytest.raises(ValueError, match="unknown case"):
        fetch.case_paths("liver9", tmp_path)
