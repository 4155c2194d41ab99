"""Sample data: deterministic phantoms, label ids, small-structure size, intensities, and the
shipped files in sample_data/ (they match the generators, load with geometry, stay small)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

import napari_vfmseg.data as data
from napari_vfmseg.data import SAMPLES, label_names, sample_dir, sample_paths
from napari_vfmseg.data.build import generate_sample, stored_image, write_sample
from napari_vfmseg.data.phantoms import make_abdomen_ct, make_brain_mr
from napari_vfmseg.data.ultrasound import make_ultrasound_2d
from napari_vfmseg.io import read_volume

REPO_SAMPLES = Path(__file__).resolve().parents[1] / "sample_data"
MAX_BYTES = 5_000_000

SMALL = {
    make_abdomen_ct: (24, 96, 96),
    make_brain_mr: (24, 96, 80),
    make_ultrasound_2d: (128, 160),
}


# The shipped files were generated once; regenerating them runs float32 numpy/scipy pipelines whose
# last bit moves between library versions. Compare decoded pixels, never bytes: stored grey levels
# (HU, MR units, 8-bit echo) may differ by one level beyond rounding, and a label map may differ on
# at most this fraction of voxels (boundary voxels of float-defined shapes).
GREY_LEVELS = 1.0
LABEL_FRACTION = 1e-3


def _assert_pixels_close(actual, expected, rounding: float = 0.0) -> None:
    """Decoded intensities within ``rounding`` + one grey level of the expected ones."""
    difference = np.abs(np.asarray(actual, dtype=np.float64) - np.asarray(expected, dtype=np.float64))
    assert np.asarray(actual).shape == np.asarray(expected).shape
    assert difference.max() <= rounding + GREY_LEVELS + 1e-3, f"max difference {difference.max()}"


def _assert_labels_close(actual, expected) -> None:
    """The same label ids, and the same label on all but LABEL_FRACTION of the voxels."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape and set(np.unique(actual)) == set(np.unique(expected))
    assert np.mean(actual != expected) <= LABEL_FRACTION, f"{np.mean(actual != expected):.2%} of the labels differ"


def _disk_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size


def _read_itk(path: Path) -> sitk.Image:
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def _extent_mm(mask: np.ndarray, spacing) -> np.ndarray:
    """Voxel footprint of ``mask`` along each axis in mm: (max - min + 1) * spacing."""
    idx = np.argwhere(mask)
    return (idx.max(axis=0) - idx.min(axis=0) + 1) * np.asarray(spacing, dtype=float)


def _ring(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(mask, np.ones((3,) * mask.ndim, dtype=bool)) & ~mask


@pytest.fixture(scope="module")
def shipped() -> dict[str, tuple[np.ndarray, np.ndarray, dict]]:
    """Generator output at the shipped shape and seed, once per module."""
    return {name: generate_sample(name) for name in SAMPLES}


# ---------------------------------------------------------------------------------- generators


@pytest.mark.parametrize("make", list(SMALL), ids=lambda f: f.__name__)
def test_generation_is_deterministic_and_seeded(make):
    shape = SMALL[make]
    img_a, lab_a, meta_a = make(seed=3, shape=shape)
    img_b, lab_b, meta_b = make(seed=3, shape=shape)
    assert img_a.shape == lab_a.shape == shape
    assert lab_a.dtype == np.uint8
    assert img_a.tobytes() == img_b.tobytes()
    assert lab_a.tobytes() == lab_b.tobytes()
    assert meta_a == meta_b
    img_c, _, _ = make(seed=4, shape=shape)
    assert np.abs(img_c.astype(float) - img_a.astype(float)).mean() > 1.0


@pytest.mark.parametrize("make", list(SMALL), ids=lambda f: f.__name__)
def test_every_label_id_present_and_no_others(make):
    _, labels, meta = make(seed=0, shape=SMALL[make])
    ids = set(np.unique(labels).tolist())
    assert ids == {0, *meta["label_names"]}
    for label in meta["label_names"]:
        assert np.count_nonzero(labels == label) > 0


def test_anatomy_is_the_same_at_another_resolution(shipped):
    """The same seed at a quarter of the voxels gives the same organ volumes (in mm³)."""
    _, lab_full, meta_full = shipped["abdomen_ct"]
    _, lab_small, meta_small = make_abdomen_ct(seed=0, shape=(24, 96, 96))
    vox_full, vox_small = np.prod(meta_full["spacing"]), np.prod(meta_small["spacing"])
    assert meta_small["spacing"] == pytest.approx((8.0, 3.2, 3.2))
    for label in (1, 3, 4, 5, 6):  # not the vertebrae: 7 mm discs alias on 8 mm planes
        full = np.count_nonzero(lab_full == label) * vox_full
        small = np.count_nonzero(lab_small == label) * vox_small
        assert small == pytest.approx(full, rel=0.12), label_names("abdomen_ct")[label]


def test_explicit_spacing_and_origin_centre():
    _, labels, meta = make_brain_mr(seed=0, shape=(12, 48, 40), spacing=(5.0, 2.0, 2.5))
    assert meta["spacing"] == (5.0, 2.0, 2.5)
    centre = np.asarray(meta["origin"]) + (np.array(labels.shape) - 1) / 2 * np.asarray(meta["spacing"])
    assert centre == pytest.approx((22.0, 12.0, -3.0))  # axis-aligned, deliberately off-centre
    assert not np.allclose(meta["origin"], -(np.array(labels.shape) - 1) / 2 * np.asarray(meta["spacing"]))


@pytest.mark.parametrize(
    "kwargs, message",
    [({"shape": (10, 20)}, "shape"), ({"shape": (8, 0, 16)}, "shape"), ({"spacing": (1.0, -1.0, 1.0)}, "spacing")],
)
def test_bad_geometry_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_abdomen_ct(**kwargs)


# ---------------------------------------------------------------------------------- small structures


@pytest.mark.parametrize(
    "name, shape",
    [("abdomen_ct", None), ("brain_mr", None), ("abdomen_ct", (24, 96, 96)), ("brain_mr", (24, 96, 80))],
)
def test_small_structure_is_at_most_10_mm(shipped, name, shape):
    if shape is None:
        _, labels, meta = shipped[name]
    else:
        make = make_abdomen_ct if name == "abdomen_ct" else make_brain_mr
        _, labels, meta = make(seed=0, shape=shape)
    lesion = labels == meta["lesion_label"]
    extent = _extent_mm(lesion, meta["spacing"])
    assert np.all(extent <= 10.0 + 1e-6), extent
    assert np.all(extent >= 4.0), extent  # still a structure, not a single stray voxel
    assert extent == pytest.approx(meta["lesion_mm"])


def test_lesions_sit_inside_their_organ(shipped):
    _, ct_lab, _ = shipped["abdomen_ct"]
    assert set(np.unique(ct_lab[_ring(ct_lab == 2)]).tolist()) == {1}  # liver lesion inside liver
    _, mr_lab, _ = shipped["brain_mr"]
    assert set(np.unique(mr_lab[_ring(mr_lab == 7)]).tolist()) == {6}  # white-matter lesion in WM
    _, us_lab, meta = shipped["ultrasound_2d"]
    assert set(np.unique(us_lab[_ring(us_lab == 2)]).tolist()) == {1}  # cyst inside the organ
    assert set(np.unique(us_lab[_ring(us_lab == 3)]).tolist()) == {1}  # nodule inside the organ
    assert np.all(_extent_mm(us_lab == 3, meta["spacing"]) <= 10.0)


def test_ureter_wanders_across_planes(shipped):
    _, labels, _ = shipped["abdomen_ct"]
    ureter = labels == 7
    planes = np.flatnonzero(ureter.any(axis=(1, 2)))
    assert len(planes) >= 12
    centres = np.array([ndimage.center_of_mass(ureter[p]) for p in planes])
    assert np.ptp(centres[:, 0]) > 6 or np.ptp(centres[:, 1]) > 6  # moves > 6 px through the stack
    diameters = [2 * np.sqrt(np.count_nonzero(ureter[p]) / np.pi) * 1.6 for p in planes]
    assert 7.0 < np.median(diameters) < 13.0  # mm


# ---------------------------------------------------------------------------------- intensities


def test_ct_intensities_are_realistic(shipped):
    hu, labels, _ = shipped["abdomen_ct"]
    med = {k: float(np.median(hu[labels == k])) for k in label_names("abdomen_ct")}
    assert 50.0 <= med[1] <= 70.0  # liver
    assert med[2] < med[1] - 25.0  # hypodense lesion
    assert 35.0 <= med[3] <= 60.0  # spleen
    assert med[4] > med[1] and med[5] > med[1]  # enhancing kidneys
    assert med[6] > 130.0  # aorta
    assert med[8] > 250.0  # bone
    corners = hu[:, :6, :6]
    assert np.median(corners) == pytest.approx(-1000.0, abs=15.0)  # air
    assert 6.0 < corners.std() < 25.0  # noisy, as a scanner's air is
    body = (labels == 0) & (hu > -300) & (hu < 0)
    assert np.count_nonzero(body) > 0.05 * hu.size  # plenty of fat
    assert hu.min() >= -1024.0 and hu.max() <= 3071.0


def test_mr_intensities_are_realistic(shipped):
    t1, labels, _ = shipped["brain_mr"]
    med = {k: float(np.median(t1[labels == k])) for k in label_names("brain_mr")}
    assert med[6] > med[5] + 150.0  # T1: white matter brighter than grey
    assert med[5] > med[3] + 150.0 and med[5] > med[4] + 150.0  # grey brighter than CSF
    assert med[7] < med[6] - 200.0  # hypointense lesion
    assert t1.min() >= 0.0  # Rician magnitude
    air = t1[labels == 0]
    assert 5.0 < np.median(air) < 40.0  # noise floor, not zero


def test_mr_bias_field_is_smooth_and_multiplicative():
    shape = SMALL[make_brain_mr]
    biased, labels, _ = make_brain_mr(seed=0, shape=shape, noise_sigma=0.0)
    flat, _, _ = make_brain_mr(seed=0, shape=shape, noise_sigma=0.0, bias_strength=0.0)
    head = labels > 0
    ratio = biased[head] / flat[head]
    low, high = np.percentile(ratio, [1, 99])
    assert 0.6 < low < 0.95 and 1.05 < high < 1.6
    field = np.ones(shape, dtype=np.float32)
    field[head] = ratio
    grad = np.abs(np.diff(field, axis=2))[head[:, :, 1:] & head[:, :, :-1]]
    assert np.percentile(grad, 99) < 0.02  # smooth: < 2 % change between neighbouring voxels


def test_ultrasound_intensities_are_realistic(shipped):
    img, labels, _ = shipped["ultrasound_2d"]
    med = {k: float(np.median(img[labels == k])) for k in label_names("ultrasound_2d")}
    assert med[2] < med[1] - 40.0  # anechoic cyst
    assert med[3] > med[1] + 20.0  # hyperechoic nodule
    organ = img[labels == 1].astype(float)
    assert organ.std() > 15.0  # speckle: log-compressed Rayleigh spread is ~5.6 dB (~24 grey levels)


# ---------------------------------------------------------------------------------- shipped files


def test_repo_sample_dir_is_used_and_complete():
    assert sample_dir() == REPO_SAMPLES
    for name, info in SAMPLES.items():
        image, labels = sample_paths(name)
        assert image == REPO_SAMPLES / info.image and labels == REPO_SAMPLES / info.labels
        assert image.exists() and labels.exists()
        assert 0 < _disk_bytes(image) <= MAX_BYTES
        assert 0 < _disk_bytes(labels) <= MAX_BYTES
    assert (REPO_SAMPLES / "abdomen_ct").is_dir()
    assert len(list((REPO_SAMPLES / "abdomen_ct").glob("*.dcm"))) == SAMPLES["abdomen_ct"].shape[0]


@pytest.mark.parametrize("name", list(SAMPLES))
def test_shipped_files_match_the_generator(shipped, name):
    info = SAMPLES[name]
    image, labels, meta = shipped[name]
    img_itk = _read_itk(REPO_SAMPLES / info.image)
    lab_itk = _read_itk(REPO_SAMPLES / info.labels)
    _assert_labels_close(sitk.GetArrayFromImage(lab_itk), labels)
    on_disk = sitk.GetArrayFromImage(img_itk)
    _assert_pixels_close(on_disk, stored_image(name, image))
    if info.image_format != "png":
        _assert_pixels_close(on_disk, image, rounding=0.5)
        for itk in (img_itk, lab_itk):
            assert itk.GetSpacing()[::-1] == pytest.approx(meta["spacing"], abs=1e-4)
            assert itk.GetOrigin()[::-1] == pytest.approx(meta["origin"], abs=1e-4)
            assert np.allclose(np.reshape(itk.GetDirection(), (3, 3)), np.eye(3))


def test_regenerating_in_tmp_reproduces_the_shipped_files(tmp_path):
    for name in ("abdomen_ct", "brain_mr"):
        info = SAMPLES[name]
        image_path, labels_path = write_sample(name, tmp_path)
        assert image_path == tmp_path / info.image and labels_path == tmp_path / info.labels
        for fresh, ref in ((image_path, REPO_SAMPLES / info.image), (labels_path, REPO_SAMPLES / info.labels)):
            fresh_array, ref_array = sitk.GetArrayFromImage(_read_itk(fresh)), sitk.GetArrayFromImage(_read_itk(ref))
            if fresh == labels_path:
                _assert_labels_close(fresh_array, ref_array)
            else:
                _assert_pixels_close(fresh_array, ref_array)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_dicom_series_reads_back_as_hu_with_the_labels_geometry(shipped):
    hu, labels, meta = shipped["abdomen_ct"]
    image_path, labels_path = sample_paths("abdomen_ct")
    vol = read_volume(image_path)
    lab = read_volume(labels_path)
    assert vol.modality == "CT"
    assert vol.array.shape == lab.array.shape == hu.shape
    _assert_pixels_close(vol.array, hu, rounding=0.5)
    _assert_labels_close(lab.array, labels)
    assert vol.spacing == pytest.approx(lab.spacing, abs=1e-4)
    assert vol.origin == pytest.approx(lab.origin, abs=1e-4)
    assert np.allclose(vol.direction, lab.direction)
    assert vol.spacing == pytest.approx((4.0, 1.6, 1.6))
    assert vol.spacing[0] > 2 * vol.spacing[1]  # anisotropic


def test_mr_nifti_reads_back_with_off_centre_origin(shipped):
    t1, labels, meta = shipped["brain_mr"]
    vol = read_volume(sample_paths("brain_mr")[0])
    lab = read_volume(sample_paths("brain_mr")[1])
    _assert_pixels_close(vol.array, t1, rounding=0.5)
    _assert_labels_close(lab.array, labels)
    assert vol.origin == pytest.approx(meta["origin"], abs=1e-4) and lab.origin == pytest.approx(vol.origin, abs=1e-4)
    assert vol.spacing == pytest.approx((3.0, 1.2, 1.2), abs=1e-5)


# ---------------------------------------------------------------------------------- API


def test_catalogue_and_label_names():
    assert set(SAMPLES) >= {"abdomen_ct", "brain_mr"}
    assert label_names("abdomen_ct")[1] == "liver"
    assert label_names("brain_mr")[6] == "white matter"
    names = label_names("abdomen_ct")
    names[1] = "changed"
    assert label_names("abdomen_ct")[1] == "liver"  # a copy: the catalogue is not mutable
    assert {s.image_format for s in SAMPLES.values()} >= {"dicom-series", "nifti"}
    with pytest.raises(ValueError, match="no_such_sample"):
        sample_paths("no_such_sample")


def test_cache_is_filled_when_the_repo_folder_is_absent(tmp_path, monkeypatch):
    """A wheel install has no sample_data/: files are generated into $VFMSEG_HOME once."""
    monkeypatch.setattr(data, "_repo_sample_dir", lambda: None)
    monkeypatch.setenv("VFMSEG_HOME", str(tmp_path))
    assert sample_dir() == tmp_path / "sample_data" / "v1"
    image, labels = sample_paths("ultrasound_2d")
    assert image.parent == tmp_path / "sample_data" / "v1" and image.exists() and labels.exists()
    _assert_pixels_close(read_volume(image).array, read_volume(REPO_SAMPLES / "ultrasound_2d.png").array)
    _assert_labels_close(read_volume(labels).array, read_volume(REPO_SAMPLES / "ultrasound_2d_labels.png").array)
    stamp = image.stat().st_mtime_ns
    assert sample_paths("ultrasound_2d") == (image, labels)
    assert image.stat().st_mtime_ns == stamp  # second use reads the cache, does not regenerate


def test_missing_file_in_repo_folder_names_it(tmp_path, monkeypatch):
    (tmp_path / "README.md").write_text("samples")
    monkeypatch.setattr(data, "_repo_sample_dir", lambda: tmp_path)
    with pytest.raises(FileNotFoundError, match=r"brain_mr\.nii\.gz.*make_sample_data\.py"):
        sample_paths("brain_mr")
