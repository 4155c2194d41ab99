"""The server's Flower strategy: FedAvg's sampling and rounds, with checked, exact LoRA averaging.

:class:`LoRAStrategy` is Flower's ``FedAvg`` (site sampling, messages, the round loop of
``Strategy.start``) with three changes: every reply is inspected and refused unless its only
array record holds exactly the exchanged adapter tensors (``lora_B`` for FFA, ``lora_A`` and
``lora_B`` for FedAvg) — images, labels or other weights never enter the average; the average is
:func:`~napari_vfmseg.federated.aggregate.weighted_mean` weighted by the sites' training objects;
and after each round the global adapter and the run report are written
(:mod:`~napari_vfmseg.federated.result`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from napari_vfmseg.models.base import LoadedModel

from napari_vfmseg.federated.aggregate import Reply, aggregate_replies, payload_bytes
from napari_vfmseg.federated.config import FederatedConfig
from napari_vfmseg.federated.result import RunRecord, SiteReport, report_path, round_path, save_global_adapter

__all__ = ["LoRAStrategy"]

logger = logging.getLogger(__name__)


def _site_name(message: Message) -> str:
    record = message.content.config_records.get("site") if message.has_content() else None
    return str(record["name"]) if record is not None and "name" in record else f"node {message.metadata.src_node_id}"


def _unpack(message: Message) -> Reply:
    """A Flower reply as plain data: every array record (so extra ones are seen and refused)."""
    name, node = _site_name(message), int(message.metadata.src_node_id)
    if message.has_error():
        return Reply(name, node, error=str(message.error.reason))
    content = message.content
    metrics = content.metric_records.get("metrics")
    arrays = {key: {k: record[k].numpy() for k in record.keys()} for key, record in content.array_records.items()}
    size = int(sum(record.count_bytes() for record in content.array_records.values()))
    if metrics is None or "num-examples" not in metrics:
        return Reply(name, node, arrays, 0, size, error="the reply has no 'num-examples' metric")
    return Reply(name, node, arrays, int(metrics["num-examples"]), size,
                 float(metrics.get("train-loss", float("nan"))))


class LoRAStrategy(FedAvg):
    """FedAvg over adapter tensors only; see the module docstring.

    ``model`` is the server's copy of the base with the shared LoRA layers in place (it supplies
    the shared ``A`` and the fingerprint); ``names`` the exchanged tensors; ``out`` the adapter path
    rewritten after every round; ``evaluate_test`` an optional server-side measure of the global
    adapter (tensors → metrics dict).
    """

    def __init__(self, config: FederatedConfig, model: LoadedModel, names: list[str], out: str | Path,
                 evaluate_test: Optional[Callable[[dict[str, np.ndarray]], dict]] = None,
                 record: Optional[RunRecord] = None) -> None:
        k = config.sites_per_round
        super().__init__(
            fraction_train=1e-9 if k else 1.0,      # with a tiny fraction FedAvg samples min_train_nodes
            fraction_evaluate=1.0,
            min_train_nodes=k or config.min_sites,
            min_evaluate_nodes=config.min_sites,
            min_available_nodes=max(k, config.min_sites),
        )
        self.config = config
        self.model = model
        self.names = list(names)
        self.out = Path(out)
        self.evaluate_test = evaluate_test
        self.record = record

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                        ) -> Iterable[Message]:
        return super().configure_train(server_round, arrays, self._settings(config), grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
                           ) -> Iterable[Message]:
        return super().configure_evaluate(server_round, arrays, self._settings(config), grid)

    def _settings(self, config: ConfigRecord) -> ConfigRecord:
        values = dict(config)
        values.update(self.config.to_record())
        values["base-fingerprint"] = self.model.fingerprint
        return ConfigRecord(values)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[Optional[ArrayRecord], Optional[MetricRecord]]:
        result = aggregate_replies([_unpack(m) for m in replies], self.names, server_round)
        for reply, reason in result.refused:
            logger.warning("refused reply: %s", reason)
        record = self.record.round(server_round) if self.record else None
        if record is not None:
            self.record.errors += [reason for _, reason in result.refused]
            record.sites += [SiteReport(r.site, r.node_id, error=reason) for r, reason in result.refused]
            record.sites += [SiteReport(r.site, r.node_id, r.examples, sorted(r.arrays["arrays"]), r.payload_bytes,
                                        payload_bytes(r.arrays["arrays"]), r.train_loss) for r in result.accepted]
        if result.tensors is None:
            if record is not None:
                self.record.write(report_path(self.out))
            return None, None
        sites = [r.site for r in result.accepted]
        path = save_global_adapter(self.out, self.model, result.tensors, self.config, server_round, sites,
                                   result.examples)
        save_global_adapter(round_path(self.out, server_round), self.model, result.tensors, self.config,
                            server_round, sites, result.examples)
        if record is not None:
            record.examples = result.examples
            record.adapter = str(round_path(self.out, server_round))
            if self.evaluate_test is not None:
                record.test = self.evaluate_test(result.tensors)
            self.record.write(report_path(self.out))
        logger.info("round %d: averaged %d site(s), %d examples; global adapter %s", server_round,
                    len(sites), result.examples, path)
        arrays = ArrayRecord({k: Array(v) for k, v in result.tensors.items()})
        return arrays, MetricRecord({"num-examples": result.examples})

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> Optional[MetricRecord]:
        replies = list(replies)
        record = self.record.round(server_round) if self.record else None
        scores = []
        for message in replies:
            if message.has_error() or record is None:
                continue
            metrics = message.content.metric_records.get("metrics")
            if metrics is None:
                continue
            name = _site_name(message)
            entry = next((s for s in record.sites if s.site == name), None)
            if entry is None:
                entry = SiteReport(name, message.metadata.src_node_id)
                record.sites.append(entry)
            entry.heldout_box_dice = float(metrics["box-dice"])
            entry.heldout_point_dice = float(metrics["point-dice"])
            scores.append((float(metrics["box-dice"]), int(metrics["num-examples"])))
        if record is not None:
            self.record.write(report_path(self.out))
        if not scores:
            return None
        total = sum(n for _, n in scores)
        return MetricRecord({"box-dice": sum(d * n for d, n in scores) / max(total, 1), "num-examples": total})
