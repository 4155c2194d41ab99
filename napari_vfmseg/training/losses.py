"""Losses for prompted mask prediction, as SAM was trained.

Mask logits and targets are (N, H, W) tensors (N masks); predicted IoUs are (N,). The mask loss is
``focal_weight * focal + dice_weight * dice`` (20 : 1 in SAM), and the IoU head is trained with the
mean squared error against the IoU that the thresholded mask actually reaches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

__all__ = ["LossWeights", "focal_loss", "dice_loss", "mask_iou", "mask_losses"]


@dataclass(frozen=True)
class LossWeights:
    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss per mask, averaged over pixels: (N, H, W) → (N,)."""
    target = target.to(logits.dtype)
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(1).mean(dim=1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per mask on sigmoid probabilities: (N, H, W) → (N,)."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.to(prob.dtype).flatten(1)
    inter = (prob * target).sum(dim=1)
    return 1 - (2 * inter + eps) / (prob.sum(dim=1) + target.sum(dim=1) + eps)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU of the thresholded masks (logit > 0) with the targets: (N, H, W) → (N,), no gradient.

    Two empty masks score 1.
    """
    with torch.no_grad():
        pred = logits > 0
        target = target.bool()
        inter = (pred & target).flatten(1).sum(dim=1).float()
        union = (pred | target).flatten(1).sum(dim=1).float()
        return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def mask_losses(logits: torch.Tensor, iou_pred: torch.Tensor, target: torch.Tensor,
                weights: LossWeights = LossWeights()) -> torch.Tensor:
    """Per-mask total loss (N,): weighted focal + Dice on the masks plus MSE on the predicted IoU."""
    logits = logits.float()
    focal = focal_loss(logits, target, weights.focal_alpha, weights.focal_gamma)
    dice = dice_loss(logits, target)
    iou_mse = (iou_pred.float() - mask_iou(logits, target)) ** 2
    return weights.focal * focal + weights.dice * dice + weights.iou * iou_mse
