"""The student as a model and as files: built from its teacher, saved with its card, checkpointed.

- :func:`build_student`: a :class:`~napari_vfmseg.models.student.StudentConfig` network whose prompt
  encoder and mask decoder start as the teacher's (its adapter applied), as a ``LoadedModel``.
- :func:`save_student`: the safetensors file ``load_model(path)`` and ``--model PATH`` accept; its
  metadata holds the format tag, the architecture, the engine conventions and the card.
- :func:`save_checkpoint` / :func:`read_checkpoint`: the resume file written during a run (student
  weights, optimiser moments, stage and step), atomically, so a cancelled or killed run keeps the
  last one whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from napari_vfmseg.io.atomic import atomic_path
from napari_vfmseg.models.base import LoadedModel, fingerprint_state_dict
from napari_vfmseg.models.student import STUDENT_FORMAT, StudentConfig, build_student_sam, student_config_for

__all__ = ["CHECKPOINT_FORMAT", "Checkpoint", "build_student", "student_from_sam", "save_student",
           "save_checkpoint", "read_checkpoint"]

CHECKPOINT_FORMAT = "napari-vfmseg-distill-checkpoint"


def _effective(sam, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The weights under ``prefixes`` as the network computes with them: an unmerged LoRA layer's
    update is added to its base weight, the LoRA factors themselves are left out."""
    from napari_vfmseg.models.lora import lora_modules

    state = {k: v for k, v in sam.state_dict().items() if k.startswith(prefixes) and ".lora_" not in k}
    with torch.no_grad():
        for name, layer in lora_modules(sam):
            key = f"{name}.weight"
            if key in state and not layer.merged:
                state[key] = layer.weight + layer.delta_weight().to(layer.weight.dtype)
    return state


def student_from_sam(sam, config: StudentConfig, device: torch.device, info: dict, name: str = "") -> LoadedModel:
    """A ``LoadedModel`` record around a student network (fingerprint of its current weights)."""
    sam = sam.to(device).eval()
    info = {**info, "student_config": config.to_dict(),
            "parameters": sum(p.numel() for p in sam.parameters()),
            "encoder_parameters": sum(p.numel() for p in sam.image_encoder.parameters())}
    return LoadedModel(sam=sam, name=name or f"student-{config.size}", arch="student", device=device,
                       fingerprint=fingerprint_state_dict(sam.state_dict()), info=info)


def build_student(teacher: LoadedModel, size: str = "tiny", img_size: int = 256, seed: int = 0) -> LoadedModel:
    """A student of encoder ``size`` at ``img_size`` px; its prompt encoder and mask decoder are
    copies of the teacher's as it computes (an active adapter included, merged or not)."""
    config = student_config_for(teacher.sam, size, img_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        sam = build_student_sam(config)
    decoder_state = _effective(teacher.sam, ("prompt_encoder.", "mask_decoder."))
    missing = [k for k in sam.state_dict() if k.startswith(("prompt_encoder.", "mask_decoder.")) and k not in decoder_state]
    if missing:
        raise ValueError(f"teacher {teacher.name!r}: its decoder does not fit a SAM decoder (missing {missing[:3]})")
    sam.load_state_dict(decoder_state, strict=False)
    info = {key: teacher.info.get(key) for key in ("preprocess", "propagation")}
    info = {"preprocess": info["preprocess"] or "sam", "propagation": info["propagation"] or "generic"}
    return student_from_sam(sam, config, teacher.device, info)


def save_student(path: str | Path, student: LoadedModel, card: dict) -> Path:
    """Write the student's weights and card as a safetensors file, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a student file must end in .safetensors")
    state = {k: v.detach().to("cpu").contiguous() for k, v in student.sam.state_dict().items() if ".lora_" not in k}
    metadata = {
        "format": STUDENT_FORMAT,
        "config": json.dumps(student.info["student_config"]),
        "preprocess": str(student.info.get("preprocess") or "sam"),
        "propagation": str(student.info.get("propagation") or "generic"),
        "card": json.dumps(card),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        save_file(state, str(temporary), metadata=metadata)
    return path


@dataclass
class Checkpoint:
    """A resume checkpoint: weights, optimiser moments by parameter index, where the run stood."""

    weights: dict[str, torch.Tensor]
    moments: dict[str, torch.Tensor]
    stage: str
    step: int
    meta: dict


def save_checkpoint(path: str | Path, student: LoadedModel, stage: str, step: int,
                    optimiser: Optional[torch.optim.Optimizer], meta: dict) -> Path:
    """Write a resume checkpoint (safetensors) atomically. ``meta`` must be JSON-serialisable."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in student.sam.state_dict().items()}
    steps = {}
    if optimiser is not None:
        for index, state in optimiser.state_dict()["state"].items():
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    tensors[f"opt.{index}.{key}"] = state[key].detach().to("cpu").contiguous()
            if "step" in state:
                steps[str(index)] = float(state["step"])
    metadata = {"format": CHECKPOINT_FORMAT, "stage": stage, "step": str(int(step)),
                "optimiser_steps": json.dumps(steps), "meta": json.dumps(meta)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return path


def read_checkpoint(path: str | Path) -> Checkpoint:
    """A checkpoint written by :func:`save_checkpoint`; ``ValueError`` naming the file otherwise."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable distillation checkpoint ({exc})") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a napari-vfmseg distillation checkpoint")
    meta = json.loads(metadata.get("meta") or "{}")
    meta["optimiser_steps"] = json.loads(metadata.get("optimiser_steps") or "{}")
    weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    moments = {k[len("opt."):]: v for k, v in tensors.items() if k.startswith("opt.")}
    return Checkpoint(weights, moments, metadata.get("stage", ""), int(metadata.get("step", "0")), meta)


def restore_optimiser(optimiser: torch.optim.Optimizer, checkpoint: Checkpoint) -> None:
    """Put the checkpoint's Adam moments back into a freshly built ``optimiser`` of the same stage."""
    state = optimiser.state_dict()
    restored = {}
    for index_text, step in checkpoint.meta.get("optimiser_steps", {}).items():
        index = int(index_text)
        entry = {"step": torch.tensor(step)}
        for key in ("exp_avg", "exp_avg_sq"):
            if f"{index}.{key}" in checkpoint.moments:
                entry[key] = checkpoint.moments[f"{index}.{key}"]
        restored[index] = entry
    state["state"] = restored
    optimiser.load_state_dict(state)
