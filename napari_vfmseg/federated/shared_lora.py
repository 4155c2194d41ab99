"""LoRA layers that every site and the server build identically: shared A, zero B, base frozen.

FFA-LoRA (Sun et al., ICLR 2024) freezes ``A`` at a random value that all parties share and trains
only ``B``. The update of a layer is then ``ΔW = s · B A`` with the same ``A`` everywhere, so the
example-weighted mean of the sites' ``B`` gives exactly the weighted mean of their updates:
``Σ w_k s B_k A = s (Σ w_k B_k) A``. Plain FedAvg of ``A`` and ``B`` averages the factors, and
``mean(B) mean(A)`` is not ``mean(B A)``.

``A`` comes from a seeded generator per layer (seed + the layer's name), not from torch's global
random state, so a site that loads the same base model gets the same ``A`` as the server without
receiving it. Names are those of ``sam.state_dict()`` (``mask_decoder.transformer.layers.0.
self_attn.q_proj.lora_B``), as in adapter files.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch

from napari_vfmseg.models.base import LoadedModel
from napari_vfmseg.models.lora import inject_lora, lora_modules
from napari_vfmseg.training.adapters import remove_adapter

from napari_vfmseg.federated.config import FederatedConfig

__all__ = [
    "BaseModelMismatch",
    "check_base",
    "prepare_lora",
    "shared_a",
    "exchanged_names",
    "lora_names",
    "get_tensors",
    "set_tensors",
]


class BaseModelMismatch(ValueError):
    """A site's base model is not the one the federation trains (different weights)."""


def check_base(model: LoadedModel, expected: str, site: str = "site") -> None:
    """Refuse to train when ``model``'s weights are not the federation's base (fingerprints differ)."""
    if model.fingerprint != expected:
        raise BaseModelMismatch(
            f"{site}: its base model {model.name!r} has fingerprint {model.fingerprint}, but the federation "
            f"trains an adapter for base {expected}; load the same base weights as the server"
        )


def _layer_seed(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{int(seed)}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def shared_a(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The frozen ``A`` of LoRA layer ``name``: uniform in ±1/sqrt(fan_in) (the bound of LoRA's
    Kaiming-uniform start), from a generator seeded by ``seed`` and ``name``; float32, CPU.
    ``shape`` is (rank, in) or (rank, in, 1, 1)."""
    fan_in = int(np.prod(shape[1:]))
    bound = 1.0 / math.sqrt(fan_in)
    generator = torch.Generator().manual_seed(_layer_seed(seed, name))
    return (torch.rand(shape, generator=generator, dtype=torch.float32) * 2.0 - 1.0) * bound


def prepare_lora(model: LoadedModel, config: FederatedConfig) -> list[str]:
    """Put fresh LoRA layers on ``model`` (in place): ``A`` shared, ``B`` zero, every weight frozen.

    Any active adapter is removed first. Returns the names of the tensors that train at a site
    (:func:`exchanged_names`); nothing has ``requires_grad`` yet (the local loop turns it on).
    """
    remove_adapter(model)
    inject_lora(model.sam, config.lora)
    with torch.no_grad():
        for name, layer in lora_modules(model.sam):
            layer.lora_A.copy_(shared_a(f"{name}.lora_A", tuple(layer.lora_A.shape), config.seed))
            layer.lora_B.zero_()
    for p in model.sam.parameters():
        p.requires_grad_(False)
    model.sam.eval()
    return exchanged_names(model, config.strategy)


def lora_names(model: LoadedModel) -> list[str]:
    """Every ``lora_A`` and ``lora_B`` tensor name of the model, sorted."""
    return sorted(n for n in model.sam.state_dict() if n.endswith((".lora_A", ".lora_B")))


def exchanged_names(model: LoadedModel, strategy: str) -> list[str]:
    """The tensors that sites train and send: ``lora_B`` only for "ffa", ``lora_A`` and ``lora_B`` for
    "fedavg"."""
    names = lora_names(model)
    return [n for n in names if n.endswith(".lora_B")] if strategy == "ffa" else names


def get_tensors(model: LoadedModel, names: list[str]) -> dict[str, np.ndarray]:
    """float32 numpy copies of the named tensors."""
    state = model.sam.state_dict()
    return {name: state[name].detach().to("cpu", torch.float32).numpy().copy() for name in names}


def set_tensors(model: LoadedModel, tensors: dict[str, np.ndarray]) -> None:
    """Copy ``tensors`` into the model; a name it does not have, or a wrong shape, is an error."""
    params = dict(model.sam.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            if name not in params:
                raise ValueError(f"tensor {name!r} has no place in model {model.name!r}")
            target = params[name]
            if tuple(target.shape) != tuple(np.shape(value)):
                raise ValueError(f"tensor {name!r} has shape {tuple(np.shape(value))}, the model expects "
                                 f"{tuple(target.shape)}")
            target.copy_(torch.as_tensor(np.asarray(value), dtype=target.dtype, device=target.device))
