"""The synthetic training stream and the resumable pre-training of the built-in architecture."""

from __future__ import annotations

import csv

import numpy as np
import torch

from napari_vfmseg.models.builtin import BuiltinConfig, build_builtin_sam
from napari_vfmseg.training.pretrain import PretrainConfig, evaluate_synthetic, pretrain
from napari_vfmseg.training.synth import SynthConfig, SynthGenerator

TINY = BuiltinConfig(img_size=64, widths=(8, 16, 32, 48), depths=(1, 1, 1), embed_dim=32,
                     decoder_depth=1, decoder_mlp_dim=64, decoder_heads=2)


def test_generator_is_seeded_and_objects_are_consistent():
    a = SynthGenerator(SynthConfig(size=96), seed=3).sample()
    b = SynthGenerator(SynthConfig(size=96), seed=3).sample()
    c = SynthGenerator(SynthConfig(size=96), seed=4).sample()
    assert torch.equal(a.image, b.image) and torch.equal(a.objects, b.objects)
    assert not torch.equal(a.image, c.image)
    assert a.image.shape == (96, 96) and 0.0 <= float(a.image.min()) and float(a.image.max()) <= 1.0
    assert a.objects.shape[1:] == (96, 96) and len(a.kind) == a.objects.shape[0] == a.parent.shape[0]
    assert a.kind[0] == "body"
    for k, kind in enumerate(a.kind):
        assert bool(a.objects[k].any())
        parent = int(a.parent[k])
        if kind == "part":  # a part lies inside the whole it belongs to
            assert a.kind[parent] == "whole"
            assert not bool((a.objects[k] & ~a.objects[parent]).any())


def test_generator_draws_nested_thin_and_small_structures():
    gen = SynthGenerator(SynthConfig(size=128), seed=0)
    kinds = [k for _ in range(12) for k in gen.sample().kind]
    for kind in ("body", "whole", "part", "tube", "small"):
        assert kind in kinds


def test_parts_differ_in_intensity_from_their_organ():
    gen = SynthGenerator(SynthConfig(size=128, contrast_min=0.1), seed=1)
    gaps = []
    for _ in range(6):
        s = gen.sample()
        for k, kind in enumerate(s.kind):
            if kind == "part":
                whole = s.objects[int(s.parent[k])] & ~s.objects[k]
                if whole.sum() > 50 and s.objects[k].sum() > 50:
                    gaps.append(abs(float(s.image[s.objects[k]].mean() - s.image[whole].mean())))
    assert gaps and np.median(gaps) > 0.02


def test_tiny_model_shapes_follow_the_config():
    sam = build_builtin_sam(TINY).eval()
    with torch.no_grad():
        embedding = sam.image_encoder(torch.zeros(2, 3, 64, 64))
    assert embedding.shape == (2, 32, 8, 8)
    assert sam.image_encoder.img_size == 64


def test_pretrain_runs_checkpoints_and_resumes(tmp_path):
    cfg = PretrainConfig(steps=2, images_per_step=2, prompts_per_image=2, eval_every=2, eval_images=2,
                         checkpoint_every=1, warmup_steps=1)
    first = pretrain(tmp_path, cfg, TINY)
    assert 0.0 <= first["box_dice"] <= 1.0 and first["n_objects"] > 0
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2
    # asking for more steps resumes from step 2 instead of starting over
    cfg.steps = 3
    pretrain(tmp_path, cfg, TINY)
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    # a run stopped between checkpoints logs steps it will run again: they are dropped on resume
    with open(tmp_path / "log.csv", "a", newline="") as handle:
        csv.writer(handle).writerow([4, 0.5, 1e-4, 1.0, "", "", ""])
    pretrain(tmp_path, cfg, TINY)
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    resumed = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert resumed["step"] == 3
    assert any(not torch.equal(state["model"][k], resumed["model"][k]) for k in state["model"])


def test_evaluation_reports_the_filled_box_baseline():
    samples = [SynthGenerator(SynthConfig(size=64), seed=s).sample() for s in range(2)]
    report = evaluate_synthetic(build_builtin_sam(TINY), samples, min_pixels=16)
    assert 0.3 < report["box_filled_dice"] <= 1.0


def test_export_writes_loadable_fp16_safetensors_with_metadata(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from napari_vfmseg.training.pretrain import export_weights

    cfg = PretrainConfig(steps=1, images_per_step=2, prompts_per_image=1, eval_every=1, eval_images=1,
                         checkpoint_every=1, warmup_steps=1)
    pretrain(tmp_path / "run", cfg, TINY)
    out = tmp_path / "weights" / "builtin.safetensors"
    metadata = export_weights(tmp_path / "run", out)
    assert json.loads(metadata["config"]) == json.loads(json.dumps(TINY.to_dict()))
    assert metadata["steps"] == "1" and metadata["images_seen"] == "2"
    assert "box_dice" in json.loads(metadata["synthetic_validation"])
    with safe_open(str(out), framework="pt") as handle:
        assert handle.metadata()["format"] == "napari-vfmseg builtin v1"
    tensors = load_file(str(out))
    assert all(t.dtype == torch.float16 for t in tensors.values() if t.is_floating_point())
    sam = build_builtin_sam(BuiltinConfig.from_dict(json.loads(metadata["config"])))
    sam.load_state_dict(tensors)  # strict: every key matches the architecture in the metadata
    assert not list(tmp_path.glob("weights/*.tmp"))


def test_a_new_run_can_start_from_exported_weights(tmp_path):
    from safetensors.torch import load_file

    from napari_vfmseg.training.pretrain import export_weights

    cfg = PretrainConfig(steps=1, images_per_step=2, prompts_per_image=1, eval_every=1, eval_images=1,
                         checkpoint_every=1, warmup_steps=1, lr=0.0, min_lr=0.0)
    pretrain(tmp_path / "first", cfg, TINY)
    weights = tmp_path / "first.safetensors"
    export_weights(tmp_path / "first", weights)
    pretrain(tmp_path / "second", cfg, TINY, init=weights)  # lr 0: the weights stay as loaded
    second = torch.load(tmp_path / "second" / "checkpoint.pt", weights_only=True)["model"]
    exported = load_file(str(weights))
    for key, value in exported.items():
        if value.is_floating_point() and "running" not in key:
            assert torch.equal(second[key].half(), value), key


def test_decoder_only_training_leaves_the_encoder_as_loaded(tmp_path):
    """--train decoder: the image encoder (weights and BatchNorm statistics) stays bit-identical,
    the prompt encoder and mask decoder learn, and the run resumes like a full one."""
    import pytest

    from safetensors.torch import load_file

    from napari_vfmseg.training.pretrain import export_weights, trainable_parameters

    start_cfg = PretrainConfig(steps=1, images_per_step=2, prompts_per_image=1, eval_every=1, eval_images=1,
                               checkpoint_every=1, warmup_steps=1)
    pretrain(tmp_path / "base", start_cfg, TINY)
    weights = tmp_path / "base.safetensors"
    export_weights(tmp_path / "base", weights)
    loaded = load_file(str(weights))
    cfg = PretrainConfig(steps=2, images_per_step=2, prompts_per_image=2, eval_every=2, eval_images=1,
                         checkpoint_every=1, warmup_steps=1, lr=1e-2, train="decoder", corrections=1,
                         correction_probability=1.0)
    pretrain(tmp_path / "decoder", cfg, TINY, init=weights)
    trained = torch.load(tmp_path / "decoder" / "checkpoint.pt", weights_only=True)
    assert trained["step"] == 2
    model = trained["model"]
    encoder_keys = [k for k in loaded if k.startswith("image_encoder.")]
    assert any("running_mean" in k for k in encoder_keys)  # BatchNorm statistics are among them
    for key in encoder_keys:
        assert torch.equal(model[key].to(loaded[key].dtype), loaded[key]), key
    decoder_keys = [k for k in loaded if k.startswith("mask_decoder.")]
    assert any(not torch.equal(model[k].half(), loaded[k]) for k in decoder_keys)
    cfg.steps = 3  # resumes from step 2 with the encoder still frozen
    pretrain(tmp_path / "decoder", cfg, TINY, init=weights)
    resumed = torch.load(tmp_path / "decoder" / "checkpoint.pt", weights_only=True)
    assert resumed["step"] == 3
    for key in encoder_keys:
        assert torch.equal(resumed["model"][key].to(loaded[key].dtype), loaded[key]), key
    sam = build_builtin_sam(TINY)
    names = {id(p): n for n, p in sam.named_parameters()}
    chosen = [names[id(p)] for p in trainable_parameters(sam, "decoder")]
    assert chosen and not any(n.startswith("image_encoder.") for n in chosen)
    assert len(trainable_parameters(sam, "all")) == len(list(sam.parameters()))
    with pytest.raises(ValueError, match="train must be one of"):
        PretrainConfig(train="encoder")
