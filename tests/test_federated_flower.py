"""Federated LoRA in Flower's simulation runtime (Ray, offline, on loopback): two sites train, a
third with another base model is refused, only adapter tensors reach the server, the FFA
aggregate is the example-weighted mean of the sites' B matrices, the global adapter loads in the
engine; and ``vfmseg federated simulate --json``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from _tiny_models import synthetic_volume, tiny_loaded_model

from napari_vfmseg.federated.config import FederatedConfig
from napari_vfmseg.federated.result import RunRecord, report_path, round_path
from napari_vfmseg.federated.shared_lora import get_tensors, lora_names, prepare_lora
from napari_vfmseg.federated.site import Site, load_site_data

TINY = str(Path(__file__).with_name("_tiny_models.py").resolve())
MODEL = f"{TINY}:tiny_loaded_model"
CONFIG = FederatedConfig(rounds=2, local_steps=2, images_per_step=2, prompts_per_image=2, lr=1e-2, min_sites=2,
                         round_timeout_s=300)


def _write_scan(folder: Path, name: str, seed: int) -> tuple[str, str]:
    image, labels = synthetic_volume(planes=12, size=64, seed=seed)
    paths = []
    for array, suffix in ((image, ""), (labels, "_labels")):
        item = sitk.GetImageFromArray(array)
        item.SetSpacing((1.0, 1.0, 2.0))
        path = folder / f"{name}{suffix}.nii.gz"
        sitk.WriteImage(item, str(path))
        paths.append(str(path))
    return paths[0], paths[1]


def test_simulation_two_sites_two_rounds_refuses_a_stranger_and_averages_b_exactly(tmp_path):
    from napari_vfmseg.engine import Segmenter
    from napari_vfmseg.federated.apps import ServerSettings, SiteSpec, make_client_app, make_server_app
    from napari_vfmseg.federated.simulation import run_flower_simulation
    from napari_vfmseg.training import apply_adapter, read_adapter

    other = tmp_path / "other_base.py"
    other.write_text(
        "import importlib.util\n"
        f"spec = importlib.util.spec_from_file_location('_tiny_for_other', {TINY!r})\n"
        "module = importlib.util.module_from_spec(spec)\nspec.loader.exec_module(module)\n"
        "def other():\n    return module.tiny_loaded_model(seed=1)\n")
    scans = [_write_scan(tmp_path, f"scan{i}", seed=i) for i in range(3)]
    specs = [SiteSpec("alpha", *scans[0], MODEL), SiteSpec("beta", *scans[1], MODEL),
             SiteSpec("stranger", *scans[2], f"{other}:other")]
    out = tmp_path / "global.safetensors"
    settings = ServerSettings(MODEL, str(out), CONFIG, f"{scans[2][0]}:{scans[2][1]}")
    run_flower_simulation(make_server_app(settings), make_client_app(specs, threads=1), 3, cpus=2)

    record = RunRecord.read(report_path(out))
    assert [r.round for r in record.rounds] == [1, 2]
    server = tiny_loaded_model()
    b_names = prepare_lora(server, CONFIG)
    for entry in record.rounds:
        accepted = {s.site: s for s in entry.sites if s.error is None and s.tensors}
        assert sorted(accepted) == ["alpha", "beta"]
        for site in accepted.values():            # only the B matrices reached the server
            assert site.tensors == sorted(b_names)
            assert site.value_bytes == sum(get_tensors(server, [n])[n].nbytes for n in b_names)
            assert site.value_bytes <= site.payload_bytes < site.value_bytes + 200 * len(b_names)
            assert site.heldout_box_dice is not None
        refused = [s for s in entry.sites if s.error]
        assert len(refused) == 1 and server.fingerprint in refused[0].error and "fingerprint" in refused[0].error
        assert entry.examples == sum(s.examples for s in accepted.values())
        assert entry.test is not None and 0.0 <= entry.test["box"] <= 1.0

    # Round 1 again, in this process: each site from the zero B, then the example-weighted mean.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        replies = []
        for spec in specs[:2]:
            data = load_site_data(spec.image, spec.labels, CONFIG, name=spec.name)
            site = Site.from_data(data, tiny_loaded_model())
            replies.append(site.train_round(get_tensors(server, b_names), CONFIG, server.fingerprint, 1)[:2])
    finally:
        torch.set_num_threads(threads)
    weights = [n for _, n in replies]
    saved, info = read_adapter(round_path(out, 1))
    assert info.extra["federated"]["examples"] == sum(weights) == record.rounds[0].examples
    assert sorted(saved) == lora_names(server)
    for name in b_names:
        expected = sum(w * t[name].astype(np.float64) for (t, _), w in zip(replies, weights)) / sum(weights)
        assert np.abs(expected).max() > 0
        np.testing.assert_allclose(saved[name].numpy(), expected, rtol=1e-3, atol=1e-6)
    for name in set(saved) - set(b_names):        # A is the shared one, never sent
        np.testing.assert_array_equal(saved[name].numpy(), get_tensors(server, [name])[name])

    model = apply_adapter(tiny_loaded_model(), out)
    assert read_adapter(out)[1].extra["federated"]["round"] == 2
    seg = Segmenter(model)
    image, _ = synthetic_volume(planes=4, size=64, seed=5)
    seg.set_image(image[2])
    assert seg.predict(box=(5, 5, 40, 40)).mask.shape == (64, 64)


def test_cli_simulate_prints_the_json_summary(tmp_path, capsys):
    from napari_vfmseg.cli import main

    sites = [_write_scan(tmp_path, f"site{i}", seed=i) for i in range(2)]
    test = _write_scan(tmp_path, "test", seed=7)
    out = tmp_path / "fed.safetensors"
    argv = ["federated", "simulate", "--model", MODEL, "--rounds", "2", "--local-steps", "1", "--cpus", "2",
            "--test", ":".join(test), "--out", str(out), "--json"]
    for image, labels in sites:
        argv += ["--site", f"{image}:{labels}"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    record = RunRecord.read(report_path(out))
    sent = [s.payload_bytes for r in record.rounds for s in r.sites]
    assert len(sent) == 4 and summary["bytes_per_round_per_site"] == np.mean(sent)
    model = tiny_loaded_model()
    assert summary["model_bytes"] == sum(t.numel() * t.element_size() for t in model.sam.state_dict().values())
    for key in ("federated_dice", "pooled_dice", "local_dice_mean", "base_dice"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["federated_dice"] == record.rounds[-1].test["box"]
    assert len(summary["local_dice"]) == 2 and summary["errors"] == []
    # every contender is also scored on each site's held-out planes (the federation's own split)
    held = summary["heldout_box_dice"]
    assert set(held["federated"]) == set(held["base"]) == set(held["pooled"]) == set(held["local"])
    assert len(held["base"]) == 2
    assert held["federated"] == {s.site: s.heldout_box_dice for s in record.rounds[-1].sites}
    for key in ("federated", "base", "pooled", "local_own", "local_all"):
        assert 0.0 <= summary["heldout_dice_mean"][key] <= 1.0
    assert out.is_file() and round_path(out, 2).is_file()


def test_cli_simulate_bad_input_is_one_clear_line(tmp_path, capsys):
    from napari_vfmseg.cli import main

    code = main(["federated", "simulate", "--site", "a.nii.gz:b.nii.gz", "--site", "c.nii.gz:d.nii.gz",
                 "--test", "e.nii.gz:f.nii.gz", "--out", str(tmp_path / "x.safetensors")])
    assert code == 2
    assert "a.nii.gz: file not found" in capsys.readouterr().err
