"""Distillation: a short run on a tiny generated set, the student file, cancel/resume, adapter checks."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from _tiny_models import synthetic_volume, tiny_loaded_model
from napari_vfmseg.io import Volume
from napari_vfmseg.models.student import STUDENT_SIZES, StudentConfig, build_student_sam
from napari_vfmseg.training.adapters import AdapterError, AdapterInfo, save_adapter
from napari_vfmseg.training.distill import (
    DistillConfig, Distiller, apply_teacher_adapter, build_student, build_transfer_set, distill, read_checkpoint,
    volume_planes,
)
from napari_vfmseg.training.distill.measure import agreement, embedding_error
from napari_vfmseg.training.distill.targets import teacher_pass, to_student_grid
from napari_vfmseg.training.distill.transfer import labelled_planes

pytestmark = pytest.mark.usefixtures("one_thread")

# A student at 64 px (8 x 8 grid) under a 128-px tiny ViT teacher (16 x 16 grid): the grids differ,
# so matching on the student's grid is exercised in every run.
SMALL = dict(student_size="nano", img_size=64, batch=4, prompts_per_image=2, max_transfer_images=24,
             synthetic_fraction=0.2, objects_per_image=2, min_pixels=8, checkpoint_every=3)


@pytest.fixture(scope="module")
def volume():
    image, labels = synthetic_volume(planes=8, size=48, seed=1)
    return Volume(image, (2.0, 1.0, 1.0), (0.0, 0.0, 0.0)), labels


def test_grid_matching_averages_the_teacher_cells_under_each_student_cell():
    teacher = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    matched = to_student_grid(teacher, 2)
    assert matched.shape == (1, 1, 2, 2)
    assert matched[0, 0, 0, 0] == pytest.approx(np.mean([0, 1, 4, 5]))
    assert matched[0, 0, 1, 1] == pytest.approx(np.mean([10, 11, 14, 15]))
    odd = to_student_grid(torch.ones(1, 3, 5, 5), 2)   # not a multiple: antialiased resize, values kept
    assert torch.allclose(odd, torch.ones(1, 3, 2, 2))


def test_transfer_set_takes_every_axis_labels_and_synthetic_slices(volume):
    vol, labels = volume
    planes = volume_planes(vol.array, vol.spacing, axes=(0, 1, 2))
    assert {p.source.split(" axis ")[1][0] for p in planes} == {"0", "1", "2"}
    # Axis 0 planes have square pixels; axes 1 and 2 cross 2 mm planes with 1 mm pixels.
    assert {p.aspect for p in planes if " axis 0 " in p.source} == {1.0}
    assert {p.aspect for p in planes if " axis 1 " in p.source} == {2.0}
    labelled = labelled_planes(vol.array, labels, vol.spacing, min_pixels=8)
    assert labelled and all(p.labels is not None and p.labels.max() > 0 for p in labelled)
    transfer = build_transfer_set(planes, labelled, max_images=40, augment_fraction=0.5, synthetic_fraction=0.25,
                                  synthetic_size=64, seed=3)
    kinds = [t.kind for t in transfer]
    assert len(transfer) <= 40 and kinds.count("labelled") == len(labelled)
    real = kinds.count("plane") + len(labelled)
    assert kinds.count("synthetic") == min(round(0.25 * real), 40 - real) > 0
    assert 0 < sum("(augmented)" in t.source for t in transfer) < len(transfer)


def _transfer(vol, seed=0):
    planes = volume_planes(vol.array, vol.spacing)
    return build_transfer_set(planes, (), max_images=24, synthetic_fraction=0.2, synthetic_size=64, seed=seed)


def test_short_distillation_brings_embeddings_closer_and_agreement_up(volume):
    vol, _ = volume
    teacher = tiny_loaded_model(seed=0)
    transfer = _transfer(vol)
    config = DistillConfig(embed_steps=25, mask_steps=12, **SMALL)
    before = build_student(teacher, "nano", 64, seed=0)
    targets = teacher_pass(teacher, transfer, 64, objects_per_image=2, min_pixels=8)
    assert targets.n_objects > 0
    error_before = embedding_error(before, targets)["embedding_mse"]
    agree_before = agreement(before, teacher, targets)["box_agreement_dice"]
    student, cancelled = Distiller(teacher, transfer, config=config).run()
    assert not cancelled
    error_after = embedding_error(student, targets)["embedding_mse"]
    agree_after = agreement(student, teacher, targets)["box_agreement_dice"]
    assert error_after < 0.7 * error_before
    assert agree_after > agree_before
    # The student started from the teacher's decoder and kept its shape.
    assert student.sam.mask_decoder.transformer_dim == teacher.sam.mask_decoder.transformer_dim


def test_student_file_loads_segments_finetunes_and_carries_its_card(volume, tmp_path):
    from napari_vfmseg.engine import Segmenter
    from napari_vfmseg.models import load_model
    from napari_vfmseg.training import TrainConfig, fine_tune
    from napari_vfmseg.training.data import pairs_from_volume

    vol, labels = volume
    teacher = tiny_loaded_model(seed=0)
    out = tmp_path / "student.safetensors"
    config = DistillConfig(embed_steps=3, mask_steps=2, label_steps=2, **SMALL)
    result = distill(teacher, [vol], out, labels=[(vol, labels)], config=config, timing_repeats=2)
    assert out.is_file() and not result.cancelled
    assert not (tmp_path / "student.checkpoint.safetensors").exists()   # complete: nothing to resume
    card = result.card
    assert card["teacher"]["fingerprint"] == teacher.fingerprint and card["adapter"] is None
    assert card["steps"] == {"embed": 3, "mask": 2, "labels": 2}
    assert card["transfer"]["labelled"] > 0 and card["transfer"]["synthetic"] > 0
    for key in ("teacher_encoder_ms", "student_encoder_ms", "embedding_mse", "box_agreement_dice"):
        assert card["figures"][key] is not None

    student = load_model(out, device="cpu")
    assert student.arch == "student" and student.image_size == 64
    assert student.info["student_card"]["teacher"]["fingerprint"] == teacher.fingerprint
    assert student.fingerprint == result.student.fingerprint
    seg_file, seg_run = Segmenter(student), Segmenter(result.student)
    for seg in (seg_file, seg_run):
        seg.set_image(vol.array[4])
    a = seg_file.predict(box=(10, 10, 30, 30))
    b = seg_run.predict(box=(10, 10, 30, 30))
    assert a.mask.shape == vol.array[4].shape
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)

    pairs = pairs_from_volume(vol.array, labels, min_pixels=8)
    decoder_before = student.sam.mask_decoder.iou_token.weight.detach().clone()
    tuned = fine_tune(student, pairs, (), TrainConfig(mode="decoder", steps=2, images_per_step=2, min_pixels=8))
    assert tuned.steps_done == 2
    assert not torch.equal(decoder_before, student.sam.mask_decoder.iou_token.weight)


def test_cancel_keeps_the_last_checkpoint_and_resume_ends_where_an_uninterrupted_run_ends(volume, tmp_path):
    vol, _ = volume
    teacher = tiny_loaded_model(seed=0)
    transfer = _transfer(vol)
    config = DistillConfig(embed_steps=6, mask_steps=3, **SMALL)
    whole, _ = Distiller(teacher, transfer, config=config).run()

    checkpoint = tmp_path / "run.checkpoint.safetensors"
    cancel = threading.Event()

    def progress(p):
        if p.stage == "embed" and p.step == 4:
            cancel.set()

    _, cancelled = Distiller(teacher, transfer, config=config, progress=progress, cancel=cancel,
                             checkpoint=checkpoint).run()
    assert cancelled
    saved = read_checkpoint(checkpoint)
    assert (saved.stage, saved.step) == ("embed", 4)
    assert any(name.endswith("exp_avg") for name in saved.moments)

    resumed, cancelled = Distiller(teacher, transfer, config=config, checkpoint=checkpoint).run()
    assert not cancelled
    for name, value in whole.sam.state_dict().items():
        torch.testing.assert_close(resumed.sam.state_dict()[name], value, rtol=1e-5, atol=1e-6)

    other = DistillConfig(embed_steps=7, mask_steps=3, **SMALL)
    with pytest.raises(ValueError, match="checkpoint of another distillation"):
        Distiller(teacher, transfer, config=other, checkpoint=checkpoint).run()


def test_teacher_adapter_fitted_to_another_base_is_refused(tmp_path):
    teacher = tiny_loaded_model(seed=0)
    other = tiny_loaded_model(seed=1)
    tensors = {"mask_decoder.iou_token.weight": other.sam.mask_decoder.iou_token.weight.detach().clone() + 0.5}
    path = save_adapter(tmp_path / "other.safetensors", tensors,
                        AdapterInfo(base_fingerprint=other.fingerprint, mode="decoder", base_name=other.name))
    with pytest.raises(AdapterError, match=f"fitted to base model {other.name}.*{other.fingerprint}.*{teacher.fingerprint}"):
        apply_teacher_adapter(teacher, path)
    # The adapter's own base accepts it, and the student starts from the adapted decoder.
    apply_teacher_adapter(other, path)
    student = build_student(other, "nano", 64)
    torch.testing.assert_close(student.sam.mask_decoder.iou_token.weight, tensors["mask_decoder.iou_token.weight"])


def test_student_sizes_shrink_and_keep_the_decoder_grid():
    sizes = [sum(p.numel() for p in build_student_sam(StudentConfig(size=name, widths=w, depths=d, neck_dim=n))
                 .image_encoder.parameters()) for name, (w, d, n) in STUDENT_SIZES.items()]
    assert sizes == sorted(sizes, reverse=True)
    sam = build_student_sam(StudentConfig(img_size=128))
    assert sam.image_encoder(torch.zeros(1, 3, 128, 128)).shape == (1, 256, 16, 16)


def _write_scan(path, image, spacing):
    import SimpleITK as sitk

    itk = sitk.GetImageFromArray(image)
    itk.SetSpacing(tuple(float(v) for v in reversed(spacing)))
    sitk.WriteImage(itk, str(path))
    return path


def test_cli_distill_writes_a_student_that_segment_loads(tmp_path, capsys):
    from napari_vfmseg.cli import main

    from napari_vfmseg.training.distill import save_student

    image, _ = synthetic_volume(planes=6, size=48, seed=2)
    source = _write_scan(tmp_path / "scan.nii.gz", image, (2.0, 1.0, 1.0))
    # A student file is a model like any other: here an undistilled one serves as a small teacher.
    teacher = save_student(tmp_path / "teacher.safetensors", build_student(tiny_loaded_model(seed=0), "tiny", 128),
                           {"teacher": {"name": "tiny"}})
    out = tmp_path / "student.safetensors"
    code = main(["distill", str(source), "--teacher", str(teacher), "--student", "nano", "--student-input", "64",
                 "--out", str(out), "--embed-steps", "1", "--mask-steps", "1", "--batch", "2", "--max-images", "3",
                 "--synthetic", "0", "--timing-repeats", "2", "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["student_file"] == str(out) and summary["teacher"]["name"] == str(teacher)
    assert summary["teacher"]["arch"] == "student" and summary["teacher"]["image_size"] == 128
    assert summary["figures"]["teacher_encoder_ms"] > 0 and summary["figures"]["student_encoder_ms"] > 0
    code = main(["segment", str(source), "--model", str(out), "--box", "3,10,10,30,30",
                 "--out", str(tmp_path / "mask.nii.gz")])
    assert code == 0 and (tmp_path / "mask.nii.gz").is_file()


def test_cli_distill_refuses_an_adapter_of_another_base(tmp_path, capsys):
    from napari_vfmseg.cli import main

    image, _ = synthetic_volume(planes=4, size=32)
    source = _write_scan(tmp_path / "scan.nii.gz", image, (1.0, 1.0, 1.0))
    tiny = tiny_loaded_model(seed=0)
    adapter = save_adapter(tmp_path / "tiny.safetensors",
                           {"mask_decoder.iou_token.weight": tiny.sam.mask_decoder.iou_token.weight.detach()},
                           AdapterInfo(base_fingerprint=tiny.fingerprint, mode="decoder", base_name=tiny.name))
    code = main(["distill", str(source), "--teacher", "builtin", "--teacher-adapter", str(adapter),
                 "--out", str(tmp_path / "s.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and "fitted to base model" in err and str(adapter) in err
    assert not (tmp_path / "s.safetensors").exists()


def test_student_starts_from_the_decoder_the_teacher_computes_with_under_unmerged_lora():
    from napari_vfmseg.models.lora import LoRAConfig, inject_lora, lora_modules

    teacher = tiny_loaded_model(seed=0)
    inject_lora(teacher.sam, LoRAConfig(rank=2, alpha=2.0, encoder_targets=(), decoder_targets=("q_proj",)))
    name, layer = next(lora_modules(teacher.sam.mask_decoder))
    with torch.no_grad():
        layer.lora_B.normal_(0.0, 0.5)
    student = build_student(teacher, "nano", 64)
    copied = dict(student.sam.mask_decoder.named_parameters())[f"{name}.weight"]
    torch.testing.assert_close(copied, layer.weight + layer.delta_weight())
    assert not torch.allclose(copied, layer.weight)
