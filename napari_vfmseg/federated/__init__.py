"""Federated LoRA across sites on Flower (Qt-free; the optional extra ``napari-vfmseg[federated]``).

Sites fine-tune one LoRA adapter on their own scans and send only adapter tensors; the server
averages them and saves the global adapter after every round, a normal adapter file that
``apply_adapter`` and the viewer load.

Modules without Flower: :mod:`.config` (settings), :mod:`.shared_lora` (shared A, frozen base,
fingerprint check), :mod:`.aggregate` (example-weighted mean, payload check), :mod:`.local`
(a site's LoRA steps and Dice), :mod:`.site` (a site's data and rounds), :mod:`.result` (global
adapter and run report), :mod:`.base_model` (offline model loading). With Flower:
:mod:`.strategy` (the server's FedAvg over adapter tensors), :mod:`.apps` (ServerApp, ClientApp),
:mod:`.simulation` (simulation runtime and baselines), :mod:`.runtime` (SuperLink / SuperNode
processes). Names are imported lazily, so ``import napari_vfmseg.federated`` needs no Flower.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FederatedConfig": "config",
    "STRATEGIES": "config",
    "BaseModelMismatch": "shared_lora",
    "check_base": "shared_lora",
    "prepare_lora": "shared_lora",
    "weighted_mean": "aggregate",
    "Site": "site",
    "SiteData": "site",
    "load_site_data": "site",
    "save_global_adapter": "result",
    "RunRecord": "result",
    "load_base": "base_model",
    "LoRAStrategy": "strategy",
    "make_client_app": "apps",
    "make_server_app": "apps",
    "simulate": "simulation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_vfmseg.federated' has no attribute {name!r}")
    return getattr(importlib.import_module(f"napari_vfmseg.federated.{module}"), name)
