"""`vfmseg segment`: masks written with the source geometry, one plane or propagated, and exit codes."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import SimpleITK as sitk

from napari_vfmseg.cli import main
from napari_vfmseg.cli.segment import default_output, parse_prompts
from napari_vfmseg.io import Volume, read_volume
from napari_vfmseg.models import ModelSpec, register_model, unregister_model

from _tiny_models import build_tiny_sam

MODEL = "tiny_segment_test"


@pytest.fixture
def tiny_model(tmp_path, monkeypatch):
    """A tiny SAM registered under MODEL, its weights present in a private VFMSEG_HOME."""
    from safetensors.torch import save_file

    monkeypatch.setenv("VFMSEG_HOME", str(tmp_path / "home"))
    staging = tmp_path / "staging.safetensors"
    save_file({k: v.contiguous() for k, v in build_tiny_sam(seed=1).state_dict().items()}, str(staging))
    payload = staging.read_bytes()
    spec = ModelSpec(name=MODEL, arch="builtin", builder=lambda: build_tiny_sam(seed=5), image_size=128,
                     filename=f"{MODEL}.safetensors", licence="Apache-2.0", description="tiny test model",
                     url="http://127.0.0.1:9/weights/tiny.safetensors",
                     sha256=hashlib.sha256(payload).hexdigest(), size_bytes=len(payload))
    register_model(spec)
    spec.local_path().parent.mkdir(parents=True, exist_ok=True)
    spec.local_path().write_bytes(payload)
    yield MODEL
    unregister_model(MODEL)


@pytest.fixture
def volume_file(tmp_path):
    """A (10, 20, 36) CT-like NIfTI with anisotropic spacing, an offset origin and a flipped axis."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(np.arange(10), np.arange(20), np.arange(36), indexing="ij")
    array = rng.normal(-100, 15, (10, 20, 36))
    array[((z - 5) / 4.0) ** 2 + ((y - 10) / 7.0) ** 2 + ((x - 18) / 9.0) ** 2 <= 1] += 250
    direction = np.diag([1.0, -1.0, 1.0])
    volume = Volume(array.astype(np.int16), spacing=(2.5, 0.7, 0.8), origin=(12.0, -30.5, 4.25), direction=direction)
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(volume.to_sitk(), str(path))
    return path


def run_cli(capsys, *args):
    code = main(["segment", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_same_geometry(mask: Volume, source: Volume):
    assert mask.array.shape == source.array.shape
    np.testing.assert_allclose(mask.spacing, source.spacing, rtol=1e-5)
    np.testing.assert_allclose(mask.origin, source.origin, atol=1e-4)
    np.testing.assert_allclose(mask.direction, source.direction, atol=1e-6)


def test_one_plane_without_propagate(capsys, tmp_path, tiny_model, volume_file):
    out = tmp_path / "mask.nii.gz"
    code, stdout, stderr = run_cli(capsys, volume_file, "--box", "5,4,10,16,26", "--model", tiny_model,
                                   "--device", "cpu", "--out", out, "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    mask = read_volume(out)
    assert_same_geometry(mask, read_volume(volume_file))
    values = mask.array
    assert set(np.unique(values)) <= {0, 1}
    assert summary["voxels"] == int(values.sum()) > 0
    assert not values[np.arange(10) != 5].any()  # only the prompted plane
    assert summary["key_planes"] == [5] and summary["propagated"] is False
    assert summary["volume_ml"] == pytest.approx(values.sum() * 2.5 * 0.7 * 0.8 / 1000, rel=1e-3)


def test_propagate_along_axis_1_with_points_and_label(capsys, tmp_path, tiny_model, volume_file):
    out = tmp_path / "mask.nrrd"
    code, stdout, stderr = run_cli(capsys, volume_file, "--box", "10,2,9,8,27", "--points", "10,5,18;10,1,1,0",
                                   "--propagate", "--axis", "1", "--min-score", "-100", "--label", "7",
                                   "--model", tiny_model, "--device", "cpu", "--out", out, "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    mask = read_volume(out)
    assert_same_geometry(mask, read_volume(volume_file))
    assert set(np.unique(mask.array)) <= {0, 7}
    assert summary["voxels"] == int((mask.array == 7).sum())
    planes = [int(p) for p in np.flatnonzero((mask.array == 7).any(axis=(0, 2)))]
    propagation = summary["propagation"]
    assert planes == propagation["planes"] and 10 in planes
    assert planes == list(range(planes[0], planes[-1] + 1))  # one connected run of planes
    assert propagation["axis"] == 1 and len(propagation["stops"]) == 2
    assert propagation["predictions"] >= 1


def test_appearance_options_reach_the_walk(capsys, tmp_path, tiny_model, volume_file, monkeypatch):
    """--appearance / --appearance-trim override the model's preset; the walk reports what it measured."""
    import napari_vfmseg.engine as engine

    seen = []
    original = engine.propagate  # the function the command imports from the package

    def spy(segmenter, seeds, axis=0, config=None, **kwargs):
        seen.append(config)
        return original(segmenter, seeds, axis=axis, config=config, **kwargs)

    monkeypatch.setattr("napari_vfmseg.engine.propagate", spy)
    code, stdout, stderr = run_cli(capsys, volume_file, "--box", "5,4,10,16,26", "--propagate", "--appearance", "0.35",
                                   "--appearance-trim", "1.5", "--min-score", "-100", "--model", tiny_model,
                                   "--device", "cpu", "--out", tmp_path / "m.nii.gz", "--json")
    assert code == 0, stderr
    assert seen[-1].min_appearance_similarity == 0.35 and seen[-1].appearance_trim == 1.5
    code, _, stderr = run_cli(capsys, volume_file, "--box", "5,4,10,16,26", "--propagate", "--appearance-trim", "off",
                              "--model", tiny_model, "--device", "cpu", "--out", tmp_path / "n.nii.gz", "--json")
    assert code == 0, stderr
    assert seen[-1].appearance_trim is None


def test_text_output_and_default_output_name(capsys, tmp_path, tiny_model, volume_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run_cli(capsys, volume_file, "--box", "5,4,10,16,26", "--model", tiny_model,
                                   "--device", "cpu")
    assert code == 0, stderr
    assert (tmp_path / "ct_mask.nii.gz").is_file()
    assert "ct_mask.nii.gz" in stdout and "voxels" in stdout
    assert default_output("/data/series/") == tmp_path / "series_mask.nii.gz"


def test_2d_image(capsys, tmp_path, tiny_model):
    image = Volume(np.random.default_rng(1).integers(0, 255, (30, 40)).astype(np.uint8), spacing=(0.5, 0.6),
                   origin=(1.0, 2.0))
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(image.to_sitk(), str(path))
    out = tmp_path / "slice_mask.mha"
    code, _, stderr = run_cli(capsys, path, "--box", "0,5,5,20,30", "--model", tiny_model, "--device", "cpu",
                              "--out", out, "--json")
    assert code == 0, stderr
    mask = read_volume(out)
    assert mask.array.shape == (30, 40)
    np.testing.assert_allclose(mask.spacing, (0.5, 0.6), rtol=1e-6)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--box", "5,4,10,16"], "expected 5 numbers"),
        (["--box", "5,a,10,16,26"], "expected numbers separated by commas"),
        (["--box", "5.5,4,10,16,26"], "whole number"),
        (["--box", "10,4,10,16,26"], "plane 10 is outside the volume: axis 0 has 10 planes"),
        (["--box", "5,4,10,20,26"], "outside the plane of 20 rows x 36 cols"),
        (["--box", "5,4,10,16,26", "--axis", "2"], "outside the plane of 10 rows x 20 cols"),
        (["--points", "5,8"], "expected PLANE,ROW,COL"),
        (["--points", "5,8,9,2"], "LABEL must be 1"),
        (["--points", "5,8,9,0"], "background points alone"),
        (["--points", "5,20,9"], "point (row=20, col=9) on plane 5 is outside"),
        (["--points", " ; "], "no point given"),
        ([], "give at least one prompt"),
        (["--box", "5,4,10,16,26", "--out", "mask.png"], "cannot write labels"),
        (["--box", "5,4,10,16,26", "--min-score", "0.3"], "only applies with --propagate"),
        (["--box", "5,4,10,16,26", "--box", "5,1,1,3,3"], "already has a box"),
        (["--box", "5,4,10,16,26", "--appearance", "0.5"], "only apply with --propagate"),
        (["--box", "5,4,10,16,26", "--propagate", "--appearance", "1.5"], "between 0 and 1"),
        (["--box", "5,4,10,16,26", "--propagate", "--appearance-trim", "wide"], "a number >= 0 or 'off'"),
        (["--box", "5,4,10,16,26", "--propagate", "--appearance-trim", "-1"], "a number >= 0 or 'off'"),
    ],
)
def test_bad_input_exits_2_with_one_line(capsys, volume_file, args, message):
    code, stdout, stderr = run_cli(capsys, volume_file, *args, "--model", "no_such_model_needed")
    assert code == 2
    assert message in stderr
    assert stderr.strip().count("\n") == 0 and stderr.startswith("vfmseg segment: error:")


def test_missing_volume_exits_2(capsys, tmp_path):
    code, _, stderr = run_cli(capsys, tmp_path / "nope.nii.gz", "--box", "0,1,1,2,2")
    assert code == 2 and "no such file" in stderr and stderr.strip().count("\n") == 0


def test_help_lists_segment(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "segment" in capsys.readouterr().out


def test_parse_prompts_groups_by_plane():
    keys = parse_prompts(["3,10,20,5,8"], "3,7,7;9,1,2,1;9,3,3,0")
    assert sorted(keys) == [3, 9]
    assert keys[3].box == (5.0, 8.0, 10.0, 20.0)  # corners put in order
    assert keys[3].points == [(7.0, 7.0)] and keys[3].labels == [1]
    assert keys[9].box is None and keys[9].labels == [1, 0]


def test_dicom_seg_output_references_the_series(capsys, tmp_path, tiny_model):
    from _dicom_builders import clean_series
    from _io_helpers import oblique_direction_itk
    from napari_vfmseg.io.dicom_seg import read_segmentation

    folder, _, uid = clean_series(tmp_path / "ct", shape=(6, 24, 28), direction=oblique_direction_itk()[::-1, ::-1])
    out = tmp_path / "mask.dcm"
    code, _, stderr = run_cli(capsys, folder, "--box", "2,4,5,18,20", "--model", tiny_model, "--device", "cpu",
                              "--out", out, "--label", "4", "--name", "kidney", "--json")
    assert code == 0, stderr
    assert "vfmseg segment: warning: " in stderr and "oblique" in stderr
    with pytest.warns(UserWarning, match="oblique"):
        labels, source = read_segmentation(out, source=folder)
    assert labels.array.shape == (6, 24, 28) and set(np.unique(labels.array)) == {0, 4}
    assert labels.array[[0, 1, 3, 4, 5]].max() == 0  # only the key plane was segmented
    assert labels.metadata["label_names"] == {4: "kidney"}
    np.testing.assert_allclose(labels.affine, source.affine)
    import pydicom

    seg = pydicom.dcmread(out)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == tiny_model


def test_dicom_seg_output_needs_a_dicom_volume(capsys, volume_file, tmp_path):
    code, _, stderr = run_cli(capsys, volume_file, "--box", "5,4,10,16,26", "--out", tmp_path / "m.dcm")
    assert code == 2 and "not a DICOM series folder" in stderr and stderr.strip().count("\n") == 0


def test_series_with_a_missing_slice_is_segmented_on_the_true_grid(capsys, tmp_path, tiny_model):
    from _dicom_builders import clean_series, slice_file

    folder, hu, _ = clean_series(tmp_path / "ct", shape=(6, 24, 28))
    slice_file(folder, 2).unlink()
    out = tmp_path / "mask.nii.gz"
    code, _, stderr = run_cli(capsys, folder, "--box", "3,4,5,18,20", "--model", tiny_model, "--device", "cpu",
                              "--out", out, "--json")
    assert code == 0, stderr
    warning, = [line for line in stderr.splitlines() if "slices" in line]
    assert warning.startswith(f"vfmseg segment: warning: {folder}: DICOM series ")
    assert "slices 1–2 (slice_0001.dcm, slice_0003.dcm) are 5 mm apart, the others 2.5 mm" in warning
    mask = read_volume(out)
    assert mask.array.shape == hu.shape  # 6 planes at 2.5 mm, not 5 evenly spaced ones
    np.testing.assert_allclose(mask.spacing, (2.5, 0.8, 0.7), rtol=1e-6)
    assert mask.array[3].any() and not mask.array[[0, 1, 2, 4, 5]].any()
