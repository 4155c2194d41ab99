"""Figures of a distillation: encoder time per plane, embedding error and mask agreement.

- :func:`encoder_times`: median milliseconds per plane (resize, normalise, encode; batch 1, as the
  engine embeds a plane) of teacher and student, measured alternately in the same process.
- :func:`embedding_error`: mean squared error between the student's embeddings and the teacher's on
  the student's grid, over (at most 32) transfer images.
- :func:`agreement`: mean Dice between the student's and the teacher's masks for a box around each
  object of (at most 16) transfer images.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
import torch

from napari_vfmseg.engine.preprocess import encoder_input
from napari_vfmseg.training.distill.steps import student_embeddings, teacher_embeddings
from napari_vfmseg.training.distill.targets import TargetSet, prepare, to_student_grid
from napari_vfmseg.training.distill.transfer import TransferImage
from napari_vfmseg.training.forward import decode
from napari_vfmseg.training.metrics import dice
from napari_vfmseg.training.prompts import PromptSet, bounding_box

__all__ = ["encoder_times", "embedding_error", "agreement"]


@torch.inference_mode()
def _encode_once(model, item: TransferImage) -> float:
    preprocess = str(model.info.get("preprocess") or "sam")
    started = time.perf_counter()
    prepared = prepare(item, model.image_size, preprocess)
    with torch.autocast(model.device.type, dtype=model.encoder_dtype, enabled=model.encoder_dtype is not None):
        model.sam.image_encoder(encoder_input([prepared], model.sam, model.device))
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return time.perf_counter() - started


def encoder_times(teacher, student, items: Sequence[TransferImage], repeats: int = 10) -> dict:
    """``teacher_encoder_ms``, ``student_encoder_ms`` (medians per plane) and ``encoder_speedup``."""
    items = list(items)
    for model in (teacher, student):  # warm-up
        _encode_once(model, items[0])
    times = {"teacher": [], "student": []}
    for r in range(max(1, repeats)):
        item = items[r % len(items)]
        times["teacher"].append(_encode_once(teacher, item))
        times["student"].append(_encode_once(student, item))
    t_ms, s_ms = (1000.0 * float(np.median(times[k])) for k in ("teacher", "student"))
    return {"teacher_encoder_ms": round(t_ms, 2), "student_encoder_ms": round(s_ms, 2),
            "encoder_speedup": round(t_ms / s_ms, 2) if s_ms > 0 else None, "timing_planes": len(times["student"])}


def _sample(targets: TargetSet, limit: int) -> list[int]:
    return np.unique(np.linspace(0, len(targets) - 1, min(limit, len(targets))).round().astype(int)).tolist()


@torch.no_grad()
def embedding_error(student, targets: TargetSet, limit: int = 32) -> dict:
    """``embedding_mse`` of the student against the teacher and ``embedding_mse_zero`` (the error of
    an all-zero embedding, i.e. the teacher embeddings' mean square) for scale."""
    errors, scale = [], []
    for index in _sample(targets, limit):
        s_emb = student_embeddings(student, targets, [index])
        t_emb = to_student_grid(teacher_embeddings(targets, [index], student.device), s_emb.shape[-1])
        errors.append(float(torch.mean((s_emb - t_emb) ** 2)))
        scale.append(float(torch.mean(t_emb ** 2)))
    return {"embedding_mse": round(float(np.mean(errors)), 5), "embedding_mse_zero": round(float(np.mean(scale)), 5)}


@torch.no_grad()
def agreement(student, teacher, targets: TargetSet, limit: int = 16) -> dict:
    """``box_agreement_dice``: student vs teacher masks (student frame) for tight boxes on the objects."""
    from torch.nn import functional as F

    scores = []
    scale = teacher.image_size / student.image_size
    side = targets.side
    for index in _sample(targets, limit):
        masks = targets.object_masks(index)
        if not len(masks):
            continue
        boxes = np.array([bounding_box(m) for m in masks], np.float32)
        s_emb = student_embeddings(student, targets, [index])
        t_emb = teacher_embeddings(targets, [index], teacher.device)
        s_low, _ = decode(student.sam, s_emb, PromptSet(None, None, boxes))
        t_low, _ = decode(teacher.sam, t_emb, PromptSet(None, None, boxes * scale))
        s_mask = F.interpolate(s_low.float(), (side, side), mode="bilinear", align_corners=False)[:, 0] > 0
        t_mask = F.interpolate(t_low.float(), (side, side), mode="bilinear", align_corners=False)[:, 0] > 0
        scores += [dice(a, b) for a, b in zip(s_mask.cpu().numpy(), t_mask.cpu().numpy()) if b.any()]
    return {"box_agreement_dice": round(float(np.mean(scores)), 4) if scores else None,
            "agreement_objects": len(scores)}
