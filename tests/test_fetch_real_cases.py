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


def _lung_module():
    import sys

    sys.path.insert(0, str(SCRIPT.parent))
    spec = importlib.util.spec_from_file_location("lung_fields", SCRIPT.parent / "lung_fields.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _chest_phantom():
    """A CT-like chest (planes, rows, cols) in HU: outside air, soft-tissue body, two lungs with a
    vessel each, a trachea on the midline, and the two lungs joined by a bronchus."""
    import numpy as np

    planes, size = 12, 96
    rows, cols = np.mgrid[:size, :size]
    hu = np.full((planes, size, size), -1000.0)
    body = ((rows - 48) / 40) ** 2 + ((cols - 48) / 44) ** 2 <= 1
    right = ((rows - 48) / 24) ** 2 + ((cols - 26) / 13) ** 2 <= 1   # low columns: the patient's right
    left = ((rows - 48) / 22) ** 2 + ((cols - 70) / 11) ** 2 <= 1
    trachea = (rows - 40) ** 2 + (cols - 48) ** 2 <= 9
    vessel = (rows - 50) ** 2 + (cols - 24) ** 2 <= 4
    truth = np.zeros(hu.shape, np.uint8)
    for index in range(planes):
        hu[index][body] = 40
        if 2 <= index <= 10:
            hu[index][right | left] = -850
            hu[index][vessel] = 30
            truth[index][right] = 1
            truth[index][left] = 2
        if index <= 6:
            hu[index][trachea] = -1000
    hu[6, 46:49, 36:62] = -900   # a bronchus joining both lungs on one plane
    return hu, truth


def test_lung_fields_separates_right_and_left_fills_vessels_and_drops_the_trachea():
    import numpy as np

    lungs = _lung_module()
    hu, truth = _chest_phantom()
    labels = lungs.lung_fields(hu, pixel_mm=(3.0, 3.0))
    for value in (1, 2):
        overlap = np.logical_and(labels == value, truth == value).sum()
        dice = 2 * overlap / ((labels == value).sum() + (truth == value).sum())
        assert dice > 0.97, (value, dice)
    assert labels[5, 50, 24] == 1                         # the vessel inside the right lung counts as lung
    assert labels[0, 40, 48] == 0 and labels[3, 40, 48] == 0   # the trachea is not lung
    flipped = lungs.lung_fields(hu, pixel_mm=(3.0, 3.0), direction_x_sign=-1.0)   # columns run to the right
    assert flipped[5, 48, 26] == 2 and flipped[5, 48, 70] == 1


def test_derived_lung_cases_name_the_ct_and_a_derived_label(tmp_path):
    import numpy as np
    import SimpleITK as sitk

    fetch = _module()
    hu, _ = _chest_phantom()
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing((3.0, 3.0, 5.0))
    sitk.WriteImage(image, str(tmp_path / "lung2_image.nrrd"))
    image_path, label_path = fetch.case_paths("lung2-lungs", tmp_path)
    assert image_path.name == "lung2_image.nrrd" and label_path.name == "lung2_lungs.nrrd"
    written = sitk.ReadImage(str(label_path))
    assert written.GetSpacing() == (3.0, 3.0, 5.0)
    assert set(np.unique(sitk.GetArrayFromImage(written))) == {0, 1, 2}
    assert not list(tmp_path.glob("*.part*"))
