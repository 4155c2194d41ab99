"""`vfmseg --help`, `vfmseg info`, exit codes and the headless demo."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from napari_vfmseg.cli import main


def test_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for name in ("info", "demo"):
        assert name in out


def test_info_json_reports_versions_device_cache(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("VFMSEG_HOME", str(tmp_path / "home"))
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["versions"]["torch"].startswith("2.")
    assert info["device"] in ("cpu", "cuda", "mps") or info["device"].startswith("cuda")
    assert info["cache_dir"] == str(tmp_path / "home")


def test_console_script_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "napari_vfmseg.cli", "info"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "cache directory" in proc.stdout


def test_demo_headless_writes_screenshots_and_summary(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "napari_vfmseg.cli", "demo", "--headless", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    summary = json.loads((out / "volume_summary.json").read_text())
    assert summary["sample"] == "abdomen_ct"
    assert len(summary["shape"]) == 3
    from imageio.v3 import imread

    for shot in result["screenshots"]:
        image = imread(shot)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200
        assert image[..., :3].std() > 5  # not a blank frame
