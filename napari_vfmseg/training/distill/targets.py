"""The teacher's side of distillation: its embeddings of the transfer set, matched to the student's
grid, and the objects its prompts are aimed at.

Grid matching. Both networks see a plane the engine's way: resized so its long side fills the
encoder's square input (teacher side S_t, student side S_s), placed at the top-left, zero-padded.
Embedding cell (i, j) of either grid therefore covers the same fraction of the plane, and the
teacher's (C, S_t/p_t, S_t/p_t) grid is brought to the student's (C, g, g) by averaging the teacher
cells that cover each student cell (``avg_pool2d`` when the sizes divide, e.g. ViT-B's 64 x 64 grid
onto a 256-px student's 32 x 32; antialiased bilinear otherwise). Low-resolution mask logits are
matched the same way. Prompts are given in the student's frame and scaled by S_t / S_s for the
teacher.

Objects. Labelled and synthetic planes bring their own objects. On an unlabelled plane the teacher
is clicked at random bright-enough points and its best mask for each click (by its own IoU score)
becomes a pseudo-object, kept when it is neither tiny nor most of the plane and unlike those kept.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from napari_vfmseg.engine.preprocess import PreparedImage, encoder_input, prepare_image
from napari_vfmseg.training.data import _resize_nearest, object_ids
from napari_vfmseg.training.distill.transfer import TransferImage
from napari_vfmseg.training.forward import decode
from napari_vfmseg.training.prompts import PromptSet

__all__ = ["TargetSet", "to_student_grid", "prepare", "teacher_pass"]


def to_student_grid(values: torch.Tensor, side: int) -> torch.Tensor:
    """(B, C, h, h) teacher embeddings or logits → (B, C, side, side) on the student's grid."""
    h = values.shape[-1]
    if h == side:
        return values
    if h % side == 0 and values.shape[-2] % side == 0:
        return F.avg_pool2d(values, h // side)
    return F.interpolate(values, (side, side), mode="bilinear", align_corners=False, antialias=True)


def prepare(item: TransferImage, size: int, preprocess: str) -> PreparedImage:
    """``item`` resized for an encoder of side ``size`` in its true proportions, as the engine does."""
    return prepare_image(item.image, None, size, preprocess, pixel_aspect=item.aspect)


@dataclass
class TargetSet:
    """Teacher targets for the transfer set, index for index.

    ``inputs``: the student-frame images; ``embeddings``: the teacher's (C, g_t, g_t) float16 on the
    CPU, at its own grid; ``objects``: bit-packed (K, S_s, S_s) bool masks in the student's padded
    frame (K may be 0); ``side``: S_s.
    """

    inputs: list[PreparedImage]
    embeddings: list[torch.Tensor]
    objects: list[tuple[np.ndarray, int]]
    side: int

    def __len__(self) -> int:
        return len(self.inputs)

    def object_masks(self, index: int) -> np.ndarray:
        packed, count = self.objects[index]
        flat = np.unpackbits(packed, count=count * self.side * self.side)
        return flat.reshape(count, self.side, self.side).astype(bool)

    @property
    def n_objects(self) -> int:
        return int(sum(count for _, count in self.objects))


def _pack(masks: np.ndarray) -> tuple[np.ndarray, int]:
    return np.packbits(np.asarray(masks, dtype=bool).reshape(-1)), int(masks.shape[0])


def _label_objects(item: TransferImage, prepared: PreparedImage, side: int, limit: int, min_pixels: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Up to ``limit`` of the item's labelled objects, in the student's padded frame."""
    h, w = prepared.geometry.input_size
    framed = np.zeros((side, side), np.int32)
    framed[:h, :w] = _resize_nearest(np.asarray(item.labels), (h, w))   # as fine-tuning frames labels
    ids = object_ids(framed, min_pixels)
    if len(ids) > limit:
        ids = sorted(rng.choice(ids, size=limit, replace=False).tolist())
    return np.stack([framed == i for i in ids]) if ids else np.zeros((0, side, side), bool)


@torch.no_grad()
def _pseudo_objects(teacher, embedding: torch.Tensor, prepared: PreparedImage, scale: float, side: int,
                    limit: int, min_pixels: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``limit`` masks the teacher draws for single clicks, in the student's padded frame."""
    h, w = prepared.geometry.input_size
    pixels = prepared.pixels
    threshold = np.percentile(pixels, 30)
    candidates = np.argwhere(pixels > threshold)
    if len(candidates) == 0:
        return np.zeros((0, side, side), bool)
    chosen = candidates[rng.choice(len(candidates), size=min(len(candidates), 2 * limit), replace=False)]
    points = (chosen.astype(np.float32) * scale)[:, None, :]
    prompts = PromptSet(points, np.ones((len(chosen), 1), np.int64), None)
    logits, scores = decode(teacher.sam, embedding, prompts, multimask=True)
    best = logits[torch.arange(len(chosen)), scores.argmax(dim=1)].float()
    masks = F.interpolate(best[:, None], (side, side), mode="bilinear", align_corners=False)[:, 0] > 0
    masks[:, h:, :] = False
    masks[:, :, w:] = False
    kept: list[torch.Tensor] = []
    for mask in masks:
        area = int(mask.sum())
        if area < min_pixels or area > 0.6 * h * w:
            continue
        if any(float((mask & k).sum()) / float((mask | k).sum()) > 0.7 for k in kept):
            continue
        kept.append(mask)
        if len(kept) == limit:
            break
    return torch.stack(kept).cpu().numpy() if kept else np.zeros((0, side, side), bool)


@torch.no_grad()
def teacher_pass(teacher, images: Sequence[TransferImage], side: int, objects_per_image: int = 4,
                 min_pixels: int = 20, seed: int = 0, batch: int = 4,
                 progress: Optional[Callable[[int, int], None]] = None,
                 cancel: Optional[threading.Event] = None) -> Optional[TargetSet]:
    """Run the teacher (a ``LoadedModel``, its adapter applied) once over ``images``.

    Returns None when ``cancel`` is set before the pass ends. ``progress(done, total)`` after each batch.
    """
    preprocess = str(teacher.info.get("preprocess") or "sam")
    t_size = teacher.image_size
    scale = t_size / side
    rng = np.random.default_rng(seed)
    inputs = [prepare(item, side, preprocess) for item in images]
    embeddings: list[torch.Tensor] = []
    objects: list[tuple[np.ndarray, int]] = []
    device = teacher.device
    for start in range(0, len(images), batch):
        if cancel is not None and cancel.is_set():
            return None
        chunk = list(images[start:start + batch])
        framed = [prepare(item, t_size, preprocess) for item in chunk]
        with torch.autocast(device.type, dtype=teacher.encoder_dtype, enabled=teacher.encoder_dtype is not None):
            features = teacher.sam.image_encoder(encoder_input(framed, teacher.sam, device)).float()
        for offset, item in enumerate(chunk):
            embedding = features[offset:offset + 1]
            prepared = inputs[start + offset]
            if item.labels is not None:
                masks = _label_objects(item, prepared, side, objects_per_image, min_pixels, rng)
            else:
                masks = _pseudo_objects(teacher, embedding, prepared, scale, side, objects_per_image,
                                        min_pixels, rng)
            embeddings.append(embedding[0].to("cpu", torch.float16))
            objects.append(_pack(masks))
        if progress is not None:
            progress(min(start + batch, len(images)), len(images))
    return TargetSet(inputs, embeddings, objects, side)
