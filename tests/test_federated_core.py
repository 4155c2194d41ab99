"""Federated LoRA without a network: shared A, exact FFA averaging, payload checks, refusal of
another base model, a site's round, and the saved global adapter in the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny_models import synthetic_volume, tiny_loaded_model

from napari_vfmseg.federated.aggregate import Reply, aggregate_replies, check_payload, weighted_mean
from napari_vfmseg.federated.config import FederatedConfig
from napari_vfmseg.federated.result import save_global_adapter
from napari_vfmseg.federated.shared_lora import (
    BaseModelMismatch,
    exchanged_names,
    get_tensors,
    lora_names,
    prepare_lora,
    set_tensors,
)
from napari_vfmseg.federated.site import Site, find_site_files, parse_pair
from napari_vfmseg.models.lora import lora_modules
from napari_vfmseg.training.data import pairs_from_volume, split_by_plane_blocks

CONFIG = FederatedConfig(rounds=1, local_steps=2, images_per_step=2, prompts_per_image=2, lr=1e-2)


def _deltas(model) -> dict[str, torch.Tensor]:
    return {name: layer.delta_weight().detach().clone() for name, layer in lora_modules(model.sam)}


def _random_b(model, names, seed) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.normal(0, 0.1, get_tensors(model, [n])[n].shape).astype(np.float32) for n in names}


def test_shared_a_is_the_same_on_every_site_and_b_starts_at_zero():
    a, b = tiny_loaded_model(), tiny_loaded_model()
    names_a, names_b = prepare_lora(a, CONFIG), prepare_lora(b, CONFIG)
    assert names_a == names_b and names_a and all(n.endswith(".lora_B") for n in names_a)
    all_names = lora_names(a)
    ta, tb = get_tensors(a, all_names), get_tensors(b, all_names)
    for name in all_names:
        np.testing.assert_array_equal(ta[name], tb[name])
        if name.endswith(".lora_B"):
            assert not ta[name].any()
        else:
            assert ta[name].std() > 0
    other = tiny_loaded_model()
    prepare_lora(other, FederatedConfig(seed=1))
    a_name = next(n for n in all_names if n.endswith(".lora_A"))
    assert not np.allclose(get_tensors(other, [a_name])[a_name], ta[a_name])
    assert not any(p.requires_grad for p in a.sam.parameters())
    assert exchanged_names(a, "fedavg") == all_names


def test_ffa_average_of_b_is_exactly_the_average_of_the_updates_and_fedavg_is_not():
    model = tiny_loaded_model()
    names = prepare_lora(model, CONFIG)
    updates = [_random_b(model, names, seed) for seed in (1, 2, 3)]
    weights = [10, 30, 5]
    averaged = weighted_mean(updates, weights)
    for name in names:
        expected = sum(w * u[name].astype(np.float64) for w, u in zip(weights, updates)) / sum(weights)
        np.testing.assert_allclose(averaged[name], expected, rtol=1e-6, atol=1e-7)
    deltas = []
    for update in updates:
        set_tensors(model, update)
        deltas.append(_deltas(model))
    set_tensors(model, averaged)
    merged = _deltas(model)
    for layer in merged:
        mean_delta = sum(w * d[layer] for w, d in zip(weights, deltas)) / sum(weights)
        torch.testing.assert_close(merged[layer], mean_delta, rtol=1e-5, atol=1e-6)

    # FedAvg: A differs between sites after training, and mean(B) mean(A) is not mean(B A).
    fed = tiny_loaded_model()
    all_names = prepare_lora(fed, FederatedConfig(strategy="fedavg"))
    fed_updates = [_random_b(fed, all_names, seed) for seed in (4, 5)]
    fed_deltas = []
    for update in fed_updates:
        set_tensors(fed, update)
        fed_deltas.append(_deltas(fed))
    set_tensors(fed, weighted_mean(fed_updates, [1, 1]))
    layer = next(iter(fed_deltas[0]))
    gap = (_deltas(fed)[layer] - (fed_deltas[0][layer] + fed_deltas[1][layer]) / 2).abs().max()
    assert gap > 1e-4


def test_replies_with_anything_but_the_adapter_tensors_are_refused():
    model = tiny_loaded_model()
    names = prepare_lora(model, CONFIG)
    good = _random_b(model, names, 0)
    with_image = dict(good, image=np.zeros((8, 8), np.float32))
    with_weight = dict(good, **{"mask_decoder.iou_token.weight": np.zeros((1, 32), np.float32)})
    replies = [
        Reply("a", 1, {"arrays": good}, examples=4),
        Reply("b", 2, {"arrays": with_image}, examples=4),
        Reply("c", 3, {"arrays": with_weight}, examples=4),
        Reply("d", 4, {"arrays": good, "images": {"x": np.zeros(3, np.float32)}}, examples=4),
        Reply("e", 5, error="refused: other base"),
        Reply("f", 6, {"arrays": {n: v for n, v in good.items() if n != names[0]}}, examples=4),
    ]
    result = aggregate_replies(replies, names, server_round=1)
    assert [r.site for r in result.accepted] == ["a"]
    reasons = dict((r.site, why) for r, why in result.refused)
    assert "not exchanged adapter tensors" in reasons["b"] and "'image'" in reasons["b"]
    assert "iou_token" in reasons["c"]
    assert "one array record" in reasons["d"]
    assert "other base" in reasons["e"]
    assert "lacks" in reasons["f"]
    for name in names:
        np.testing.assert_array_equal(result.tensors[name], good[name])
    with pytest.raises(ValueError, match="not exchanged"):
        check_payload(list(good) + ["labels"], names)


def _site(name: str, seed: int, model) -> Site:
    image, labels = synthetic_volume(planes=12, size=64, seed=seed)
    pairs = pairs_from_volume(image, labels, source=name)
    train, heldout = split_by_plane_blocks(pairs, val_fraction=0.25, block_size=4, guard=0)
    return Site(name, model, train, heldout)


def test_a_site_with_another_base_model_is_refused_with_both_fingerprints():
    server = tiny_loaded_model(seed=0)
    names = prepare_lora(server, CONFIG)
    stranger = _site("hospital-b", 1, tiny_loaded_model(seed=1))
    with pytest.raises(BaseModelMismatch) as info:
        stranger.train_round(get_tensors(server, names), CONFIG, server.fingerprint)
    message = str(info.value)
    assert "hospital-b" in message and server.fingerprint in message and stranger.model.fingerprint in message


def test_a_site_round_trains_only_b_and_returns_only_the_exchanged_tensors():
    server = tiny_loaded_model()
    names = prepare_lora(server, CONFIG)
    site = _site("hospital-a", 0, tiny_loaded_model())
    base = {k: v.clone() for k, v in site.model.sam.state_dict().items()}
    tensors, examples, metrics = site.train_round(get_tensors(server, names), CONFIG, server.fingerprint)
    assert sorted(tensors) == sorted(names)
    assert examples == site.n_objects > 0
    assert any(np.abs(t).max() > 0 for t in tensors.values())       # B moved away from zero
    assert np.isfinite(metrics["train-loss"]) and metrics["seconds"] > 0
    after = site.model.sam.state_dict()
    for name, value in base.items():                                 # base weights untouched
        torch.testing.assert_close(after[name], value, rtol=0, atol=0)
    for name in lora_names(site.model):
        if name.endswith(".lora_A"):
            np.testing.assert_array_equal(get_tensors(site.model, [name])[name], get_tensors(server, [name])[name])
    scores = site.evaluate(tensors, CONFIG, server.fingerprint)
    assert scores["objects"] > 0 and 0.0 <= scores["box"] <= 1.0


def test_saved_global_adapter_loads_in_the_segmenter_and_changes_its_masks(tmp_path):
    from napari_vfmseg.engine import Segmenter
    from napari_vfmseg.training import apply_adapter, read_adapter

    server = tiny_loaded_model()
    names = prepare_lora(server, CONFIG)
    averaged = weighted_mean([_random_b(server, names, 1), _random_b(server, names, 2)], [3, 1])
    path = save_global_adapter(tmp_path / "global.safetensors", server, averaged, CONFIG, 2, ["a", "b"], 4)
    tensors, info = read_adapter(path)
    assert info.extra["federated"]["round"] == 2 and info.extra["federated"]["sites"] == ["a", "b"]
    assert info.extra["federated"]["examples"] == 4 and info.mode == "decoder"
    assert sorted(tensors) == lora_names(server)
    image, _ = synthetic_volume(planes=4, size=64, seed=3)
    plain = Segmenter(tiny_loaded_model())
    plain.set_image(image[1])
    before = plain.predict(box=(10, 10, 40, 40)).logits
    adapted_model = apply_adapter(tiny_loaded_model(), path)
    adapted = Segmenter(adapted_model)
    adapted.set_image(image[1])
    after = adapted.predict(box=(10, 10, 40, 40))
    assert after.mask.shape == image[1].shape
    assert not np.allclose(np.asarray(after.logits), np.asarray(before))


def test_config_round_trips_through_a_flower_record_and_rejects_bad_values():
    config = FederatedConfig(strategy="fedavg", rounds=3, lr=0.01, encoder_targets=("qkv",), sites_per_round=2)
    record = dict(config.to_record(), **{"server-round": 2, "base-fingerprint": "abc"})
    assert FederatedConfig.from_record(record) == config
    assert config.adapter_mode == "encoder-lora"
    with pytest.raises(ValueError, match="strategy"):
        FederatedConfig(strategy="fedprox")
    with pytest.raises(ValueError, match="rounds"):
        FederatedConfig(rounds=0)


def test_site_files_and_pairs_are_checked(tmp_path):
    assert parse_pair("a/scan.nii.gz:a/scan_labels.nii.gz")[1].name == "scan_labels.nii.gz"
    with pytest.raises(ValueError, match="IMAGE:LABELS"):
        parse_pair("scan.nii.gz")
    (tmp_path / "ct.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match="found 0 pairs"):
        find_site_files(tmp_path)
    (tmp_path / "ct_labels.nii.gz").write_bytes(b"")
    assert [p.name for p in find_site_files(tmp_path)] == ["ct.nii.gz", "ct_labels.nii.gz"]
    with pytest.raises(FileNotFoundError):
        find_site_files(tmp_path / "missing")
