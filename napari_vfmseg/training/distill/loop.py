"""The distillation run: teacher pass, embedding stage, mask stage, labels round; checkpoints and cancel.

:class:`Distiller` owns one run. Every step draws its batch from a generator seeded by (seed,
stage, step), so a run resumed from a checkpoint (student weights, Adam moments, stage and step)
takes exactly the steps the uninterrupted run would have taken. The teacher pass is not saved; it
is repeated on resume (it is seeded too). Setting ``cancel`` stops before the next step and writes
a checkpoint of the last completed one.
"""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from napari_vfmseg.models.base import LoadedModel
from napari_vfmseg.models.student import build_student_sam
from napari_vfmseg.training.data import LabelledImage
from napari_vfmseg.training.distill.config import STAGES, DistillConfig, DistillProgress
from napari_vfmseg.training.distill.steps import embedding_loss, mask_loss, student_embeddings, teacher_embeddings
from napari_vfmseg.training.distill.student_file import (
    build_student, read_checkpoint, restore_optimiser, save_checkpoint, student_from_sam,
)
from napari_vfmseg.training.distill.targets import TargetSet, teacher_pass
from napari_vfmseg.training.distill.transfer import TransferImage

__all__ = ["Distiller"]

_STAGE_SEED = {name: i for i, name in enumerate(STAGES)}


class Distiller:
    """Distils ``teacher`` (a ``LoadedModel`` with its adapter applied) into a new student.

    ``transfer``: the transfer set (:func:`.transfer.build_transfer_set`); ``labelled``: planes with
    labels for the final round; ``checkpoint``: a resume file, read at the start when it exists and
    ``resume`` is True, written every ``config.checkpoint_every`` steps, at stage ends and on cancel.
    """

    def __init__(self, teacher: LoadedModel, transfer: Sequence[TransferImage],
                 labelled: Sequence[LabelledImage] = (), config: DistillConfig = DistillConfig(),
                 progress: Optional[Callable[[DistillProgress], None]] = None,
                 cancel: Optional[threading.Event] = None, checkpoint: Optional[str | Path] = None,
                 resume: bool = True) -> None:
        if not transfer:
            raise ValueError("the transfer set is empty: give at least one volume or image with contrast")
        self.teacher, self.transfer, self.labelled = teacher, list(transfer), list(labelled)
        self.config = config
        self.progress = progress
        self.cancel = cancel or threading.Event()
        self.checkpoint = Path(checkpoint) if checkpoint else None
        self.resume = resume
        self.history: list[dict] = []
        self.started = time.perf_counter()
        self.student = build_student(teacher, config.student_size, config.img_size, config.seed)
        self.targets: Optional[TargetSet] = None

    # ---- bookkeeping ------------------------------------------------------------------------------

    def _identity(self) -> dict:
        return {"teacher": self.teacher.fingerprint, "adapter": self.teacher.adapter_fingerprint or "",
                "config": self.config.to_dict(), "transfer": len(self.transfer)}

    def _report(self, stage: str, step: int, total: int, loss: Optional[float]) -> None:
        if self.progress is not None:
            self.progress(DistillProgress(stage, step, total, loss, time.perf_counter() - self.started))

    def _save(self, stage: str, step: int, optimiser) -> None:
        if self.checkpoint is not None:
            save_checkpoint(self.checkpoint, self.student, stage, step, optimiser,
                            {**self._identity(), "history": self.history})

    def _load(self):
        if self.checkpoint is None or not self.resume or not self.checkpoint.is_file():
            return None
        saved = read_checkpoint(self.checkpoint)
        mine = json.loads(json.dumps(self._identity()))   # tuples become lists, as in the file
        theirs = {k: saved.meta.get(k) for k in mine}
        if theirs != mine:
            raise ValueError(f"{self.checkpoint}: checkpoint of another distillation (teacher, adapter, settings "
                             f"or transfer set differ); delete it or choose another checkpoint path")
        self.student.sam.load_state_dict(saved.weights)
        self.history = list(saved.meta.get("history", []))
        return saved

    def _rng(self, stage: str, step: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, _STAGE_SEED[stage], step])

    def _batch(self, rng: np.random.Generator, size: int) -> list[int]:
        n = len(self.targets)
        return sorted(rng.choice(n, size=min(size, n), replace=False).tolist())

    # ---- stages -------------------------------------------------------------------------------------

    def _teacher_pass(self) -> bool:
        cfg = self.config
        self._report("teacher", 0, len(self.transfer), None)
        self.targets = teacher_pass(
            self.teacher, self.transfer, self.student.image_size, cfg.objects_per_image, cfg.min_pixels, cfg.seed,
            progress=lambda done, total: self._report("teacher", done, total, None), cancel=self.cancel)
        return self.targets is not None

    def _optimiser(self, stage: str) -> torch.optim.Optimizer:
        sam, cfg = self.student.sam, self.config
        encoder = list(sam.image_encoder.parameters())
        if stage == "embed":
            return torch.optim.AdamW(encoder, lr=cfg.embed_lr, weight_decay=1e-4)
        decoder = list(sam.prompt_encoder.parameters()) + list(sam.mask_decoder.parameters())
        return torch.optim.AdamW([{"params": encoder, "lr": cfg.mask_lr},
                                  {"params": decoder, "lr": cfg.mask_lr * 0.1}], weight_decay=1e-4)

    def _train_stage(self, stage: str, total: int, start: int, saved) -> bool:
        """Run steps ``start`` .. ``total`` of ``stage``; False when cancelled."""
        cfg, sam = self.config, self.student.sam
        optimiser = self._optimiser(stage)
        if saved is not None and saved.stage == stage:
            restore_optimiser(optimiser, saved)
        bases = [group["lr"] for group in optimiser.param_groups]
        for p in sam.parameters():
            p.requires_grad_(True)
        sam.train()
        try:
            for step in range(start + 1, total + 1):
                if self.cancel.is_set():
                    self._save(stage, step - 1, optimiser)
                    return False
                factor = 0.5 * (1.0 + math.cos(math.pi * (step - 1) / max(total, 1)))   # cosine decay
                for group, base in zip(optimiser.param_groups, bases):
                    group["lr"] = base * max(factor, 0.02)
                rng = self._rng(stage, step)
                indices = self._batch(rng, cfg.batch if stage == "embed" else cfg.mask_batch)
                s_emb = student_embeddings(self.student, self.targets, indices)
                t_emb = teacher_embeddings(self.targets, indices, self.student.device)
                loss = embedding_loss(s_emb, t_emb)
                if stage == "mask":
                    loss = cfg.embed_weight * loss
                    masks = mask_loss(self.student, self.teacher, s_emb, t_emb, self.targets, indices, rng,
                                      cfg.prompts_per_image, cfg.iou_weight)
                    if masks is not None:
                        loss = loss + masks
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                self.history.append({"stage": stage, "step": step, "loss": float(loss.detach())})
                self._report(stage, step, total, float(loss.detach()))
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
                    self._save(stage, step, optimiser)
        finally:
            sam.eval()
            for p in sam.parameters():
                p.requires_grad_(False)
                p.grad = None
        self._save(stage, total, None)
        return True

    def _labels_round(self, start: int) -> bool:
        from napari_vfmseg.training.train_config import TrainConfig
        from napari_vfmseg.training.trainer import fine_tune

        cfg = self.config
        steps = cfg.label_steps - start
        if steps <= 0:
            return True
        config = TrainConfig(mode="full", steps=steps, lr=cfg.label_lr, seed=cfg.seed + start, augment=True,
                             val_every=0, early_stop_patience=0, warmup_steps=max(1, min(10, steps // 10)),
                             min_pixels=cfg.min_pixels)
        result = fine_tune(self.student, self.labelled, (), config, cancel=self.cancel,
                           progress=lambda p: self._report("labels", start + p.step, cfg.label_steps, p.loss))
        self.history.extend({"stage": "labels", "step": start + h["step"], "loss": h["loss"]}
                            for h in result.history[1:])
        # The round leaves its weights as an active "full" adapter; a fresh network owns them from now on.
        config = _config_of(self.student)
        sam = build_student_sam(config)
        sam.load_state_dict({k: v for k, v in self.student.sam.state_dict().items() if ".lora_" not in k})
        self.student = student_from_sam(sam, config, self.student.device, _plain_info(self.student.info),
                                        self.student.name)
        self._save("labels", start + result.steps_done, None)
        return not result.cancelled

    # ---- the run ------------------------------------------------------------------------------------

    def run(self) -> tuple[LoadedModel, bool]:
        """Distil; returns (student, cancelled). The student is final unless cancelled."""
        cfg = self.config
        saved = self._load()
        order = ["embed", "mask", "labels"]
        stage_at = order.index(saved.stage) if saved is not None and saved.stage in order else 0
        step_at = saved.step if saved is not None else 0
        totals = {"embed": cfg.embed_steps, "mask": cfg.mask_steps,
                  "labels": cfg.label_steps if self.labelled else 0}
        needs_teacher = any(totals[s] > (step_at if i == stage_at else 0)
                            for i, s in enumerate(order[:2]) if i >= stage_at)   # embed or mask steps left
        if needs_teacher and not self._teacher_pass():
            return self.student, True
        for index, stage in enumerate(order):
            if index < stage_at:
                continue
            start = step_at if index == stage_at else 0
            if stage == "labels":
                done = self._labels_round(start) if totals["labels"] else True
            else:
                done = start >= totals[stage] or self._train_stage(stage, totals[stage], start, saved)
            if not done:
                return self.student, True
        self.student.fingerprint = _fingerprint(self.student)
        return self.student, False


def _config_of(student: LoadedModel):
    from napari_vfmseg.models.student import StudentConfig

    return StudentConfig.from_dict(student.info["student_config"])


def _plain_info(info: dict) -> dict:
    return {k: v for k, v in info.items() if k not in ("adapter",)}


def _fingerprint(student: LoadedModel) -> str:
    from napari_vfmseg.models.base import fingerprint_state_dict

    return fingerprint_state_dict(student.sam.state_dict())
