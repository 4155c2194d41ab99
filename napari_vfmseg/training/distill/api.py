"""Distillation in one call: teacher with its adapter, transfer set, run, figures, student file.

>>> teacher = load_teacher("builtin", adapter="liver.safetensors")           # doctest: +SKIP
>>> result = distill(teacher, [read_volume("ct.nii.gz")], "student.safetensors")   # doctest: +SKIP
>>> load_model("student.safetensors")                                        # doctest: +SKIP

The viewer's "Distil" button and ``vfmseg distill`` both call :func:`distill` (on a worker thread
in the viewer), passing a progress callback and a ``threading.Event`` to cancel.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from napari_vfmseg.models.base import LoadedModel
from napari_vfmseg.training.adapters import AdapterError, apply_adapter_tensors, read_adapter
from napari_vfmseg.training.distill.config import DistillConfig, DistillProgress, DistillResult
from napari_vfmseg.training.distill.loop import Distiller
from napari_vfmseg.training.distill.measure import agreement, embedding_error, encoder_times
from napari_vfmseg.training.distill.student_file import save_student
from napari_vfmseg.training.distill.transfer import build_transfer_set, labelled_planes, volume_planes

__all__ = ["apply_teacher_adapter", "load_teacher", "distill"]


def apply_teacher_adapter(teacher: LoadedModel, adapter: str | Path) -> LoadedModel:
    """Apply a fine-tuning adapter to the teacher (merged), refusing one fitted to another base."""
    tensors, info = read_adapter(adapter)
    if info.base_fingerprint != teacher.fingerprint:
        raise AdapterError(
            f"{adapter}: this adapter was fitted to base model {info.base_name or 'unknown'} (fingerprint "
            f"{info.base_fingerprint}), not to the teacher {teacher.name} (fingerprint {teacher.fingerprint}); "
            f"give the adapter's own base model as the teacher"
        )
    return apply_adapter_tensors(teacher, tensors, info, merge=True, source=str(adapter))


def load_teacher(name_or_path: str, adapter: Optional[str | Path] = None, device: str = "auto") -> LoadedModel:
    """``load_model(name_or_path)`` with ``adapter`` applied (see :func:`apply_teacher_adapter`)."""
    from napari_vfmseg.models import load_model

    teacher = load_model(name_or_path, device=device)
    return apply_teacher_adapter(teacher, adapter) if adapter else teacher


def _labelled_pairs(volume, labels: np.ndarray, min_pixels: int, window):
    from napari_vfmseg.training.data import pairs_from_volume

    return pairs_from_volume(np.asarray(volume.array), labels, axis=0, window=window, min_pixels=min_pixels,
                             source=str(getattr(volume, "path", None) or "labels"),
                             modality=getattr(volume, "modality", None))


def distill(teacher: LoadedModel, volumes: Sequence, out: Optional[str | Path] = None, *,
            labels: Sequence[tuple[object, np.ndarray]] = (), config: DistillConfig = DistillConfig(),
            window=None, progress: Optional[Callable[[DistillProgress], None]] = None,
            cancel: Optional[threading.Event] = None, checkpoint: Optional[str | Path] = None,
            resume: bool = True, timing_repeats: int = 10) -> DistillResult:
    """Distil ``teacher`` (its adapter applied) into a student and write it to ``out`` (when given).

    ``volumes``: ``napari_vfmseg.io.Volume`` objects (3D or 2D), the unlabelled transfer set.
    ``labels``: (Volume, label map) pairs whose planes along axis 0 with objects are labelled planes,
    used as transfer images and for the final round. ``checkpoint``: the resume file (default: next
    to ``out``), removed once the student file is written. A cancelled run writes no student file
    and keeps its checkpoint.
    """
    started = time.perf_counter()
    cfg = config
    planes, labelled, pairs = [], [], []
    for volume in volumes:
        planes += volume_planes(volume.array, volume.spacing, window, volume.modality, cfg.axes,
                                source=Path(str(volume.path or "volume")).name)
    for volume, label_map in labels:
        name = Path(str(volume.path or "labels")).name
        labelled += labelled_planes(volume.array, label_map, volume.spacing, window, volume.modality, 0,
                                    cfg.min_pixels, source=name)
        pairs += _labelled_pairs(volume, label_map, cfg.min_pixels, window)
    transfer = build_transfer_set(planes, labelled, cfg.max_transfer_images, cfg.augment_fraction,
                                  cfg.synthetic_fraction, cfg.img_size, cfg.seed)
    if checkpoint is None and out is not None:
        checkpoint = Path(out).with_name(Path(out).name.replace(".safetensors", "") + ".checkpoint.safetensors")
    distiller = Distiller(teacher, transfer, pairs, cfg, progress, cancel, checkpoint, resume)
    student, cancelled = distiller.run()
    seconds = time.perf_counter() - started
    card = _card(teacher, transfer, pairs, cfg, distiller, seconds)
    if not cancelled:
        sample = [item for item in transfer if item.kind != "synthetic"][:: max(1, len(transfer) // 16)][:16]
        card["figures"].update(encoder_times(teacher, student, sample or transfer[:4], timing_repeats))
        if distiller.targets is not None:
            card["figures"].update(embedding_error(student, distiller.targets))
            card["figures"].update(agreement(student, teacher, distiller.targets))
        if out is not None:
            save_student(out, student, card)
            if checkpoint is not None:   # the run is complete: nothing is left to resume
                Path(checkpoint).unlink(missing_ok=True)
    return DistillResult(student, card, distiller.history, cancelled, seconds, str(checkpoint) if checkpoint else None)


def _card(teacher: LoadedModel, transfer, pairs, cfg: DistillConfig, distiller: Distiller, seconds: float) -> dict:
    adapter = teacher.info.get("adapter") or {}
    kinds = [item.kind for item in transfer]
    targets = distiller.targets
    return {
        "teacher": {"name": teacher.name, "arch": teacher.arch, "fingerprint": teacher.fingerprint,
                    "image_size": teacher.image_size},
        "adapter": {"fingerprint": adapter.get("fingerprint"), "mode": adapter.get("mode")} if adapter else None,
        "student": {"size": cfg.student_size, "image_size": cfg.img_size,
                    "encoder_parameters": distiller.student.info.get("encoder_parameters")},
        "transfer": {"images": len(transfer), "planes": kinds.count("plane"),
                     "augmented": sum("(augmented)" in item.source for item in transfer),
                     "synthetic": kinds.count("synthetic"), "labelled": kinds.count("labelled"),
                     "objects": targets.n_objects if targets is not None else None},
        "steps": {"embed": cfg.embed_steps, "mask": cfg.mask_steps, "labels": cfg.label_steps if pairs else 0},
        "config": cfg.to_dict(),
        "figures": {"seconds": round(seconds, 2), "torch_threads": torch.get_num_threads()},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
