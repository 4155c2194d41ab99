"""Batched prompt simulation, decoding and loss for pre-training, all in torch on one device.

The per-object Python loop of :func:`~napari_vfmseg.training.forward.decode` is fine for a few
dozen user planes, but pre-training on a GPU needs hundreds of prompts per step in a handful of
kernels. Here every prompt is paired with its own copy of its image's embedding, so one decoder
call serves prompts from many images.

Shapes: images (B, S, S) in [0, 1]; targets (B, K, S, S) bool (K objects per image, S the model's
input size); prompt points are (row, col) in the input frame and become SAM's (x, y) in
:func:`encode_prompts` only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch.nn import functional as F

from napari_vfmseg.engine.coords import rc_to_xy
from napari_vfmseg.training.losses import dice_loss, focal_loss, mask_iou

__all__ = ["BatchPromptConfig", "sample_points", "jittered_boxes", "encode_prompts", "decode_paired",
           "prompt_losses", "pretrain_loss"]


@dataclass(frozen=True)
class BatchPromptConfig:
    """Mix of first prompts and the correction rounds that follow them."""

    box_fraction: float = 0.45          # a jittered box → one mask
    click_fraction: float = 0.35        # one interior click → three nested candidates
    # the rest: 1–3 positive and 0–2 negative points → one mask
    box_jitter: float = 0.1             # box corner noise, std as a fraction of the side (SAM: 0.1)
    box_jitter_max_px: float = 20.0
    corrections: int = 2                # correction clicks, each with the previous logits fed back
    correction_probability: float = 0.7
    candidate_weight: float = 0.1       # weight of the non-best multimask candidates' mask loss


def _interior_weight(region: torch.Tensor, power: float) -> torch.Tensor:
    """(N, S, S) bool → (N, S, S) float weights favouring pixels deep inside the region."""
    depth = F.avg_pool2d(region[:, None].float(), 9, stride=1, padding=4)[:, 0]
    return region.float() * (depth.pow(power) + 1e-4)


def sample_points(region: torch.Tensor, generator: Optional[torch.Generator] = None,
                  interior_power: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """One random pixel per region: (N, S, S) bool → ((N, 2) float (row, col), (N,) bool found).

    Deep pixels are likelier (as a user clicks well inside a structure); an empty region gives
    the image centre and ``found`` False.
    """
    size = region.shape[-1]
    weight = _interior_weight(region, interior_power).flatten(1)
    found = weight.sum(dim=1) > 0
    weight = torch.where(found[:, None], weight, torch.ones_like(weight))
    index = torch.multinomial(weight, 1, generator=generator)[:, 0]
    points = torch.stack([index // size, index % size], dim=1).float()
    return points, found


def tight_boxes(targets: torch.Tensor) -> torch.Tensor:
    """(N, S, S) bool → (N, 4) float (row0, col0, row1, col1), inclusive; an empty mask gives zeros."""
    size = targets.shape[-1]
    idx = torch.arange(size, device=targets.device)
    rows, cols = targets.any(dim=2), targets.any(dim=1)
    big = size + 1
    r0 = torch.where(rows, idx, big).min(dim=1).values
    r1 = torch.where(rows, idx, -1).max(dim=1).values
    c0 = torch.where(cols, idx, big).min(dim=1).values
    c1 = torch.where(cols, idx, -1).max(dim=1).values
    boxes = torch.stack([r0, c0, r1, c1], dim=1).float()
    return torch.where(rows.any(dim=1)[:, None], boxes, torch.zeros_like(boxes))


def jittered_boxes(targets: torch.Tensor, cfg: BatchPromptConfig, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Tight boxes with SAM's corner noise (std ``box_jitter`` × side, at most ``box_jitter_max_px``)."""
    boxes = tight_boxes(targets)
    side = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], dim=1).repeat(1, 2) + 1
    std = (cfg.box_jitter * side).clamp(max=cfg.box_jitter_max_px)
    noise = torch.randn(boxes.shape, device=boxes.device, generator=generator) * std
    size = targets.shape[-1]
    return (boxes + noise).clamp(0, size - 1)


def encode_prompts(sam, points: Optional[torch.Tensor], labels: Optional[torch.Tensor],
                   boxes: Optional[torch.Tensor], mask_input: Optional[torch.Tensor]):
    """Sparse and dense prompt embeddings; points (N, P, 2) and boxes (N, 4) are in (row, col)."""
    point_arg = None
    if points is not None:
        point_arg = (rc_to_xy(points), labels)
    box_arg = rc_to_xy(boxes.reshape(-1, 2, 2)).reshape(-1, 4) if boxes is not None else None
    return sam.prompt_encoder(points=point_arg, boxes=box_arg, masks=mask_input)


def decode_paired(sam, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                  multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's mask decoder with one embedding per prompt: (N, C, g, g) → logits (N, M, 4g, 4g), IoU (N, M).

    The same computation as ``MaskDecoder.predict_masks``, without repeating one image's
    embedding for every prompt. M is 3 with ``multimask``, else 1.
    """
    decoder = sam.mask_decoder
    n = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
    src = embeddings + dense
    pos = sam.prompt_encoder.get_dense_pe().expand(n, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos, tokens)
    iou_token = hs[:, 0, :]
    mask_tokens = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = torch.stack([mlp(mask_tokens[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    b, c, h, w = upscaled.shape
    masks = (hyper @ upscaled.view(b, c, h * w)).view(b, -1, h, w)
    iou = decoder.iou_prediction_head(iou_token)
    chosen = slice(1, None) if multimask else slice(0, 1)
    return masks[:, chosen], iou[:, chosen]


def prompt_losses(low: torch.Tensor, iou: torch.Tensor, targets: torch.Tensor,
                  focal_weight: float = 20.0, candidate_weight: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-prompt loss (N,) and the index of the best candidate (N,).

    low (N, M, h, w) logits are upsampled to the targets' (N, S, S). The mask loss (20 focal + Dice,
    as SAM) counts fully for the best of the M candidates and ``candidate_weight`` for the others;
    the IoU head is trained on every candidate against the IoU its mask really reaches.
    """
    n, m = low.shape[:2]
    size = targets.shape[-1]
    logits = F.interpolate(low.float(), (size, size), mode="bilinear", align_corners=False)
    flat_logits = logits.reshape(n * m, size, size)
    flat_targets = targets[:, None].expand(-1, m, -1, -1).reshape(n * m, size, size)
    focal = focal_loss(flat_logits, flat_targets).view(n, m)
    dice = dice_loss(flat_logits, flat_targets).view(n, m)
    mask_loss = focal_weight * focal + dice                                    # (N, M)
    true_iou = mask_iou(flat_logits, flat_targets).view(n, m)
    iou_loss = ((iou.float() - true_iou) ** 2).mean(dim=1)
    best = mask_loss.argmin(dim=1)
    best_loss = mask_loss.gather(1, best[:, None])[:, 0]
    extra = candidate_weight * mask_loss.mean(dim=1) if m > 1 else 0.0
    return best_loss + extra + iou_loss, best


def _negative_region(targets: torch.Tensor, margin: int = 12) -> torch.Tensor:
    """Background near the object (its box grown by ``margin``), or anywhere outside it."""
    grown = F.max_pool2d(targets[:, None].float(), 2 * margin + 1, stride=1, padding=margin)[:, 0] > 0
    near = grown & ~targets
    return torch.where(near.flatten(1).any(dim=1)[:, None, None], near, ~targets)


def _first_prompts(kind: int, targets: torch.Tensor, cfg: BatchPromptConfig, generator):
    """(points, labels, boxes, multimask) of the first round for one prompt kind (0 box, 1 click, 2 points)."""
    n = targets.shape[0]
    device = targets.device
    if kind == 0:
        return None, None, jittered_boxes(targets, cfg, generator), False
    if kind == 1:
        points, _ = sample_points(targets, generator)
        return points[:, None], torch.ones(n, 1, dtype=torch.int64, device=device), None, True
    positives = torch.stack([sample_points(targets, generator, interior_power=1.0)[0] for _ in range(3)], dim=1)
    negative_region = _negative_region(targets)
    negatives = torch.stack([sample_points(negative_region, generator, interior_power=0.0)[0] for _ in range(2)], dim=1)
    n_pos = torch.randint(1, 4, (n, 1), device=device, generator=generator)
    n_neg = torch.randint(0, 3, (n, 1), device=device, generator=generator)
    slot = torch.arange(3, device=device)[None]
    pos_labels = torch.where(slot < n_pos, 1, -1)
    neg_labels = torch.where(slot[:, :2] < n_neg, 0, -1)
    points = torch.cat([positives, negatives], dim=1)
    labels = torch.cat([pos_labels, neg_labels], dim=1).to(torch.int64)
    return points, labels, None, False


def _correction(pred: torch.Tensor, targets: torch.Tensor, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per prompt in its error region: ((N, 1, 2) points, (N, 1) labels, 1 = missed object)."""
    error = pred ^ targets
    points, found = sample_points(error, generator, interior_power=1.0)
    rows, cols = points[:, 0].long(), points[:, 1].long()
    truth = targets[torch.arange(targets.shape[0], device=targets.device), rows, cols]
    labels = torch.where(found, truth.long(), torch.full_like(truth.long(), -1))
    return points[:, None], labels[:, None]


def pretrain_loss(sam, embeddings: torch.Tensor, targets: torch.Tensor, cfg: BatchPromptConfig,
                  generator: Optional[torch.Generator] = None, boxes_only: bool = False) -> torch.Tensor:
    """Mean loss over every prompt and correction round of one step.

    embeddings (B, C, g, g) carry the gradient back to the encoder; targets (B, K, S, S) bool, an
    all-empty target is skipped.
    """
    b, k, size = targets.shape[0], targets.shape[1], targets.shape[-1]
    device = targets.device
    flat = targets.flatten(0, 1)
    owner = torch.arange(b, device=device).repeat_interleave(k)
    keep = flat.flatten(1).any(dim=1)
    flat, owner = flat[keep], owner[keep]
    n = flat.shape[0]
    if n == 0:
        return embeddings.sum() * 0.0
    if boxes_only:
        kinds = torch.zeros(n, dtype=torch.long, device=device)
    else:
        draw = torch.rand(n, device=device, generator=generator)
        kinds = (draw >= cfg.box_fraction).long() + (draw >= cfg.box_fraction + cfg.click_fraction).long()
    total, count = embeddings.sum() * 0.0, 0
    for kind in range(3):
        index = torch.nonzero(kinds == kind).flatten()
        if index.numel() == 0:
            continue
        tgt = flat[index]
        emb = embeddings[owner[index]]
        points, labels, boxes, multimask = _first_prompts(kind, tgt, cfg, generator)
        sparse, dense = encode_prompts(sam, points, labels, boxes, None)
        low, iou = decode_paired(sam, emb, sparse, dense, multimask)
        loss, best = prompt_losses(low, iou, tgt, candidate_weight=cfg.candidate_weight)
        total, count = total + loss.sum(), count + loss.numel()
        for _ in range(cfg.corrections):
            if float(torch.rand((), device=device, generator=generator)) >= cfg.correction_probability:
                break
            chosen = low[torch.arange(low.shape[0], device=device), best][:, None].detach()
            pred = F.interpolate(chosen.float(), (size, size), mode="bilinear", align_corners=False)[:, 0] > 0
            new_points, new_labels = _correction(pred, tgt, generator)
            points = new_points if points is None else torch.cat([points, new_points], dim=1)
            labels = new_labels if labels is None else torch.cat([labels, new_labels], dim=1)
            sparse, dense = encode_prompts(sam, points, labels, boxes, chosen)
            low, iou = decode_paired(sam, emb, sparse, dense, False)
            loss, best = prompt_losses(low, iou, tgt)
            total, count = total + loss.sum(), count + loss.numel()
    return total / max(count, 1)
