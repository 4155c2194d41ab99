"""The demo flow: sample → widget → box on the liver's largest plane → segment → propagate → commit → files.

With an oracle model the whole flow must reproduce the ground truth exactly (Dice 1.0); through
the command line with a tiny random model it must write every file and report its figures.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from _tiny_models import tiny_loaded_model
from napari_vfmseg.cli.demo import _populate, organ_box, segment_sample
from napari_vfmseg.data import sample_paths
from napari_vfmseg.io import read_volume
from test_widget_oracle import OracleSegmenter

TESTS = Path(__file__).resolve().parent


def test_organ_box_is_the_largest_plane_with_a_margin():
    truth = np.zeros((4, 20, 20), np.uint8)
    truth[1, 5:8, 5:8] = 1
    truth[2, 4:12, 6:15] = 1
    plane, box = organ_box(truth, 1, margin=3)
    assert plane == 2 and box == (1.0, 3.0, 14.0, 17.0)
    assert organ_box(truth[2], 1, margin=5)[1] == (0.0, 1.0, 16.0, 19.0)  # clipped at the border


def test_demo_flow_with_an_oracle_reproduces_the_liver(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer(show=False)
    viewer.window.resize(1400, 900)
    _populate(viewer, "abdomen_ct")
    truth = np.asarray(viewer.layers["abdomen_ct ground truth"].data)
    oracle = OracleSegmenter(tiny_loaded_model(seed=2), truth, label=1)
    result = segment_sample(viewer, "abdomen_ct", oracle, tmp_path, timeout=60)
    assert result["dice"] == 1.0 and result["organ"] == "liver"
    plane = result["plane"]
    assert plane == int(np.argmax((truth == 1).reshape(truth.shape[0], -1).sum(axis=1)))
    # propagated from that plane, the oracle's walk follows the liver to both of its ends
    liver_planes = np.flatnonzero((truth == 1).any(axis=(1, 2)))
    assert result["planes_3d"] == [int(liver_planes[0]), int(liver_planes[-1])]
    assert result["dice_3d"] >= 0.99 and Path(result["coronal_screenshot"]).is_file()
    written = read_volume(result["labels"])
    source = read_volume(sample_paths("abdomen_ct")[0])
    expected = written.array == 1
    assert abs(2 * (expected & (truth == 1)).sum() / (expected.sum() + (truth == 1).sum()) - result["dice_3d"]) < 1e-4
    np.testing.assert_array_equal(expected[plane], truth[plane] == 1)  # the prompted plane exactly
    np.testing.assert_allclose(written.spacing, source.spacing, rtol=1e-6)
    np.testing.assert_allclose(written.origin, source.origin, atol=1e-4)
    rows = list(csv.DictReader(open(result["objects_csv"])))
    assert rows[0]["name"] == "liver" and int(rows[0]["voxels"]) == expected.sum() == result["voxels"]
    from imageio.v3 import imread

    shot = imread(result["screenshot"])
    assert shot.shape[0] > 400 and shot.shape[1] > 800 and shot[..., :3].std() > 5


REGISTER_AND_RUN = """
import sys
sys.path.insert(0, {tests!r})
from pathlib import Path
from safetensors.torch import save_file
from _tiny_models import build_tiny_sam
from napari_vfmseg.models import ModelSpec, register_model, weights_dir
weights = weights_dir() / "tiny_demo.safetensors"
weights.parent.mkdir(parents=True, exist_ok=True)
save_file(build_tiny_sam(seed=0).state_dict(), str(weights))
register_model(ModelSpec(name="tiny_demo", arch="tiny", builder=lambda: build_tiny_sam(seed=0), image_size=128,
                         filename=weights.name, url="https://example.invalid/tiny_demo.safetensors",
                         licence="test only", description="tiny random SAM for tests"))
from napari_vfmseg.cli import main
sys.exit(main(["demo", "--headless", "--out", {out!r}, "--model", "tiny_demo"]))
"""


def test_demo_command_runs_the_whole_flow_headless(tmp_path):
    out = tmp_path / "demo"
    env = {**__import__("os").environ, "VFMSEG_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-c", REGISTER_AND_RUN.format(tests=str(TESTS), out=str(out))],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["model"] == "tiny_demo" and result["device"] == "cpu" and result["organ"] == "liver"
    assert 0.0 <= result["dice"] <= 1.0
    assert result["embed_seconds"] > 0 and result["click_ms"] > 0
    assert result["encoder_calls"] >= 1
    assert 0.0 <= result["dice_3d"] <= 1.0 and result["propagate_seconds"] > 0 and len(result["propagate_stops"]) == 2
    assert [Path(p).name for p in result["screenshots"]] == ["demo_axial.png", "demo_coronal.png", "demo_preview.png", "demo_segment.png"]
    labels = read_volume(result["labels"])
    assert labels.array.shape == (48, 192, 192) and int((labels.array == 1).sum()) == result["voxels"]
    table = json.loads(Path(result["objects_json"]).read_text())
    assert table["objects"][0]["name"] == "liver" and table["model"] == "tiny_demo"
    assert json.loads((out / "volume_summary.json").read_text())["sample"] == "abdomen_ct"
