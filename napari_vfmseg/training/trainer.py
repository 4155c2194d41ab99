"""Fine-tuning a SAM-family model on labelled planes: ``decoder``, ``encoder-lora`` or ``full``.

Modes
- ``decoder``: the prompt encoder and mask decoder are trained (fully, or with LoRA on the decoder's
  two-way transformer when ``lora.decoder_targets`` is set); the image encoder is frozen, so the
  embeddings of the training and validation planes are computed once, under ``no_grad``, and every
  step runs only the light decoder. Image augmentation is therefore off in this mode; prompts
  are still drawn afresh every step.
- ``encoder-lora``: LoRA on the image encoder (``qkv`` in a ViT, 1 x 1 convolutions in a CNN) plus
  the prompt encoder and mask decoder; embeddings change, so every step re-embeds (augmented)
  images. Stronger on a shifted domain, much slower per step.
- ``full``: every weight trains (for small models and for comparison).

Each step takes ``images_per_step`` planes × up to ``prompts_per_image`` objects, simulates a first
prompt (jittered box or one interior point) and ``correction_clicks`` corrective clicks, each with
the previous low-res logits fed back, and sums focal + Dice + IoU-MSE losses over the iterations.
The network stays in eval mode (frozen normalisation statistics; LoRA dropout alone follows
training mode). The only assumptions about the model are ``sam.image_encoder(x)`` → embedding grid,
``sam.prompt_encoder``, ``sam.mask_decoder`` and ``sam.preprocess``.

Validation Dice is the mean over validation objects of the Dice of a tight-box prompt and of a
most-interior-point prompt (multimask, best predicted IoU), computed at the model's input
resolution. The model keeps the state with the best validation Dice; a run that never beats its
starting point leaves the model exactly as it was (the previous adapter, or the base).

The settings and result types live in :mod:`.train_config`, the forward passes in :mod:`.forward`
and the model-state transitions (adapter layers, trainable flags, snapshots) in :mod:`.model_state`;
this module holds the loop.
"""


from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from napari_vfmseg.models.base import LoadedModel
from napari_vfmseg.models.lora import LoRAConfig, count_parameters, default_encoder_targets
from napari_vfmseg.training.adapters import AdapterInfo, adapter_fingerprint, set_active
from napari_vfmseg.engine.preprocess import Geometry, PreparedImage, encoder_input
from napari_vfmseg.engine.zoom import ZoomPolicy, default_zoom
from napari_vfmseg.training.data import FramedPair, LabelledImage, augment, frame_pair, object_ids
from napari_vfmseg.training.encoder_split import EncoderSplit, split_encoder
from napari_vfmseg.training.forward import decode, embed_images, pad_masks, upsample_logits
from napari_vfmseg.training.losses import mask_losses
from napari_vfmseg.training.metrics import dice
from napari_vfmseg.training.model_state import (
    PreparedState,
    finish_model,
    prepare_model,
    settle,
    snapshot,
)
from napari_vfmseg.training.prompts import PromptSet, bounding_box, correction_click, interior_point, simulate_prompts
from napari_vfmseg.training.train_config import TrainConfig, TrainProgress, TrainResult
from napari_vfmseg.training.thick_views import with_thick_views
from napari_vfmseg.training.zoom_crops import with_zoomed_crops

__all__ = ["TrainConfig", "TrainProgress", "TrainResult", "Trainer", "fine_tune", "decode", "embed_images"]



@dataclass
class _Example:
    pair: FramedPair
    ids: list[int]
    embedding: Optional[torch.Tensor] = None  # (1, C, gh, gw) on the device, decoder mode only
    source: Optional[LabelledImage] = None
    # cache_early: (early features (1, C1, h1, w1), labels (h, w), object ids) per augmented view
    views: list = field(default_factory=list)


class Trainer:
    """Fine-tunes ``model`` in place on ``train`` planes, validating on ``val`` planes.

    ``progress`` is called with a :class:`TrainProgress` after each step; setting ``cancel`` (a
    ``threading.Event``) stops the run before the next step or micro-batch, keeping the best state
    validated so far (the starting state if none beat it). After :meth:`fit` the model carries the
    result as its active adapter (see :mod:`napari_vfmseg.training.adapters`).

    ``embedder`` (decoder mode only) returns the (C, gh, gw) embedding of a plane, e.g. from an engine
    ``Segmenter``'s cache (``lambda pair: seg.embedding(pair.plane).features`` after ``set_volume``);
    without it the encoder runs once per plane under ``no_grad``. It is called after the model is
    prepared, so the embeddings belong to the encoder that training keeps frozen.
    """

    def __init__(self, model: LoadedModel, train: Sequence[LabelledImage], val: Sequence[LabelledImage] = (),
                 config: TrainConfig = TrainConfig(),
                 progress: Optional[Callable[[TrainProgress], None]] = None,
                 cancel: Optional[threading.Event] = None,
                 embedder: Optional[Callable[[LabelledImage], torch.Tensor]] = None) -> None:
        self.model = model
        self.config = config
        self.progress = progress
        self.cancel = cancel or threading.Event()
        self.embedder = embedder
        self.size = model.image_size
        self.preprocess = str((model.info or {}).get("preprocess") or "sam")
        whole = [p for p in train if object_ids(p.labels, config.min_pixels)]
        self.train_pairs = with_zoomed_crops(with_thick_views(whole, config.thick_views, config.min_pixels),
                                             self._zoom_policy(), config.min_pixels)
        self.val_pairs = [p for p in val if object_ids(p.labels, config.min_pixels)]
        if not self.train_pairs:
            raise ValueError(f"no training plane has an object of at least {config.min_pixels} pixels")
        self.lora = self._resolve_lora()
        self.split: Optional[EncoderSplit] = None
        if config.cache_early and config.mode != "decoder":
            self.split = split_encoder(model.sam.image_encoder)

    def _zoom_policy(self) -> Optional[ZoomPolicy]:
        """The engine's zoom for this model (its default policy), unless ``config.zoom_crops`` says otherwise."""
        if self.preprocess != "sam" or self.config.zoom_crops is False:
            return None
        return ZoomPolicy() if self.config.zoom_crops else default_zoom(self.model.sam)

    def _resolve_lora(self) -> Optional[LoRAConfig]:
        cfg = self.config
        if cfg.mode == "encoder-lora":
            lora = cfg.lora or LoRAConfig(rank=4, alpha=4.0, encoder_targets=())
            if not lora.encoder_targets:
                targets = default_encoder_targets(self.model.sam.image_encoder)
                if not targets:
                    raise ValueError(f"model {self.model.name!r}: its image encoder has no linear layer or "
                                     "1x1 convolution for LoRA; use the 'decoder' or 'full' mode")
                lora = replace(lora, encoder_targets=targets)
            return lora
        if cfg.lora is not None and (cfg.lora.encoder_targets or cfg.lora.decoder_targets):
            return cfg.lora
        return None

    # ---- data -------------------------------------------------------------------------------------

    def _examples(self, pairs: Sequence[LabelledImage]) -> list[_Example]:
        out = []
        for pair in pairs:
            framed = frame_pair(pair, self.size, self.preprocess)
            ids = object_ids(framed.labels, self.config.min_pixels)
            if ids:
                out.append(_Example(framed, ids, source=pair))
        return out

    @torch.no_grad()
    def _embed_examples(self, examples: list[_Example], batch: int = 4) -> None:
        device = self.model.device
        own = []  # embedded here: every example without an embedder, crops and thick views (the embedder knows planes)
        for example in examples:
            if self.embedder is None or not example.source.own_pixels:
                own.append(example)
                continue
            features = torch.as_tensor(self.embedder(example.source))
            example.embedding = features.to(device, torch.float32).reshape(1, *features.shape[-3:])
        for start in range(0, len(own), batch):
            chunk = own[start: start + batch]
            with self._autocast():
                emb = embed_images(self.model.sam, [e.pair.image for e in chunk], chunk[0].pair.stretch)
            for i, example in enumerate(chunk):
                example.embedding = emb[i: i + 1].float().detach()

    def _autocast(self):
        device = self.model.device
        if self.use_amp and device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast(device_type="cuda", dtype=dtype)
        return torch.autocast(device_type=device.type, enabled=False)

    # ---- one step -------------------------------------------------------------------------------

    def _sample(self, rng: np.random.Generator) -> list[tuple[FramedPair, np.ndarray, Optional[torch.Tensor]]]:
        """``images_per_step`` (pair, masks (P, h, w), embedding or None) for one micro-batch (at most
        one per example; without ``thick_views_widen``, at most one per example that is no thick view)."""
        cfg = self.config
        available = len(self.train_examples)
        if not cfg.thick_views_widen:
            available = max(1, sum(1 for e in self.train_examples if e.source.view is None))
        picks = rng.choice(len(self.train_examples), size=min(cfg.images_per_step, available), replace=False)
        batch = []
        for index in picks:
            example = self.train_examples[int(index)]
            pair, ids, features = example.pair, example.ids, example.embedding
            if example.views:
                features, view_labels, ids = example.views[int(rng.integers(len(example.views)))]
                pair = FramedPair(pair.image, view_labels, pair.source, pair.stretch)
            elif cfg.augment and cfg.mode != "decoder":
                augmented = self._augment(pair, rng)
                new_ids = object_ids(augmented.labels, cfg.min_pixels)
                if new_ids:
                    pair, ids = augmented, new_ids
            chosen = rng.choice(ids, size=min(cfg.prompts_per_image, len(ids)), replace=False)
            masks = np.stack([pair.labels == int(i) for i in chosen])
            batch.append((pair, masks, features))
        return batch

    def _augment(self, pair: FramedPair, rng: np.random.Generator) -> FramedPair:
        return augment(pair, rng, scale=self.config.zoom, rotate=self.config.rotate_degrees)

    @torch.no_grad()
    def _cache_views(self, examples: list[_Example], batch: int = 8) -> None:
        """``cache_views`` views per example (the first unaugmented), early encoder features computed once."""
        cfg = self.config
        rng = np.random.default_rng(cfg.seed + 7919)
        jobs = []
        for example in examples:
            for view in range(cfg.cache_views):
                pair, ids = example.pair, example.ids
                if view > 0 and cfg.augment:
                    augmented = self._augment(pair, rng)
                    new_ids = object_ids(augmented.labels, cfg.min_pixels)
                    if new_ids:
                        pair, ids = augmented, new_ids
                jobs.append((example, pair, ids))
        sam, device = self.model.sam, self.model.device
        for start in range(0, len(jobs), batch):
            chunk = jobs[start: start + batch]
            prepared = [PreparedImage(np.asarray(p.image, dtype=np.uint8),
                                      Geometry(tuple(p.image.shape), tuple(p.image.shape), self.size, p.stretch), None)
                        for _, p, _ in chunk]
            with self._autocast():
                features = self.split.early(encoder_input(prepared, sam, device))
            for i, (example, pair, ids) in enumerate(chunk):
                example.views.append((features[i: i + 1].detach(), pair.labels, ids))

    def _image_loss(self, embedding: torch.Tensor, masks: np.ndarray, rng: np.random.Generator,
                    backward: Callable[[torch.Tensor], None]) -> float:
        """Loss of one image's P objects over the first prompt and the corrective clicks.

        Each iteration's loss (divided by the number of iterations) goes to ``backward`` at once, so
        only one decoder graph is alive at a time. Returns the image's mean loss.
        """
        cfg, sam, size = self.config, self.model.sam, self.size
        kind = "box" if rng.random() < cfg.box_probability else "point"
        prompts = simulate_prompts(masks, rng, kind=kind)
        target = pad_masks(masks, size, embedding.device)
        h, w = masks.shape[1:]
        iterations = cfg.correction_clicks + 1
        mask_input = None
        total = 0.0
        for iteration in range(iterations):
            multimask = iteration == 0 and kind == "point"
            with self._autocast():
                low, iou = decode(sam, embedding, prompts, mask_input, multimask)
            up = upsample_logits(low, size)                                   # (P, K, S, S), float32
            k = up.shape[1]
            losses = mask_losses(up.flatten(0, 1), iou.flatten(), target.repeat_interleave(k, dim=0),
                                 cfg.loss).view(-1, k)
            best = losses.argmin(dim=1)                                 # SAM: back-propagate the best of K
            loss = losses.gather(1, best[:, None]).mean() / iterations
            last = iteration == iterations - 1
            if not last:
                rows = torch.arange(len(best), device=best.device)
                mask_input = low[rows, best][:, None].detach().float()  # (P, 1, lh, lw)
                pred = (up[rows, best, :h, :w] > 0).cpu().numpy()
            backward(loss)
            total += float(loss.detach())
            if not last:
                del low, iou, up, losses
                prompts = prompts.add_clicks([correction_click(pred[i], masks[i]) for i in range(len(masks))])
        return total

    def _micro_batch(self, rng: np.random.Generator, scale: float) -> float:
        """Forward and backward of one micro-batch, gradients multiplied by ``scale``; returns its loss.

        In the encoder modes the decoder passes back-propagate into a detached copy of the embeddings
        first, and the encoder runs its backward once, with the summed gradient.
        """
        batch = self._sample(rng)
        weight = scale / len(batch)

        def backward(loss: torch.Tensor) -> None:
            self.scaler.scale(loss * weight).backward()

        if self.config.mode == "decoder":
            total = sum(self._image_loss(emb, masks, rng, backward) for _, masks, emb in batch)
            return total / len(batch)
        with self._autocast():
            if self.split is not None:  # cached early features: only the late stages run
                stacked = self.split.late(torch.cat([features for _, _, features in batch]))
            else:
                stacked = embed_images(self.model.sam, [pair.image for pair, _, _ in batch], batch[0][0].stretch)
        leaf = stacked.detach().requires_grad_(True)
        total = sum(self._image_loss(leaf[i: i + 1], masks, rng, backward) for i, (_, masks, _) in enumerate(batch))
        if leaf.grad is not None:
            stacked.backward(leaf.grad)
        return total / len(batch)

    # ---- validation -----------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> Optional[float]:
        """Mean validation Dice (tight box and interior point prompts), None without validation data."""
        if not self.val_examples:
            return None
        sam, size = self.model.sam, self.size
        scores = []
        for example in self.val_examples:
            with self._autocast():
                if example.embedding is not None:
                    emb = example.embedding
                else:
                    emb = embed_images(sam, [example.pair.image], example.pair.stretch)
                ids = example.ids
                masks = np.stack([example.pair.labels == i for i in ids])
                h, w = masks.shape[1:]
                boxes = PromptSet(None, None, np.array([bounding_box(m) for m in masks], dtype=np.float32))
                low, _ = decode(sam, emb, boxes, None, multimask=False)
                pred = (upsample_logits(low[:, 0], size)[:, :h, :w] > 0).cpu().numpy()
                scores += [dice(pred[i], masks[i]) for i in range(len(ids))]
                points = np.array([[interior_point(m)] for m in masks], dtype=np.float32)
                prompt = PromptSet(points, np.ones((len(ids), 1), dtype=np.int64), None)
                low, iou = decode(sam, emb, prompt, None, multimask=True)
                pick = low[torch.arange(len(ids)), iou.argmax(dim=1)]
                pred = (upsample_logits(pick, size)[:, :h, :w] > 0).cpu().numpy()
                scores += [dice(pred[i], masks[i]) for i in range(len(ids))]
        return float(np.mean(scores))

    def _limit_val(self, examples: list[_Example]) -> list[_Example]:
        """At most ``max_val_objects`` objects, spread evenly over the validation planes."""
        total = sum(len(e.ids) for e in examples)
        cap = self.config.max_val_objects
        if total <= cap:
            return examples
        keep = set(np.linspace(0, total - 1, cap).round().astype(int).tolist())
        out, index = [], 0
        for example in examples:
            ids = [i for j, i in enumerate(example.ids) if index + j in keep]
            index += len(example.ids)
            if ids:
                out.append(_Example(example.pair, ids, source=example.source))
        return out

    # ---- the run --------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train; returns the result. The model ends with the best validated state active."""
        cfg = self.config
        device = self.model.device
        self.use_amp = cfg.amp if cfg.amp is not None else device.type == "cuda"
        start_time = time.perf_counter()
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(cfg.seed)
            rng = np.random.default_rng(cfg.seed)
            frozen = self.split.is_early if self.split is not None else None
            prepared = prepare_model(self.model, cfg.mode, self.lora, frozen=frozen)
            start_state = snapshot(self.model, prepared.names)
            try:
                return self._run(prepared, rng, start_time, start_state)
            except BaseException:
                # An error (or Ctrl-C) mid-run: put back exactly what the model carried before.
                settle(self.model, prepared, start_state, 0)
                raise
            finally:
                finish_model(self.model)

    def _run(self, prepared: PreparedState, rng: np.random.Generator, start_time: float,
             start_state: dict[str, torch.Tensor]) -> TrainResult:
        cfg, sam, names = self.config, self.model.sam, prepared.names
        self.train_examples = self._examples(self.train_pairs)
        self.val_examples = self._limit_val(self._examples(self.val_pairs))
        if cfg.mode == "decoder":
            self._embed_examples(self.train_examples)
            self._embed_examples(self.val_examples)
        elif self.split is not None:
            self._cache_views(self.train_examples)
        n_train = sum(len(e.ids) for e in self.train_examples)
        parameters = count_parameters(sam)
        params = [p for p in sam.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = max(1, min(cfg.warmup_steps, cfg.steps // 5))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: _lr_factor(s, warmup, cfg))
        self.scaler = scaler = torch.amp.GradScaler(
            "cuda", enabled=self.use_amp and self.model.device.type == "cuda" and not torch.cuda.is_bf16_supported())

        best_dice = val_before = self.validate()
        best_state = start_state
        best_step, bad_validations = 0, 0
        history: list[dict] = [{"step": 0, "loss": None, "val_dice": val_before}]
        cancelled = stopped_early = False
        step = 0
        for step in range(1, cfg.steps + 1):
            if self.cancel.is_set():
                cancelled, step = True, step - 1
                break
            optimiser.zero_grad(set_to_none=True)
            step_loss = 0.0
            for _ in range(cfg.grad_accum):
                if self.cancel.is_set():
                    cancelled = True
                    break
                step_loss += self._micro_batch(rng, 1.0 / cfg.grad_accum) / cfg.grad_accum
            if cancelled:
                optimiser.zero_grad(set_to_none=True)
                step -= 1
                break
            scaler.step(optimiser)
            scaler.update()
            scheduler.step()
            val_dice = None
            last = step == cfg.steps
            if self.val_examples and ((cfg.val_every and step % cfg.val_every == 0) or last):
                val_dice = self.validate()
                if val_dice > best_dice + cfg.min_delta:
                    best_dice, best_step, bad_validations = val_dice, step, 0
                    best_state = snapshot(self.model, names)
                else:
                    bad_validations += 1
            history.append({"step": step, "loss": step_loss, "val_dice": val_dice})
            if self.progress is not None:
                self.progress(TrainProgress(step, cfg.steps, step_loss, val_dice, best_dice,
                                            time.perf_counter() - start_time))
            if cfg.early_stop_patience and bad_validations >= cfg.early_stop_patience:
                stopped_early = True
                break
        if not self.val_examples:  # no selection possible: keep the last completed step
            best_state, best_step = snapshot(self.model, names), step
        tensors = settle(self.model, prepared, best_state, best_step)
        info = AdapterInfo(
            base_fingerprint=self.model.fingerprint,
            mode=cfg.mode,
            lora=self.lora,
            n_train_examples=n_train,
            val_dice_before=val_before,
            val_dice_after=best_dice,
            base_name=self.model.name,
            base_arch=self.model.arch,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            fingerprint=adapter_fingerprint(tensors, cfg.mode),
            extra={"steps": step, "best_step": best_step, "lr": cfg.lr, "seed": cfg.seed,
                   "images_per_step": cfg.images_per_step, "prompts_per_image": cfg.prompts_per_image},
        )
        if best_step > 0:
            set_active(self.model, info, names)
        return TrainResult(
            tensors=tensors, info=info, history=history, val_dice_before=val_before, val_dice_after=best_dice,
            steps_done=step, best_step=best_step, cancelled=cancelled, stopped_early=stopped_early,
            seconds=time.perf_counter() - start_time, parameters=parameters, n_train_examples=n_train,
        )


def _lr_factor(step: int, warmup: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier after ``step`` optimiser steps: linear warm-up, then constant or a
    cosine decay to 10 % at the last step."""
    if step + 1 < warmup:
        return (step + 1) / warmup
    if cfg.schedule == "constant":
        return 1.0
    progress = min(1.0, (step + 1 - warmup) / max(1, cfg.steps - warmup))
    return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))


def fine_tune(model: LoadedModel, train: Sequence[LabelledImage], val: Sequence[LabelledImage] = (),
              config: TrainConfig = TrainConfig(), progress: Optional[Callable[[TrainProgress], None]] = None,
              cancel: Optional[threading.Event] = None,
              embedder: Optional[Callable[[LabelledImage], torch.Tensor]] = None) -> TrainResult:
    """Shortcut for ``Trainer(model, train, val, config, progress, cancel, embedder).fit()``."""
    return Trainer(model, train, val, config, progress, cancel, embedder).fit()
