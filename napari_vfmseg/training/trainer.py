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
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from napari_vfmseg.models.base import LoadedModel
from napari_vfmseg.models.lora import (
    LoRAConfig,
    ParameterCount,
    count_parameters,
    default_encoder_targets,
    inject_lora,
    lora_modules,
    unmerge_lora,
)
from napari_vfmseg.training.adapters import (
    MODES,
    AdapterInfo,
    active_adapter,
    adapter_fingerprint,
    apply_adapter_tensors,
    backup_base_tensors,
    current_adapter_tensors,
    remove_adapter,
    save_adapter,
    set_active,
)
from napari_vfmseg.training.batched import encode_prompts
from napari_vfmseg.engine.preprocess import Geometry, PreparedImage, encoder_input
from napari_vfmseg.training.data import FramedPair, LabelledImage, augment, frame_pair, object_ids
from napari_vfmseg.training.losses import LossWeights, mask_losses
from napari_vfmseg.training.prompts import PromptSet, bounding_box, correction_click, interior_point, simulate_prompts

__all__ = ["TrainConfig", "TrainProgress", "TrainResult", "Trainer", "fine_tune", "decode", "embed_images"]


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one fine-tuning run (defaults suit a few dozen planes)."""

    mode: str = "decoder"
    lora: Optional[LoRAConfig] = None  # None: no LoRA in decoder mode; rank 4 on the default targets in encoder-lora
    steps: int = 200
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 10
    images_per_step: int = 4
    prompts_per_image: int = 4
    grad_accum: int = 1                 # micro-batches per optimiser step
    correction_clicks: int = 2          # corrective clicks after the first prompt
    box_probability: float = 0.5        # first prompt: a jittered box, else one interior point
    augment: bool = True                # flips, intensity jitter, small zoom (not in decoder mode)
    val_every: int = 25                 # steps between validations (0: only before and after)
    early_stop_patience: int = 4        # validations without improvement before stopping (0: never)
    min_delta: float = 1e-3             # improvement in validation Dice that counts
    min_pixels: int = 20                # smaller objects are ignored
    max_val_objects: int = 64
    seed: int = 0
    amp: Optional[bool] = None          # mixed precision; None = on for CUDA
    loss: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown fine-tuning mode {self.mode!r}: use one of {MODES}")
        for name in ("steps", "images_per_step", "prompts_per_image", "grad_accum"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.correction_clicks < 0 or self.val_every < 0 or self.early_stop_patience < 0:
            raise ValueError("correction_clicks, val_every and early_stop_patience must be >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.mode == "decoder" and self.lora is not None and self.lora.encoder_targets:
            raise ValueError("decoder mode never changes the image encoder: use lora.encoder_targets=() "
                             "or the 'encoder-lora' mode")


@dataclass
class TrainProgress:
    """Reported to the progress callback after every step (``val_dice`` only when validated)."""

    step: int
    total_steps: int
    loss: float
    val_dice: Optional[float]
    best_val_dice: Optional[float]
    elapsed_s: float


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.fit`. ``tensors`` and ``info`` make the adapter file."""

    tensors: dict[str, torch.Tensor]
    info: AdapterInfo
    history: list[dict]
    val_dice_before: Optional[float]
    val_dice_after: Optional[float]
    steps_done: int
    best_step: int
    cancelled: bool
    stopped_early: bool
    seconds: float
    parameters: ParameterCount
    n_train_examples: int

    @property
    def improved(self) -> bool:
        """True when the model now carries a state better than the one it started from."""
        return self.best_step > 0

    def save(self, path) -> Path:
        """Write the adapter (see :func:`napari_vfmseg.training.adapters.save_adapter`)."""
        return save_adapter(path, self.tensors, self.info)

    def summary(self) -> dict:
        return {
            "mode": self.info.mode,
            "val_dice_before": self.val_dice_before,
            "val_dice_after": self.val_dice_after,
            "steps_done": self.steps_done,
            "best_step": self.best_step,
            "cancelled": self.cancelled,
            "stopped_early": self.stopped_early,
            "seconds": round(self.seconds, 3),
            "trainable_parameters": self.parameters.trainable,
            "total_parameters": self.parameters.total,
            "trainable_share": self.parameters.share,
            "n_train_examples": self.n_train_examples,
        }


# --------------------------------------------------------------------------------------------- #
# Forward passes shared by training and validation


def embed_images(sam, images: Sequence[np.ndarray], stretch: bool = False) -> torch.Tensor:
    """Embeddings (B, C, gh, gw) of uint8 grey images (h, w) already in the model frame
    (max(h, w) = input size; see :func:`~napari_vfmseg.training.data.frame_pair`).

    Normalisation and padding are the engine's (:func:`~napari_vfmseg.engine.preprocess.encoder_input`);
    ``stretch`` selects MedSAM's convention. Gradients flow when the caller allows them.
    """
    size = int(sam.image_encoder.img_size)
    prepared = [
        PreparedImage(np.asarray(img, dtype=np.uint8),
                      Geometry(tuple(img.shape), tuple(img.shape), size, stretch), None)
        for img in images
    ]
    return sam.image_encoder(encoder_input(prepared, sam, sam.pixel_mean.device))


def decode(sam, embedding: torch.Tensor, prompts: PromptSet, mask_input: Optional[torch.Tensor] = None,
           multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-res logits (P, K, lh, lw) and predicted IoUs (P, K) for P prompts on one embedding (1, C, gh, gw).

    Prompt coordinates are (row, col) in the model's input frame; :func:`.batched.encode_prompts`
    turns them into SAM's (x, y). ``mask_input`` (P, 1, lh, lw) holds previous low-res logits. K is
    3 with ``multimask``, else 1.
    """
    device = embedding.device
    points = labels = boxes = None
    if prompts.points is not None:
        points = torch.as_tensor(np.ascontiguousarray(prompts.points), dtype=torch.float32, device=device)
        labels = torch.as_tensor(prompts.labels, dtype=torch.int64, device=device)
    if prompts.boxes is not None:
        boxes = torch.as_tensor(np.ascontiguousarray(prompts.boxes), dtype=torch.float32, device=device)
    sparse, dense = encode_prompts(sam, points, labels, boxes, mask_input)
    return sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )


def _upsample(low: torch.Tensor, size: int) -> torch.Tensor:
    """(..., lh, lw) logits → (..., size, size) at the model's (padded) input resolution."""
    shape = low.shape
    up = F.interpolate(low.reshape(-1, 1, *shape[-2:]).float(), (size, size), mode="bilinear", align_corners=False)
    return up.reshape(*shape[:-2], size, size)


def _pad_masks(masks: np.ndarray, size: int, device) -> torch.Tensor:
    """(P, h, w) bool → (P, size, size) float tensor, zero-padded at the bottom and right."""
    out = torch.zeros((masks.shape[0], size, size), dtype=torch.float32)
    out[:, : masks.shape[1], : masks.shape[2]] = torch.from_numpy(masks.astype(np.float32))
    return out.to(device)


def _dice(pred: np.ndarray, target: np.ndarray) -> float:
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(pred, target).sum() / total)


# --------------------------------------------------------------------------------------------- #


@dataclass
class _Example:
    pair: FramedPair
    ids: list[int]
    embedding: Optional[torch.Tensor] = None  # (1, C, gh, gw) on the device, decoder mode only
    source: Optional[LabelledImage] = None


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
        self.train_pairs = [p for p in train if object_ids(p.labels, config.min_pixels)]
        self.val_pairs = [p for p in val if object_ids(p.labels, config.min_pixels)]
        if not self.train_pairs:
            raise ValueError(f"no training plane has an object of at least {config.min_pixels} pixels")
        self.lora = self._resolve_lora()

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

    # ---- setting up the model ------------------------------------------------------------------

    def _prepare_model(self) -> list[str]:
        """Adapter layers in place, only the mode's parameters trainable; returns their names."""
        model, sam, cfg = self.model, self.model.sam, self.config
        previous = active_adapter(model)
        self._previous = None
        compatible = previous is not None and previous.mode == cfg.mode and previous.lora == self.lora
        if previous is not None and not compatible:
            self._previous = (current_adapter_tensors(model), previous)
            remove_adapter(model)
        elif previous is None:
            remove_adapter(model)  # drops stray LoRA layers, if any
        unmerge_lora(sam)
        if self.lora is not None and not list(lora_modules(sam)):
            inject_lora(sam, self.lora)
        sam.eval()
        for _, layer in lora_modules(sam):
            layer.lora_dropout.train(True)
        for p in sam.parameters():
            p.requires_grad_(False)
        names = []
        for name, p in sam.named_parameters():
            part = name.split(".", 1)[0]
            if ".lora_" in name:
                trainable = True
            elif cfg.mode == "full":
                trainable = True
            elif part in ("prompt_encoder", "mask_decoder"):
                # With decoder LoRA, the transformer's base weights stay frozen.
                trainable = not (self.lora is not None and self.lora.decoder_targets
                                 and name.startswith("mask_decoder.transformer."))
            else:
                trainable = False
            if trainable:
                p.requires_grad_(True)
                names.append(name)
        backup_base_tensors(model, names)
        if cfg.mode != "decoder":
            # Embeddings computed while the encoder trains (e.g. by a viewer's prefetch) must never be
            # cached under the key of the base model or of the previous adapter.
            model.adapter_fingerprint = f"training-{uuid.uuid4().hex[:12]}"
        return names

    def _finish_model(self) -> None:
        for p in self.model.sam.parameters():
            p.requires_grad_(False)
            p.grad = None
        self.model.sam.eval()

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
        if self.embedder is not None:
            for example in examples:
                features = torch.as_tensor(self.embedder(example.source))
                example.embedding = features.to(device, torch.float32).reshape(1, *features.shape[-3:])
            return
        for start in range(0, len(examples), batch):
            chunk = examples[start: start + batch]
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
        """``images_per_step`` (pair, masks (P, h, w), embedding or None) for one micro-batch."""
        cfg = self.config
        picks = rng.choice(len(self.train_examples), size=min(cfg.images_per_step, len(self.train_examples)),
                           replace=False)
        batch = []
        for index in picks:
            example = self.train_examples[int(index)]
            pair, ids = example.pair, example.ids
            if cfg.augment and cfg.mode != "decoder":
                augmented = augment(pair, rng)
                new_ids = object_ids(augmented.labels, cfg.min_pixels)
                if new_ids:
                    pair, ids = augmented, new_ids
            chosen = rng.choice(ids, size=min(cfg.prompts_per_image, len(ids)), replace=False)
            masks = np.stack([pair.labels == int(i) for i in chosen])
            batch.append((pair, masks, example.embedding))
        return batch

    def _image_loss(self, embedding: torch.Tensor, masks: np.ndarray, rng: np.random.Generator,
                    backward: Callable[[torch.Tensor], None]) -> float:
        """Loss of one image's P objects over the first prompt and the corrective clicks.

        Each iteration's loss (divided by the number of iterations) goes to ``backward`` at once, so
        only one decoder graph is alive at a time. Returns the image's mean loss.
        """
        cfg, sam, size = self.config, self.model.sam, self.size
        kind = "box" if rng.random() < cfg.box_probability else "point"
        prompts = simulate_prompts(masks, rng, kind=kind)
        target = _pad_masks(masks, size, embedding.device)
        h, w = masks.shape[1:]
        iterations = cfg.correction_clicks + 1
        mask_input = None
        total = 0.0
        for iteration in range(iterations):
            multimask = iteration == 0 and kind == "point"
            with self._autocast():
                low, iou = decode(sam, embedding, prompts, mask_input, multimask)
            up = _upsample(low, size)                                   # (P, K, S, S), float32
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
                pred = (_upsample(low[:, 0], size)[:, :h, :w] > 0).cpu().numpy()
                scores += [_dice(pred[i], masks[i]) for i in range(len(ids))]
                points = np.array([[interior_point(m)] for m in masks], dtype=np.float32)
                prompt = PromptSet(points, np.ones((len(ids), 1), dtype=np.int64), None)
                low, iou = decode(sam, emb, prompt, None, multimask=True)
                pick = low[torch.arange(len(ids)), iou.argmax(dim=1)]
                pred = (_upsample(pick, size)[:, :h, :w] > 0).cpu().numpy()
                scores += [_dice(pred[i], masks[i]) for i in range(len(ids))]
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

    def _snapshot(self, names: list[str]) -> dict[str, torch.Tensor]:
        params = dict(self.model.sam.named_parameters())
        return {name: params[name].detach().clone() for name in names}

    def _restore(self, snapshot: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.sam.named_parameters())
        with torch.no_grad():
            for name, value in snapshot.items():
                params[name].copy_(value)

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
            names = self._prepare_model()
            previous_info = active_adapter(self.model)
            start_state = self._snapshot(names)
            try:
                return self._run(names, rng, start_time, previous_info, start_state)
            except BaseException:
                # An error (or Ctrl-C) mid-run: put back exactly what the model carried before.
                self._settle(names, start_state, 0, previous_info)
                raise
            finally:
                self._finish_model()

    def _run(self, names: list[str], rng: np.random.Generator, start_time: float,
             previous_info: Optional[AdapterInfo], start_state: dict[str, torch.Tensor]) -> TrainResult:
        cfg, sam = self.config, self.model.sam
        self.train_examples = self._examples(self.train_pairs)
        self.val_examples = self._limit_val(self._examples(self.val_pairs))
        if cfg.mode == "decoder":
            self._embed_examples(self.train_examples)
            self._embed_examples(self.val_examples)
        n_train = sum(len(e.ids) for e in self.train_examples)
        parameters = count_parameters(sam)
        params = [p for p in sam.parameters() if p.requires_grad]
        optimiser = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = max(1, min(cfg.warmup_steps, cfg.steps // 5))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / warmup))
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
                    best_state = self._snapshot(names)
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
            best_state, best_step = self._snapshot(names), step
        tensors = self._settle(names, best_state, best_step, previous_info)
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

    def _settle(self, names: list[str], best_state: dict[str, torch.Tensor], best_step: int,
                previous_info: Optional[AdapterInfo]) -> dict[str, torch.Tensor]:
        """Leave the model with its best state; returns the adapter tensors (CPU copies)."""
        tensors = {name: value.detach().to("cpu", copy=True) for name, value in best_state.items()}
        if best_step > 0:
            self._restore(best_state)
            return tensors
        # Nothing beat the starting point: put back exactly what was there before the run.
        if previous_info is not None:  # continued from a compatible adapter
            self._restore(best_state)
            set_active(self.model, previous_info, names)
        else:
            remove_adapter(self.model)
            if self._previous is not None:
                apply_adapter_tensors(self.model, *self._previous)
        return tensors


def fine_tune(model: LoadedModel, train: Sequence[LabelledImage], val: Sequence[LabelledImage] = (),
              config: TrainConfig = TrainConfig(), progress: Optional[Callable[[TrainProgress], None]] = None,
              cancel: Optional[threading.Event] = None,
              embedder: Optional[Callable[[LabelledImage], torch.Tensor]] = None) -> TrainResult:
    """Shortcut for ``Trainer(model, train, val, config, progress, cancel, embedder).fit()``."""
    return Trainer(model, train, val, config, progress, cancel, embedder).fit()
