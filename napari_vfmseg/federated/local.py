"""A site's local work on its own planes: LoRA steps and held-out Dice (no Flower, no network).

Planes enter the model frame with training's :func:`~napari_vfmseg.training.data.frame_pair`, so
they see exactly the pixels inference sees. While the encoder carries no LoRA (the default) its
output never changes, so each plane is embedded once and every step runs only the prompt encoder
and mask decoder. A step draws ``images_per_step`` planes and up to ``prompts_per_image`` objects
per plane, a first prompt (jittered box or interior point, training's prompt simulation) and
``correction_clicks`` corrective clicks with the previous logits fed back, and back-propagates
training's focal + Dice + IoU loss into the named LoRA tensors only.

Dice is training's :func:`~napari_vfmseg.training.metrics.dice`, per object, with a tight box
(``box``) and with the most interior point (``point``, best of SAM's three masks by predicted IoU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from napari_vfmseg.models.base import LoadedModel
from napari_vfmseg.training.data import FramedPair, LabelledImage, frame_pair, object_ids
from napari_vfmseg.training.forward import decode, embed_images, pad_masks, upsample_logits
from napari_vfmseg.training.losses import LossWeights, mask_losses
from napari_vfmseg.training.metrics import dice
from napari_vfmseg.training.prompts import (
    PromptSet,
    bounding_box,
    correction_click,
    interior_point,
    simulate_prompts,
)

from napari_vfmseg.federated.config import FederatedConfig

__all__ = ["Plane", "frame_planes", "train_lora", "evaluate_planes", "LocalResult"]


@dataclass
class Plane:
    """One labelled plane in the model frame; ``embedding`` (1, C, gh, gw) once computed."""

    pair: FramedPair
    ids: list[int]
    embedding: Optional[torch.Tensor] = None


@dataclass
class LocalResult:
    """What :func:`train_lora` did: mean loss per step, steps, training objects, seconds."""

    loss: float
    steps: int
    n_objects: int
    seconds: float


def frame_planes(model: LoadedModel, pairs: Sequence[LabelledImage], min_pixels: int = 20) -> list[Plane]:
    """The pairs with at least one object of ``min_pixels`` pixels, in the model frame."""
    size = model.image_size
    preprocess = str((model.info or {}).get("preprocess") or "sam")
    planes = []
    for pair in pairs:
        framed = frame_pair(pair, size, preprocess)
        ids = object_ids(framed.labels, min_pixels)
        if ids:
            planes.append(Plane(framed, ids))
    return planes


def _encoder_trains(model: LoadedModel) -> bool:
    return any(".lora_" in name for name in model.sam.image_encoder.state_dict())


@torch.no_grad()
def _embed_once(model: LoadedModel, planes: Sequence[Plane], batch: int = 4) -> None:
    todo = [p for p in planes if p.embedding is None]
    for start in range(0, len(todo), batch):
        chunk = todo[start: start + batch]
        emb = embed_images(model.sam, [p.pair.image for p in chunk], chunk[0].pair.stretch)
        for i, plane in enumerate(chunk):
            plane.embedding = emb[i: i + 1].float().detach()


def _embedding(model: LoadedModel, plane: Plane, grad: bool) -> torch.Tensor:
    """The plane's embedding: cached while the encoder is frozen, else computed (with grad if asked)."""
    if not _encoder_trains(model):
        if plane.embedding is None:
            _embed_once(model, [plane])
        return plane.embedding
    with torch.set_grad_enabled(grad):
        return embed_images(model.sam, [plane.pair.image], plane.pair.stretch)


def _image_loss(model: LoadedModel, embedding: torch.Tensor, masks: np.ndarray, rng: np.random.Generator,
                config: FederatedConfig, weights: LossWeights) -> torch.Tensor:
    """Loss of one plane's P objects (masks (P, h, w)) over the first prompt and the corrections."""
    sam, size = model.sam, model.image_size
    kind = "box" if rng.random() < config.box_probability else "point"
    prompts = simulate_prompts(masks, rng, kind=kind)
    target = pad_masks(masks, size, embedding.device)
    h, w = masks.shape[1:]
    iterations = config.correction_clicks + 1
    mask_input, total = None, embedding.new_zeros(())
    for iteration in range(iterations):
        low, iou = decode(sam, embedding, prompts, mask_input, iteration == 0 and kind == "point")
        up = upsample_logits(low, size)                                       # (P, K, S, S)
        k = up.shape[1]
        losses = mask_losses(up.flatten(0, 1), iou.flatten(), target.repeat_interleave(k, dim=0), weights).view(-1, k)
        best = losses.argmin(dim=1)                                           # SAM: the best of K masks
        total = total + losses.gather(1, best[:, None]).mean() / iterations
        if iteration < iterations - 1:
            rows = torch.arange(len(best), device=best.device)
            mask_input = low[rows, best][:, None].detach()
            pred = (up[rows, best, :h, :w] > 0).detach().cpu().numpy()
            prompts = prompts.add_clicks([correction_click(pred[i], masks[i]) for i in range(len(masks))])
    return total


def train_lora(model: LoadedModel, planes: Sequence[Plane], names: Sequence[str], config: FederatedConfig,
               seed: int, steps: Optional[int] = None, images_per_step: Optional[int] = None) -> LocalResult:
    """``steps`` (default ``config.local_steps``) AdamW steps on the tensors ``names`` only.

    The model must carry LoRA layers (:func:`~napari_vfmseg.federated.shared_lora.prepare_lora`);
    every other weight stays frozen. Gradients are off again afterwards.
    """
    if not planes:
        raise ValueError("no training plane with an object to learn from")
    steps = int(steps or config.local_steps)
    per_step = int(images_per_step or config.images_per_step)
    params = dict(model.sam.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"model {model.name!r} has no tensor {missing[0]!r}: LoRA layers not in place")
    trained = [params[n] for n in names]
    rng = np.random.default_rng(seed)
    weights = LossWeights()
    started = time.perf_counter()
    if not _encoder_trains(model):
        _embed_once(model, planes)
    for p in trained:
        p.requires_grad_(True)
    optimiser = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay)
    losses = []
    try:
        for _ in range(steps):
            optimiser.zero_grad(set_to_none=True)
            picks = rng.choice(len(planes), size=min(per_step, len(planes)), replace=False)
            step_loss = 0.0
            for index in picks:
                plane = planes[int(index)]
                chosen = rng.choice(plane.ids, size=min(config.prompts_per_image, len(plane.ids)), replace=False)
                masks = np.stack([plane.pair.labels == int(i) for i in chosen])
                loss = _image_loss(model, _embedding(model, plane, grad=True), masks, rng, config, weights)
                (loss / len(picks)).backward()
                step_loss += float(loss.detach()) / len(picks)
            optimiser.step()
            losses.append(step_loss)
    finally:
        for p in trained:
            p.requires_grad_(False)
            p.grad = None
    return LocalResult(float(np.mean(losses)), steps, sum(len(p.ids) for p in planes),
                       time.perf_counter() - started)


@torch.no_grad()
def evaluate_planes(model: LoadedModel, planes: Sequence[Plane]) -> dict[str, float]:
    """Mean Dice over the planes' objects with a tight box (``box``) and an interior point (``point``),
    and ``objects``, the number of objects scored."""
    sam, size = model.sam, model.image_size
    box_scores, point_scores = [], []
    for plane in planes:
        emb = _embedding(model, plane, grad=False)
        masks = np.stack([plane.pair.labels == i for i in plane.ids])
        h, w = masks.shape[1:]
        boxes = PromptSet(None, None, np.array([bounding_box(m) for m in masks], dtype=np.float32))
        low, _ = decode(sam, emb, boxes, None, multimask=False)
        pred = (upsample_logits(low[:, 0], size)[:, :h, :w] > 0).cpu().numpy()
        box_scores += [dice(pred[i], masks[i]) for i in range(len(masks))]
        points = np.array([[interior_point(m)] for m in masks], dtype=np.float32)
        low, iou = decode(sam, emb, PromptSet(points, np.ones((len(masks), 1), dtype=np.int64), None), None,
                          multimask=True)
        pick = low[torch.arange(len(masks)), iou.argmax(dim=1)]
        pred = (upsample_logits(pick, size)[:, :h, :w] > 0).cpu().numpy()
        point_scores += [dice(pred[i], masks[i]) for i in range(len(masks))]
    if not box_scores:
        return {"box": float("nan"), "point": float("nan"), "objects": 0}
    return {"box": float(np.mean(box_scores)), "point": float(np.mean(point_scores)), "objects": len(box_scores)}
