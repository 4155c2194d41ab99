"""The model-state transitions of a fine-tuning run: prepare, snapshot, restore, settle, finish.

A run changes a ``LoadedModel`` in place. :func:`prepare_model` puts the mode's adapter layers in
place and makes only the mode's parameters trainable (continuing from a compatible active adapter,
or setting an incompatible one aside); :func:`snapshot`/:func:`restore` copy the trainable tensors
out and back; :func:`settle` leaves the model with the best state (or exactly what it carried
before, when nothing beat the start); :func:`finish_model` turns gradients off again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from napari_vfmseg.models.base import LoadedModel
from napari_vfmseg.models.lora import LoRAConfig, inject_lora, lora_modules, unmerge_lora
from napari_vfmseg.training.adapters import (
    AdapterInfo,
    active_adapter,
    apply_adapter_tensors,
    backup_base_tensors,
    current_adapter_tensors,
    remove_adapter,
    set_active,
)

__all__ = ["PreparedState", "prepare_model", "snapshot", "restore", "settle", "finish_model", "is_trainable"]


@dataclass
class PreparedState:
    """What :func:`prepare_model` did: the trainable parameter ``names``, the adapter the run continues
    from (``continued``, None when it starts from the base) and an incompatible adapter set aside
    (``set_aside``: its tensors and info, put back when the run does not improve)."""

    names: list[str]
    continued: Optional[AdapterInfo]
    set_aside: Optional[tuple[dict[str, torch.Tensor], AdapterInfo]]


def is_trainable(name: str, mode: str, lora: Optional[LoRAConfig]) -> bool:
    """Whether parameter ``name`` of a SAM-shaped network trains in ``mode`` with ``lora``."""
    part = name.split(".", 1)[0]
    if ".lora_" in name or mode == "full":
        return True
    if part in ("prompt_encoder", "mask_decoder"):
        # With decoder LoRA, the transformer's base weights stay frozen.
        return not (lora is not None and lora.decoder_targets and name.startswith("mask_decoder.transformer."))
    return False


def prepare_model(model: LoadedModel, mode: str, lora: Optional[LoRAConfig],
                  frozen: Optional[Callable[[str], bool]] = None) -> PreparedState:
    """Adapter layers in place, only the mode's parameters trainable, base tensors backed up.

    ``frozen(name)`` True keeps a parameter frozen whatever the mode (e.g. cached early encoder stages).
    """
    sam = model.sam
    previous = active_adapter(model)
    set_aside = None
    compatible = previous is not None and previous.mode == mode and previous.lora == lora
    if previous is not None and not compatible:
        set_aside = (current_adapter_tensors(model), previous)
        remove_adapter(model)
    elif previous is None:
        remove_adapter(model)  # drops stray LoRA layers, if any
    unmerge_lora(sam)
    if lora is not None and not list(lora_modules(sam)):
        inject_lora(sam, lora)
    sam.eval()
    for _, layer in lora_modules(sam):
        layer.lora_dropout.train(True)
    names = []
    for name, p in sam.named_parameters():
        trainable = is_trainable(name, mode, lora) and not (frozen is not None and frozen(name))
        p.requires_grad_(trainable)
        if trainable:
            names.append(name)
    backup_base_tensors(model, names)
    if mode != "decoder":
        # Embeddings computed while the encoder trains (e.g. by a viewer's prefetch) must never be
        # cached under the key of the base model or of the previous adapter.
        model.adapter_fingerprint = f"training-{uuid.uuid4().hex[:12]}"
    return PreparedState(names, active_adapter(model), set_aside)


def snapshot(model: LoadedModel, names: list[str]) -> dict[str, torch.Tensor]:
    """Copies of the parameters ``names`` (on their device)."""
    params = dict(model.sam.named_parameters())
    return {name: params[name].detach().clone() for name in names}


def restore(model: LoadedModel, state: dict[str, torch.Tensor]) -> None:
    """Copy the tensors of ``state`` (from :func:`snapshot`) back into the model's parameters."""
    params = dict(model.sam.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def settle(model: LoadedModel, prepared: PreparedState, best_state: dict[str, torch.Tensor],
           best_step: int) -> dict[str, torch.Tensor]:
    """Leave the model with its best state; returns the adapter tensors (CPU copies).

    ``best_step`` 0 means nothing beat the starting point: the model gets back exactly what it
    carried before the run (the continued adapter, the one set aside, or the base).
    """
    tensors = {name: value.detach().to("cpu", copy=True) for name, value in best_state.items()}
    if best_step > 0:
        restore(model, best_state)
        return tensors
    if prepared.continued is not None:
        restore(model, best_state)
        set_active(model, prepared.continued, prepared.names)
    else:
        remove_adapter(model)
        if prepared.set_aside is not None:
            apply_adapter_tensors(model, *prepared.set_aside)
    return tensors


def finish_model(model: LoadedModel) -> None:
    """Gradients off and eval mode, whatever the run did."""
    for p in model.sam.parameters():
        p.requires_grad_(False)
        p.grad = None
    model.sam.eval()
