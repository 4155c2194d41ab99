"""The server's record of a federated run and the global adapter it saves after every round.

:func:`save_global_adapter` writes the round's global adapter as a normal adapter file (atomic,
safetensors): the shared ``A`` (FFA) or the averaged ``A`` (FedAvg) with the averaged ``B``, and
metadata that says round, sites, examples and strategy, so ``apply_adapter`` and the viewer load
it like any adapter; ``NAME.safetensors`` always holds the latest round and ``NAME.round<N>.
safetensors`` each round's (:func:`round_path`). :class:`RunRecord` is the JSON report written beside it after every round
(``<adapter>.rounds.json``): per round, per site, the tensors received, their bytes, the examples
and the held-out Dice.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from napari_vfmseg.io.atomic import write_text_atomic
from napari_vfmseg.models.base import LoadedModel
from napari_vfmseg.training.adapters import AdapterInfo, save_adapter

from napari_vfmseg.federated.config import FederatedConfig
from napari_vfmseg.federated.shared_lora import get_tensors, lora_names

__all__ = ["SiteReport", "RoundRecord", "RunRecord", "save_global_adapter", "report_path", "round_path",
           "model_bytes"]


def report_path(adapter_path: str | Path) -> Path:
    """Where the run's JSON report goes: ``NAME.rounds.json`` beside ``NAME.safetensors``."""
    path = Path(adapter_path)
    return path.with_name(path.name[: -len(".safetensors")] + ".rounds.json") if path.name.endswith(
        ".safetensors") else path.with_name(path.name + ".rounds.json")


def round_path(adapter_path: str | Path, server_round: int) -> Path:
    """Where round ``server_round``'s global adapter is kept: ``NAME.round<N>.safetensors``."""
    path = Path(adapter_path)
    stem = path.name[: -len(".safetensors")] if path.name.endswith(".safetensors") else path.name
    return path.with_name(f"{stem}.round{int(server_round)}.safetensors")


def model_bytes(model: LoadedModel) -> int:
    """Bytes of the base model's tensors as stored (float32 for the shipped models)."""
    return int(sum(t.numel() * t.element_size() for n, t in model.sam.state_dict().items() if ".lora_" not in n))


@dataclass
class SiteReport:
    """One site's reply in one round, as the server saw it."""

    site: str
    node_id: int
    examples: int = 0
    tensors: list[str] = field(default_factory=list)
    payload_bytes: int = 0          # the serialized ArrayRecord received (values + array headers)
    value_bytes: int = 0            # the tensors' values alone
    train_loss: Optional[float] = None
    heldout_box_dice: Optional[float] = None      # the global adapter after this round, on held-out planes
    heldout_point_dice: Optional[float] = None
    error: Optional[str] = None


@dataclass
class RoundRecord:
    round: int
    sites: list[SiteReport] = field(default_factory=list)
    examples: int = 0
    test: Optional[dict] = None      # server-side Dice on a test volume, when the server has one
    adapter: Optional[str] = None


@dataclass
class RunRecord:
    """Everything the server learnt, written as JSON after each round."""

    config: dict
    base_fingerprint: str
    base_name: str
    model_bytes: int
    base_test: Optional[dict] = None  # server-side Dice of the base model (round 0), with a test volume
    rounds: list[RoundRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def round(self, number: int) -> RoundRecord:
        for record in self.rounds:
            if record.round == number:
                return record
        record = RoundRecord(number)
        self.rounds.append(record)
        return record

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def write(self, path: str | Path) -> Path:
        return write_text_atomic(Path(path), json.dumps(self.to_json(), indent=1, default=float) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> "RunRecord":
        data = json.loads(Path(path).read_text())
        rounds = [RoundRecord(r["round"], [SiteReport(**s) for s in r["sites"]], r["examples"], r.get("test"),
                              r.get("adapter")) for r in data.pop("rounds")]
        return cls(rounds=rounds, **data)


def save_global_adapter(path: str | Path, model: LoadedModel, aggregated: dict[str, np.ndarray],
                        config: FederatedConfig, server_round: int, sites: list[str], examples: int) -> Path:
    """Write the global adapter of ``server_round``: every LoRA tensor of ``model`` (its shared ``A``
    unless ``aggregated`` holds an averaged one) overwritten by ``aggregated``."""
    full = get_tensors(model, lora_names(model))
    unknown = sorted(set(aggregated) - set(full))
    if unknown:
        raise ValueError(f"aggregated tensor {unknown[0]!r} is not a LoRA tensor of the base model")
    full.update(aggregated)
    info = AdapterInfo(
        base_fingerprint=model.fingerprint, mode=config.adapter_mode, lora=config.lora,
        n_train_examples=int(examples), base_name=model.name, base_arch=model.arch,
        extra={"federated": {"round": int(server_round), "rounds": config.rounds, "sites": list(sites),
                             "examples": int(examples), "strategy": config.strategy, "seed": config.seed,
                             "local_steps": config.local_steps}},
    )
    return save_adapter(path, {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in full.items()}, info)
