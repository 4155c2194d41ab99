"""The cheap path's model half: prompt encoder + mask decoder on one cached image embedding.

Prompts arrive already in SAM's input frame ((x, y) points and boxes, converted by
:class:`~napari_vfmseg.engine.preprocess.Geometry`); the result is low-resolution logits and the
predicted IoU of each requested mask.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from napari_vfmseg.engine.acceleration import DecoderContext, FastDecoder
from napari_vfmseg.engine.cache import Embedding

__all__ = ["Prediction", "PromptDecoder"]


@dataclass
class Prediction:
    """Result of one :meth:`~napari_vfmseg.engine.Segmenter.predict`.

    ``mask``: bool (rows, cols) on the slice grid. ``score``: the model's predicted IoU of ``mask``.
    ``logits``: float32 (L, L) low-resolution logits of ``mask`` (L=256 for SAM) — pass them as
    ``mask_input`` with a correction click. ``candidate_scores`` (k,) and ``candidate_logits``
    (k, L, L): every mask the decoder returned (k=3 for multimask output; 4 for a box alone: its
    own mask first, then the three multimask masks as alternatives; 1 otherwise); ``index`` is the
    one chosen. ``crop``: the :class:`~napari_vfmseg.engine.zoom.Crop` of the slice the prompts were
    segmented on (a small box is zoomed), None for the whole slice; the logits are in its frame.
    ``np.asarray(prediction)`` gives ``mask``.
    """

    mask: np.ndarray
    score: float
    logits: np.ndarray
    candidate_scores: np.ndarray
    candidate_logits: np.ndarray
    index: int
    multimask: bool
    plane: Optional[int] = None
    crop: Optional[Any] = None

    def __array__(self, dtype=None, copy=None):
        return self.mask if dtype is None else self.mask.astype(dtype)


class PromptDecoder:
    """Runs SAM's prompt encoder and mask decoder; with ``fast=True`` through
    :class:`~napari_vfmseg.engine.acceleration.FastDecoder`, which keeps per-image tensors for the
    last ``contexts`` images (so every further click on an image reuses them). ``_lock`` guards
    those contexts and the fast decoder's lazily filled tensors: one fast decode runs at a time."""

    def __init__(self, sam, device: torch.device, fast: bool = True, contexts: int = 4) -> None:
        self.sam, self.device = sam, device
        self._fast: Optional[FastDecoder] = FastDecoder(sam) if fast else None
        self._contexts: "OrderedDict[str, DecoderContext]" = OrderedDict()
        self._max_contexts = int(contexts)
        self._lock = threading.Lock()

    def mask_tensor(self, mask_input) -> torch.Tensor:
        """A previous prediction's low-res logits (L, L) or (1, L, L) → (1, 1, L, L) on the device."""
        expected = tuple(int(v) for v in self.sam.prompt_encoder.mask_input_size)
        array = np.asarray(mask_input, dtype=np.float32)
        if array.ndim == 3 and array.shape[0] == 1:
            array = array[0]
        if array.shape != expected:
            raise ValueError(
                f"mask_input must be low-resolution logits of shape {expected} (a previous Prediction.logits); got {array.shape}"
            )
        if not np.all(np.isfinite(array)):
            raise ValueError("mask_input holds NaN or infinite logits; pass a previous Prediction.logits")
        return torch.as_tensor(array, device=self.device)[None, None]

    def _context(self, key: str, embedding: Embedding) -> DecoderContext:
        """The per-image context of ``key`` (call with ``_lock`` held)."""
        previous = self._contexts.get(key)
        if previous is None:
            previous = DecoderContext(embedding=embedding.features.to(self.device)[None])
        context = self._fast.context(previous.embedding, previous)
        self._contexts[key] = context
        self._contexts.move_to_end(key)
        while len(self._contexts) > self._max_contexts:
            self._contexts.popitem(last=False)
        return context

    def clear(self) -> None:
        """Forget the per-image tensors (frees their memory)."""
        with self._lock:
            self._contexts.clear()

    def __call__(self, key: str, embedding: Embedding, coords: Optional[np.ndarray], labels: Optional[np.ndarray],
                 box_xy: Optional[np.ndarray], mask_tensor: Optional[torch.Tensor], outputs: list[int]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt encoder + mask decoder → low-res logits (1, k, L, L) and scores (1, k) of the
        decoder's mask tokens ``outputs`` (0 = the single-mask output, 1–3 = the multimask outputs).

        ``key``: the embedding's cache key; ``coords`` (N, 2) (x, y) and ``labels`` (N,) or None;
        ``box_xy`` (4,) (x0, y0, x1, y1) or None, all in the encoder input frame."""
        device = self.device
        points = None
        if coords is not None:
            points = (
                torch.as_tensor(coords, dtype=torch.float, device=device)[None],
                torch.as_tensor(labels, dtype=torch.int, device=device)[None],
            )
        boxes = torch.as_tensor(box_xy, dtype=torch.float, device=device)[None] if box_xy is not None else None
        sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=mask_tensor)
        outputs = [i for i in outputs if i < self.sam.mask_decoder.num_mask_tokens]
        if self._fast is not None and self._fast.usable:
            with self._lock:  # the context's tensors and the decoder's caches are filled lazily
                context = self._context(key, embedding)
                low_res, iou = self._fast(context, sparse, dense if mask_tensor is not None else None, outputs)
            return low_res, iou[:, outputs]
        features = embedding.features.to(device)[None]
        parts = [
            self.sam.mask_decoder(
                image_embeddings=features,
                image_pe=self.sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
            for multimask in ([False] if 0 in outputs else []) + ([True] if max(outputs) > 0 else [])
        ]
        return torch.cat([low for low, _ in parts], dim=1), torch.cat([iou for _, iou in parts], dim=1)
