"""The Flower apps: a ServerApp that runs :class:`~.strategy.LoRAStrategy`, a ClientApp per site.

Both are built on Flower's Message API. The ClientApp answers ``train`` messages (global adapter
tensors in, locally trained tensors out, with ``num-examples`` and the site's metrics) and
``evaluate`` messages (held-out Dice of the global adapter). Each message loads the site's base
model and data afresh (Flower may run every message in a new process) and checks the base
against the fingerprint in the message before it trains.

Settings come from the caller in a simulation (:func:`make_server_app` / :func:`make_client_app`
with arguments) and from Flower's run config and node config in a deployment, where the module
attributes :data:`server_app` and :data:`client_app` are the app's components:

- run config (server): ``model``, ``out``, optionally ``test`` (``IMAGE:LABELS``), and the
  :class:`~.config.FederatedConfig` keys (``strategy``, ``rounds``, ``local-steps``, ...);
- node config (site): ``data`` (a folder with ``NAME`` and ``NAME_labels``), ``model``, and
  optionally ``name``, ``axis``, ``threads``.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from napari_vfmseg.federated.base_model import load_base
from napari_vfmseg.federated.config import FederatedConfig
from napari_vfmseg.federated.local import evaluate_planes, frame_planes
from napari_vfmseg.federated.result import RunRecord, model_bytes, report_path
from napari_vfmseg.federated.shared_lora import get_tensors, prepare_lora, set_tensors
from napari_vfmseg.federated.site import Site, find_site_files, load_site_data, parse_pair, read_labelled_planes
from napari_vfmseg.federated.strategy import LoRAStrategy

__all__ = ["SiteSpec", "ServerSettings", "make_client_app", "make_server_app", "client_app", "server_app"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteSpec:
    """Where a site's data and base model are: ``image`` and ``labels`` files, a model spec."""

    name: str
    image: str
    labels: str
    model: str
    axis: int = 0

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> "SiteSpec":
        """A deployed SuperNode's ``--node-config``: ``data`` folder, ``model``, optional ``name``/``axis``."""
        if "data" not in node_config or "model" not in node_config:
            raise ValueError("this SuperNode was started without node config 'data' and 'model' "
                             "(use `vfmseg federated site --data DIR --model NAME`)")
        image, labels = find_site_files(str(node_config["data"]))
        name = str(node_config.get("name") or Path(str(node_config["data"])).name)
        return cls(name, str(image), str(labels), str(node_config["model"]), int(node_config.get("axis", 0)))


@dataclass(frozen=True)
class ServerSettings:
    """What the server loads and writes: base ``model`` spec, adapter path ``out``, optional ``test``
    volume (``IMAGE:LABELS``) measured after each round, and the run's :class:`FederatedConfig`."""

    model: str
    out: str
    config: FederatedConfig
    test: str = ""

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> "ServerSettings":
        missing = [k for k in ("model", "out") if not run_config.get(k)]
        if missing:
            raise ValueError(f"the run config lacks {missing}: start the run with `vfmseg federated server`")
        return cls(str(run_config["model"]), str(run_config["out"]), FederatedConfig.from_record(run_config),
                   str(run_config.get("test") or ""))


def _tensors(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: record[key].numpy() for key in record.keys()}


def _site(context: Context, config: FederatedConfig, sites: Optional[Sequence[SiteSpec]]) -> Site:
    if sites is not None:
        spec = sites[int(context.node_config["partition-id"])]
    else:
        spec = SiteSpec.from_node_config(context.node_config)
    data = load_site_data(spec.image, spec.labels, config, name=spec.name, axis=spec.axis)
    return Site.from_data(data, load_base(spec.model))


def make_client_app(sites: Optional[Sequence[SiteSpec]] = None, threads: int = 0) -> ClientApp:
    """A ClientApp for the sites ``sites`` (indexed by Flower's ``partition-id`` in a simulation), or
    for the site its SuperNode's node config describes (``sites=None``). ``threads`` > 0 caps torch's
    CPU threads per message."""
    app = ClientApp()

    def begin(message: Message, context: Context) -> tuple[Site, FederatedConfig, str]:
        limit = threads or int(context.node_config.get("threads", 0) or 0)
        if limit > 0:
            torch.set_num_threads(limit)
        settings = message.content.config_records["config"]
        config = FederatedConfig.from_record(settings)
        return _site(context, config, sites), config, str(settings["base-fingerprint"])

    @app.train()
    def train(message: Message, context: Context) -> Message:
        site, config, base = begin(message, context)
        server_round = int(message.content.config_records["config"].get("server-round", 1))
        tensors, examples, metrics = site.train_round(_tensors(message.content.array_records["arrays"]), config,
                                                      base, server_round)
        reply = RecordDict({
            "arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in tensors.items()}),
            "metrics": MetricRecord({"num-examples": int(examples), **{k: float(v) for k, v in metrics.items()}}),
            "site": ConfigRecord({"name": site.name}),
        })
        return Message(reply, reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        site, config, base = begin(message, context)
        scores = site.evaluate(_tensors(message.content.array_records["arrays"]), config, base)
        reply = RecordDict({
            "metrics": MetricRecord({"num-examples": int(scores["objects"]), "box-dice": scores["box"],
                                     "point-dice": scores["point"]}),
            "site": ConfigRecord({"name": site.name}),
        })
        return Message(reply, reply_to=message)

    return app


def _test_measure(model, planes) -> Callable[[dict[str, np.ndarray]], dict]:
    """Dice of the server's model with the given adapter tensors on the test planes."""

    def measure(tensors: dict[str, np.ndarray]) -> dict:
        set_tensors(model, tensors)
        return evaluate_planes(model, planes)

    return measure


def run_server(grid: Grid, settings: ServerSettings) -> RunRecord:
    """The server's whole run: base model with shared LoRA, the rounds, the adapter and report files."""
    config = settings.config
    model = load_base(settings.model)
    names = prepare_lora(model, config)
    initial = get_tensors(model, names)
    record = RunRecord(config=asdict(config), base_fingerprint=model.fingerprint, base_name=model.name,
                       model_bytes=model_bytes(model))
    evaluate_test: Optional[Callable[[dict[str, np.ndarray]], dict]] = None
    if settings.test:
        image, labels = parse_pair(settings.test)
        evaluate_test = _test_measure(model, frame_planes(
            model, read_labelled_planes(image, labels, min_pixels=config.min_pixels), config.min_pixels))
        record.base_test = evaluate_test(initial)
    record.write(report_path(settings.out))
    strategy = LoRAStrategy(config, model, names, settings.out, evaluate_test, record)
    strategy.start(grid=grid, initial_arrays=ArrayRecord({k: Array(v) for k, v in initial.items()}),
                   num_rounds=config.rounds, timeout=config.round_timeout_s)
    record.write(report_path(settings.out))
    return record


def make_server_app(settings: Optional[ServerSettings] = None) -> ServerApp:
    """A ServerApp with ``settings``, or reading them from the run config when None (deployment)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, settings or ServerSettings.from_run_config(context.run_config))

    return app


# The components of a deployed run (see runtime.py): settings come from the run and node configs.
server_app = make_server_app()
client_app = make_client_app()
