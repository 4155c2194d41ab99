"""One optimiser step of each distillation stage: losses between the student and the teacher.

Stage 1 (:func:`embedding_loss`): mean squared error between the student's (B, C, g, g) embeddings
and the teacher's matched to the student's grid (:func:`.targets.to_student_grid`).

Stage 2 (:func:`mask_loss`): on each image of the batch, up to ``prompts_per_image`` objects get
one kind of prompt drawn for the step: a jittered box, one interior click (the three multimask
outputs are matched, as the engine uses them for a single click), or a box or click followed by a
correction click where the student's answer differs from the object (with each network's own
previous logits as mask input, as the interactive protocol feeds them). The student's low-res
logits follow the teacher's probabilities (binary cross-entropy with soft targets) and its IoU
scores the teacher's (mean squared error). Prompts are (row, col) in the student's frame and
scaled for the teacher.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from napari_vfmseg.training.batched import decode_paired, encode_prompts
from napari_vfmseg.training.distill.targets import TargetSet, to_student_grid
from napari_vfmseg.training.prompts import bounding_box, correction_click, jitter_box, sample_points

__all__ = ["PROMPT_KINDS", "student_embeddings", "teacher_embeddings", "embedding_loss", "mask_loss"]

PROMPT_KINDS = ("box", "click", "correction")


def student_embeddings(student, targets: TargetSet, indices: Sequence[int]) -> torch.Tensor:
    """(B, C, g, g) student embeddings of the transfer images ``indices`` (gradients flow)."""
    from napari_vfmseg.engine.preprocess import encoder_input

    batch = encoder_input([targets.inputs[i] for i in indices], student.sam, student.device)
    return student.sam.image_encoder(batch)


def teacher_embeddings(targets: TargetSet, indices: Sequence[int], device) -> torch.Tensor:
    """(B, C, g_t, g_t) float32 teacher embeddings (from the teacher pass) on ``device``."""
    return torch.stack([targets.embeddings[i] for i in indices]).to(device, torch.float32)


def embedding_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Mean squared error on the student's grid."""
    return F.mse_loss(student_emb, to_student_grid(teacher_emb, student_emb.shape[-1]))


def _first_prompts(masks: np.ndarray, kind: str, rng: np.random.Generator
                   ) -> tuple[Optional[np.ndarray], Optional[np.ndarray], Optional[np.ndarray]]:
    """Points (N, 1, 2), labels (N, 1) or boxes (N, 4), (row, col) in the student frame."""
    shape = masks.shape[1:]
    if kind == "box":
        boxes = np.array([jitter_box(bounding_box(m), shape, rng) for m in masks], np.float32)
        return None, None, boxes
    points = np.stack([sample_points(m, 1, rng)[0] for m in masks]).astype(np.float32)[:, None, :]
    return points, np.ones((len(masks), 1), np.int64), None


def _run(sam, emb, points, labels, boxes, mask_input, multimask, device):
    pts = torch.as_tensor(points, device=device) if points is not None else None
    lab = torch.as_tensor(labels, device=device) if labels is not None else None
    box = torch.as_tensor(boxes, device=device) if boxes is not None else None
    sparse, dense = encode_prompts(sam, pts, lab, box, mask_input)
    return decode_paired(sam, emb, sparse, dense, multimask)


def _best(low: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
    """(N, 1, h, w): the mask each prediction's own IoU score ranks first."""
    return low[torch.arange(low.shape[0]), iou.argmax(dim=1)][:, None]


def mask_loss(student, teacher, s_emb: torch.Tensor, t_emb: torch.Tensor, targets: TargetSet,
              indices: Sequence[int], rng: np.random.Generator, prompts_per_image: int = 4,
              iou_weight: float = 1.0) -> Optional[torch.Tensor]:
    """Soft-target loss of the student's masks and IoU scores against the teacher's, or None when
    no image of the batch has an object."""
    device = student.device
    rows, objects = [], []
    for row, index in enumerate(indices):
        masks = targets.object_masks(index)
        if len(masks) > prompts_per_image:
            masks = masks[np.sort(rng.choice(len(masks), prompts_per_image, replace=False))]
        rows.extend([row] * len(masks))
        objects.append(masks)
    if not rows:
        return None
    masks = np.concatenate(objects)
    kind = PROMPT_KINDS[int(rng.integers(len(PROMPT_KINDS)))]
    first = "box" if kind == "box" or (kind == "correction" and rng.random() < 0.5) else "click"
    points, labels, boxes = _first_prompts(masks, first, rng)
    scale = teacher.image_size / student.image_size
    pick = torch.as_tensor(rows, device=device)
    s_emb, t_emb = s_emb[pick], t_emb[pick]
    low_side = s_emb.shape[-1] * 4
    multimask = first == "click" and kind == "click"

    def teacher_run(points, labels, boxes, mask_input, multimask):
        with torch.no_grad():
            return _run(teacher.sam, t_emb, None if points is None else points * scale, labels,
                        None if boxes is None else boxes * scale, mask_input, multimask, device)

    if kind == "correction":
        with torch.no_grad():
            s_low, s_iou = _run(student.sam, s_emb, points, labels, boxes, None, first == "click", device)
        t_low, t_iou = teacher_run(points, labels, boxes, None, first == "click")
        s_prev, t_prev = _best(s_low, s_iou), _best(t_low, t_iou)
        side = targets.side
        predicted = (F.interpolate(s_prev, (side, side), mode="bilinear", align_corners=False)[:, 0] > 0).cpu().numpy()
        clicks = [correction_click(p, m) for p, m in zip(predicted, masks)]
        extra = np.array([[c.row, c.col] if c else [0, 0] for c in clicks], np.float32)[:, None, :]
        extra_labels = np.array([[c.label if c else -1] for c in clicks], np.int64)
        points = extra if points is None else np.concatenate([points, extra], axis=1)
        labels = extra_labels if labels is None else np.concatenate([labels, extra_labels], axis=1)
        s_low, s_iou = _run(student.sam, s_emb, points, labels, boxes, s_prev.detach(), False, device)
        t_low, t_iou = teacher_run(points, labels, boxes, t_prev, False)
    else:
        s_low, s_iou = _run(student.sam, s_emb, points, labels, boxes, None, multimask, device)
        t_low, t_iou = teacher_run(points, labels, boxes, None, multimask)
    soft = torch.sigmoid(to_student_grid(t_low.float(), low_side))
    return F.binary_cross_entropy_with_logits(s_low, soft) + iou_weight * F.mse_loss(s_iou, t_iou.float())
