"""Flower's deployment runtime on loopback: ``vfmseg federated server`` (SuperLink + ServerApp) and
two ``vfmseg federated site`` processes (SuperNode + ClientApp) run two rounds; every process is
stopped by its process id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import SimpleITK as sitk
from _tiny_models import synthetic_volume, tiny_loaded_model

from napari_vfmseg.federated.runtime import free_port, stop, wait_for_port
from napari_vfmseg.federated.config import FederatedConfig
from napari_vfmseg.federated.shared_lora import prepare_lora

MODEL = f"{Path(__file__).with_name('_tiny_models.py').resolve()}:tiny_loaded_model"
VFMSEG = [sys.executable, "-m", "napari_vfmseg.cli", "federated"]


def _site_folder(folder: Path, seed: int) -> Path:
    folder.mkdir(parents=True)
    image, labels = synthetic_volume(planes=10, size=64, seed=seed)
    for array, name in ((image, "scan.nii.gz"), (labels, "scan_labels.nii.gz")):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(folder / name))
    return folder


def test_server_and_two_sites_run_two_rounds_as_processes(tmp_path):
    from napari_vfmseg.training import apply_adapter, read_adapter

    port = free_port()
    out = tmp_path / "global.safetensors"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    server_log = open(tmp_path / "server.err", "wb")
    server = subprocess.Popen(
        VFMSEG + ["server", "--model", MODEL, "--out", str(out), "--port", str(port), "--rounds", "2",
                  "--local-steps", "1", "--images-per-step", "2", "--prompts-per-image", "2", "--min-sites", "2",
                  "--work-dir", str(tmp_path / "server"), "--round-timeout", "300", "--timeout", "600", "--json"],
        stdout=subprocess.PIPE, stderr=server_log, env=env, start_new_session=True)
    sites = []
    try:
        wait_for_port("127.0.0.1", port, 180, server)
        for name, seed in (("north", 0), ("south", 1)):
            folder = _site_folder(tmp_path / name, seed)
            sites.append(subprocess.Popen(
                VFMSEG + ["site", "--data", str(folder), "--server", f"127.0.0.1:{port}", "--model", MODEL,
                          "--threads", "1", "--work-dir", str(tmp_path / f"{name}-work")],
                stdout=subprocess.DEVNULL, stderr=open(tmp_path / f"{name}.err", "wb"), env=env,
                start_new_session=True))
        printed, _ = server.communicate(timeout=600)
    finally:
        for process in sites + [server]:
            stop(process, timeout_s=20)
        server_log.close()
    assert all(p.poll() is not None for p in sites + [server])
    assert server.returncode == 0, (tmp_path / "server.err").read_text()[-3000:]
    report = json.loads(printed)
    assert report["status"] == "finished:completed"
    model = tiny_loaded_model()
    b_names = sorted(prepare_lora(model, FederatedConfig()))
    assert [r["round"] for r in report["rounds"]] == [1, 2]
    for entry in report["rounds"]:
        assert sorted(s["site"] for s in entry["sites"]) == ["north", "south"]
        for site in entry["sites"]:
            assert site["error"] is None and site["tensors"] == b_names
            assert site["heldout_box_dice"] is not None
    tensors, info = read_adapter(out)
    assert info.extra["federated"]["round"] == 2 and sorted(info.extra["federated"]["sites"]) == ["north", "south"]
    apply_adapter(tiny_loaded_model(), out)


def test_site_with_a_folder_without_a_scan_is_refused_at_once(tmp_path):
    (tmp_path / "empty").mkdir()
    done = subprocess.run(VFMSEG + ["site", "--data", str(tmp_path / "empty"), "--server", "127.0.0.1:1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "expected one scan with its label map" in done.stderr
