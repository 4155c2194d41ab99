"""Task-specific distillation on a real scan: student vs fine-tuned teacher, and the seed paper's comparison.

Teacher: the built-in model plus the adapter of the default fine-tuning round
(``training.rounds.run_round`` with ``RoundConfig()``) on N corrected planes of ``--axis`` (spread
over the object's extent). Transfer set: the same scan, unlabelled (every plane along every axis,
augmented, plus synthetic slices). Scored with box and 1-click Dice (one prompt, the engine's
``Segmenter``) on the other planes along every axis (the corrected planes left out on their axis),
beside filling the box; ``--other VOLUME LABELS`` scores an unseen scan too.

Variants (``--variants``):
  specific          distil from the fine-tuned teacher, then a round on the N planes (task-specific)
  specific-nosynth  the same without synthetic slices in the transfer set
  agnostic          distil from the base teacher (once, without labels), then the labels stage's round
                    on the N planes (task-agnostic)
  alone             the student (teacher's decoder, random encoder) trained on the N planes only

Prints one line per variant and one JSON line; timings come with ``os.getloadavg()`` (the machine
may be shared). Example::

    timeout 3000 python benchmarks/bench_distill.py --counts 3 --variants specific,agnostic,alone
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def corrected_planes(labels: np.ndarray, axis: int, count: int) -> list[int]:
    """``count`` planes along ``axis`` spread over the labelled extent (30 % .. 70 % of it)."""
    moved = np.moveaxis(labels, axis, 0)
    filled = np.flatnonzero(moved.reshape(moved.shape[0], -1).any(axis=1))
    first, last = int(filled[0]), int(filled[-1])
    fractions = np.linspace(0.3, 0.7, count) if count > 1 else np.array([0.5])
    return sorted({int(round(first + f * (last - first))) for f in fractions})


def scores(model, image, labels, spacing, modality, axis: int, planes: list[int], max_objects: int) -> dict:
    """Box and 1-click Dice per axis (objects spread evenly, at most ``max_objects`` per axis)."""
    from napari_vfmseg.engine import Segmenter
    from napari_vfmseg.training.metrics import evaluate_volume, segmenter_plane_predictor

    out = {}
    for a in (0, 1, 2):
        seg = Segmenter(model)
        seg.set_volume(image, axis=a, modality=modality, spacing=spacing)
        lab = labels.copy()
        if a == axis and planes:
            np.moveaxis(lab, a, 0)[planes] = 0
        predict = segmenter_plane_predictor(seg)
        box = evaluate_volume(predict, image, lab, a, prompt="box", max_clicks=1, max_objects=max_objects).summary()
        click = evaluate_volume(predict, image, lab, a, prompt="point", max_clicks=1, max_objects=max_objects).summary()
        out[a] = {"box": round(box["dice_mean"], 4), "click": round(click["dice_mean"], 4),
                  "fill": round(box["baselines"]["box_fill_dice_mean"], 4)}
    out["mean"] = {k: round(float(np.mean([out[a][k] for a in (0, 1, 2)])), 4) for k in ("box", "click", "fill")}
    return out


def fitted_teacher(args, base, image, labels, modality, planes):
    """The base model with the default round's adapter on ``planes`` of ``args.axis`` (a new record)."""
    from napari_vfmseg.training.adapters import save_adapter
    from napari_vfmseg.training.data import pairs_from_volume
    from napari_vfmseg.training.distill import load_teacher
    from napari_vfmseg.training.rounds import RoundConfig, run_round

    keep = np.zeros_like(labels)
    np.moveaxis(keep, args.axis, 0)[planes] = np.moveaxis(labels, args.axis, 0)[planes]
    pairs = pairs_from_volume(image, keep, axis=args.axis, modality=modality, source="corrected")
    started = time.perf_counter()
    round_config = RoundConfig(seed=args.seed)
    if args.round_steps:
        round_config = replace(round_config, steps=args.round_steps)
    result = run_round(base, pairs, config=round_config)
    adapter = Path(tempfile.mkdtemp()) / "adapter.safetensors"
    save_adapter(adapter, result.tensors, result.info)
    teacher = load_teacher(args.teacher, adapter, device="cpu")
    return teacher, pairs, {"round_seconds": round(time.perf_counter() - started, 1), "improved": result.improved,
                            "round": {k: result.summary()[k] for k in ("dice_before", "dice_after", "notes")}}


def _label_round(student, pairs, config) -> None:
    """The distillation's final round (``labels`` stage settings) on ``pairs``, in place."""
    from napari_vfmseg.training import TrainConfig, fine_tune

    steps = config.label_steps
    fine_tune(student, pairs, (), TrainConfig(mode="full", steps=steps, lr=config.label_lr, seed=config.seed,
                                              augment=True, val_every=0, early_stop_patience=0,
                                              warmup_steps=max(1, min(10, steps // 10)),
                                              min_pixels=config.min_pixels))


_AGNOSTIC: dict = {}   # the task-agnostic student does not depend on the labelled planes: distilled once


def run_variant(name, args, base, teacher, volume, labels, pairs, config):
    """(student, figures) of one variant."""
    from napari_vfmseg.training import TrainConfig, fine_tune
    from napari_vfmseg.training.distill import build_student, distill
    from napari_vfmseg.training.distill.measure import encoder_times
    from napari_vfmseg.training.distill.transfer import volume_planes

    label_volume = np.zeros_like(labels)
    for pair in pairs:
        np.moveaxis(label_volume, args.axis, 0)[pair.plane] = pair.labels
    label_arg = [(volume, label_volume)] if args.axis == 0 else []   # distill() takes labelled planes along axis 0
    started = time.perf_counter()
    if name == "alone":
        student = build_student(base, config.student_size, config.img_size, config.seed)
        steps = config.mask_steps + config.label_steps   # as many steps as the distillation's mask stage and round
        result = fine_tune(student, pairs, (), TrainConfig(mode="full", steps=steps, lr=1e-3, seed=config.seed,
                                                           val_every=0, early_stop_patience=0))
        sample = volume_planes(volume.array, volume.spacing, axes=(0,))[::8][:10]
        figures = {"seconds": round(time.perf_counter() - started, 1), "steps": result.steps_done,
                   **encoder_times(teacher, student, sample, args.timing_repeats)}
        return student, figures
    if name == "agnostic":
        # Distilled from the base teacher on the unlabelled scan once, then, for each count of labelled
        # planes, the same final round on them as the task-specific student gets in its labels stage.
        from napari_vfmseg.training.distill.measure import encoder_times as times
        from napari_vfmseg.training.rounds import copy_model

        if "student" not in _AGNOSTIC:
            result = distill(base, [volume], None, config=replace(config, label_steps=0),
                             timing_repeats=args.timing_repeats)
            _AGNOSTIC.update(student=result.student, card=result.card, seconds=time.perf_counter() - started)
        student = copy_model(_AGNOSTIC["student"])
        round_started = time.perf_counter()
        if config.label_steps:
            _label_round(student, pairs, config)
        card = _AGNOSTIC["card"]
        figures = {k: card["figures"].get(k) for k in ("embedding_mse", "box_agreement_dice")}
        figures["transfer_images"] = card["transfer"]["images"]
        figures["distill_seconds"] = round(_AGNOSTIC["seconds"], 1)
        figures["round_seconds"] = round(time.perf_counter() - round_started, 1)
        figures["seconds"] = round(_AGNOSTIC["seconds"] + figures["round_seconds"], 1)
        sample = volume_planes(volume.array, volume.spacing, axes=(0,))[::8][:10]
        figures.update(times(teacher, student, sample, args.timing_repeats))   # against the fitted teacher
        return student, figures
    source = teacher
    cfg = replace(config, synthetic_fraction=0.0) if name == "specific-nosynth" else config
    if not label_arg:   # labels given on another axis: the final round runs here, as for "alone"
        cfg = replace(cfg, label_steps=0)
    result = distill(source, [volume], None, labels=label_arg, config=cfg, timing_repeats=args.timing_repeats)
    student = result.student
    if not label_arg and config.label_steps:
        _label_round(student, pairs, config)
    figures = {k: result.card["figures"].get(k) for k in ("seconds", "teacher_encoder_ms", "student_encoder_ms",
                                                           "encoder_speedup", "embedding_mse", "box_agreement_dice")}
    figures["transfer_images"] = result.card["transfer"]["images"]
    figures["seconds"] = round(time.perf_counter() - started, 1)
    return student, figures


def time_sizes(args, volume) -> dict:
    """Encoder ms per plane of the teacher and of every student size, measured alternately."""
    from napari_vfmseg.models import load_model
    from napari_vfmseg.models.student import STUDENT_SIZES
    from napari_vfmseg.training.distill import build_student
    from napari_vfmseg.training.distill.measure import encoder_times
    from napari_vfmseg.training.distill.transfer import volume_planes

    teacher = load_model(args.teacher, device="cpu")
    sample = volume_planes(volume.array, volume.spacing, axes=(0, 1, 2))[::25][:12]
    out = {}
    for size in STUDENT_SIZES:
        student = build_student(teacher, size, args.img_size)
        load = os.getloadavg()[0]
        figures = encoder_times(teacher, student, sample, args.timing_repeats)
        out[size] = {**figures, "encoder_parameters": student.info["encoder_parameters"], "load": round(load, 2)}
        print(f"{size:<8} {figures['student_encoder_ms']:>8.2f} ms vs teacher {figures['teacher_encoder_ms']:.2f} ms "
              f"({figures['encoder_speedup']}x); {out[size]['encoder_parameters']} parameters; load {load:.2f}",
              flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volume", default=str(ROOT / "sample_data" / "mni_brain_t1.nii.gz"))
    parser.add_argument("--labels", default=str(ROOT / "sample_data" / "mni_brain_t1_labels.nii.gz"))
    parser.add_argument("--objects", default="brain", choices=("brain", "as-is"),
                        help="brain: all label ids merged into one object (default)")
    parser.add_argument("--other", nargs=2, default=None, metavar=("VOLUME", "LABELS"), help="an unseen scan to score")
    parser.add_argument("--axis", type=int, default=0)
    parser.add_argument("--counts", default="3", help="labelled planes, comma-separated (default 3)")
    parser.add_argument("--variants", default="specific", help="comma-separated, see the module docstring")
    parser.add_argument("--teacher", default="builtin")
    parser.add_argument("--round-steps", type=int, default=None, help="fine-tuning round steps (default: RoundConfig's)")
    parser.add_argument("--student", default="tiny")
    parser.add_argument("--img-size", type=int, default=256)
    parser.add_argument("--embed-steps", type=int, default=300)
    parser.add_argument("--mask-steps", type=int, default=150)
    parser.add_argument("--label-steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-images", type=int, default=480)
    parser.add_argument("--max-objects", type=int, default=16, help="scored objects per axis (default 16)")
    parser.add_argument("--timing-repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sizes-only", action="store_true", help="only time the encoder of every student size")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from napari_vfmseg.io import read_volume
    from napari_vfmseg.models import load_model
    from napari_vfmseg.training.distill import DistillConfig

    volume = read_volume(args.volume)
    if args.sizes_only:
        print(json.dumps({"sizes": time_sizes(args, volume), "threads": args.threads}))
        return 0
    image = np.asarray(volume.array)
    labels = np.asarray(read_volume(args.labels).array)
    labels = (labels > 0).astype(np.int32) if args.objects == "brain" else labels.astype(np.int32)
    modality = volume.modality or "MR"
    spacing = tuple(float(s) for s in volume.spacing)
    other = None
    if args.other:
        other_volume = read_volume(args.other[0])
        other_labels = np.asarray(read_volume(args.other[1]).array)
        other_labels = (other_labels > 0).astype(np.int32) if args.objects == "brain" else other_labels.astype(np.int32)
        other = (other_volume, other_labels)
    config = DistillConfig(student_size=args.student, img_size=args.img_size, embed_steps=args.embed_steps,
                           mask_steps=args.mask_steps, label_steps=args.label_steps, batch=args.batch,
                           max_transfer_images=args.max_images, seed=args.seed)
    base = load_model(args.teacher, device="cpu")
    rows = []
    for count in [int(c) for c in args.counts.split(",")]:
        planes = corrected_planes(labels, args.axis, count)
        load = os.getloadavg()
        teacher, pairs, round_figures = fitted_teacher(args, base, image, labels, modality, planes)
        row = {"labelled_planes": count, "planes": planes, **round_figures, "load_start": round(load[0], 2),
               "base": scores(base, image, labels, spacing, modality, args.axis, planes, args.max_objects),
               "teacher": scores(teacher, image, labels, spacing, modality, args.axis, planes, args.max_objects)}
        if other is not None:
            row["teacher_other"] = scores(teacher, np.asarray(other[0].array), other[1], tuple(other[0].spacing),
                                          other[0].modality or modality, args.axis, [], args.max_objects)
        print(f"{count} planes {planes}: base {row['base']['mean']} | teacher {row['teacher']['mean']} "
              f"(round {round_figures['round_seconds']} s)", flush=True)
        for name in args.variants.split(","):
            load = os.getloadavg()
            student, figures = run_variant(name, args, base, teacher, volume, labels, pairs, config)
            result = {"figures": figures, "load": [round(load[0], 2), round(os.getloadavg()[0], 2)],
                      "scores": scores(student, image, labels, spacing, modality, args.axis, planes, args.max_objects)}
            if other is not None:
                result["scores_other"] = scores(student, np.asarray(other[0].array), other[1],
                                                tuple(other[0].spacing), other[0].modality or modality, args.axis, [],
                                                args.max_objects)
            t_mean, s_mean = row["teacher"]["mean"], result["scores"]["mean"]
            result["retained"] = {k: round(s_mean[k] / t_mean[k], 4) for k in ("box", "click")}
            row[name] = result
            print(f"  {name:<17} box {s_mean['box']:.3f} click {s_mean['click']:.3f} "
                  f"(retained {result['retained']['box']:.1%} / {result['retained']['click']:.1%}); encoder "
                  f"{figures.get('student_encoder_ms')} ms vs teacher {figures.get('teacher_encoder_ms')} ms; "
                  f"{figures['seconds']} s; load {result['load']}", flush=True)
        rows.append(row)
    print(json.dumps({"config": config.to_dict(), "volume": args.volume, "other": args.other, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
