"""A whole federation on one machine with Flower's simulation engine, and the baselines beside it.

:func:`simulate` runs the ServerApp and one ClientApp per site in Flower's simulation runtime
(``flwr.simulation.run_simulation``; its backend is Ray, which runs here offline on loopback, each
site in a worker process with one CPU). The server measures the global adapter on the test volume
after each round. Then, without Flower, the same LoRA is trained on each site's planes alone and
on all sites' planes pooled, with the same budget, and measured on the same test volume:

- ``local``: ``rounds × local_steps`` steps on one site's planes, as that site would alone;
- ``pooled``: ``rounds × local_steps`` steps of ``images_per_step × n_sites`` planes drawn from all
  sites' training planes — the same number of sequential steps and of images as the federation.

The base model and every baseline are also scored on each site's held-out planes (the split the
sites use in the federation), beside the federation's own held-out Dice after its last round.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from napari_vfmseg.federated.base_model import load_base
from napari_vfmseg.federated.config import FederatedConfig
from napari_vfmseg.federated.local import evaluate_planes, frame_planes, train_lora
from napari_vfmseg.federated.result import RunRecord, report_path
from napari_vfmseg.federated.shared_lora import prepare_lora
from napari_vfmseg.federated.site import load_site_data, read_labelled_planes

__all__ = ["SimulationResult", "simulate", "train_baselines", "site_names", "run_flower_simulation"]

logger = logging.getLogger(__name__)


@dataclass
class SimulationResult:
    """The run's report (per round and site) and the test-volume Dice of every contender."""

    record: RunRecord
    federated: dict
    base: Optional[dict]
    local: list[dict] = field(default_factory=list)     # one per site, with its "site" name
    pooled: Optional[dict] = None
    base_scores: Optional[dict] = None                  # the base model on the test and held-out planes
    seconds_federated: float = 0.0
    seconds_baselines: float = 0.0

    def bytes_per_round_per_site(self) -> float:
        sent = [s.payload_bytes for r in self.record.rounds for s in r.sites if s.error is None]
        return float(np.mean(sent)) if sent else 0.0

    def summary(self) -> dict:
        """The JSON of ``vfmseg federated simulate --json`` (Dice: tight-box prompts on the test volume)."""
        local = [entry["box"] for entry in self.local]
        final = self.record.rounds[-1].sites if self.record.rounds else []
        federated_heldout = {s.site: s.heldout_box_dice for s in final if s.heldout_box_dice is not None}
        per_round = [{
            "round": r.round,
            "test_box_dice": (r.test or {}).get("box"),
            "sites": {s.site: {"heldout_box_dice": s.heldout_box_dice, "bytes": s.payload_bytes,
                               "examples": s.examples, **({"error": s.error} if s.error else {})} for s in r.sites},
        } for r in self.record.rounds]
        return {
            "strategy": self.record.config["strategy"],
            "rounds": self.record.config["rounds"],
            "federated_dice": self.federated.get("box"),
            "federated_point_dice": self.federated.get("point"),
            "pooled_point_dice": self.pooled["point"] if self.pooled else None,
            "local_point_dice_mean": float(np.mean([e["point"] for e in self.local])) if self.local else None,
            "base_point_dice": (self.base or {}).get("point"),
            "pooled_dice": self.pooled["box"] if self.pooled else None,
            "local_dice_mean": float(np.mean(local)) if local else None,
            "local_dice": {entry["site"]: entry["box"] for entry in self.local},
            "base_dice": (self.base or {}).get("box"),
            "heldout_box_dice": {
                "federated": federated_heldout,
                "base": (self.base_scores or {}).get("heldout"),
                "pooled": (self.pooled or {}).get("heldout"),
                "local": {entry["site"]: entry.get("heldout") for entry in self.local},
            },
            "heldout_dice_mean": {
                "federated": _mean(federated_heldout),
                "base": _mean((self.base_scores or {}).get("heldout")),
                "pooled": _mean((self.pooled or {}).get("heldout")),
                # each site's adapter on its own held-out planes: what a site gets by itself
                "local_own": _mean({e["site"]: (e.get("heldout") or {}).get(e["site"]) for e in self.local}),
                "local_all": _mean({f"{e['site']}>{k}": v for e in self.local
                                    for k, v in (e.get("heldout") or {}).items()}),
            },
            "bytes_per_round_per_site": self.bytes_per_round_per_site(),
            "model_bytes": self.record.model_bytes,
            "bytes_share_of_model": self.bytes_per_round_per_site() / max(self.record.model_bytes, 1),
            "seconds_federated": round(self.seconds_federated, 1),
            "seconds_baselines": round(self.seconds_baselines, 1),
            "errors": list(self.record.errors),
            "per_round": per_round,
        }


def _mean(values: Optional[dict]) -> Optional[float]:
    numbers = [float(v) for v in (values or {}).values() if v is not None]
    return float(np.mean(numbers)) if numbers else None


def run_flower_simulation(server_app, client_app, num_sites: int, cpus: int = 2, verbose: bool = False) -> None:
    """Flower's ``run_simulation`` on the Ray backend (no dashboard, ``cpus`` CPUs, one per site).

    Flower's log stays at WARNING unless ``verbose``: besides the noise, flwr 1.42 logs its backend
    config at DEBUG with a dict as the only argument, which fails to format wherever DEBUG records
    are formatted (e.g. under pytest's log capture).
    """
    from flwr.simulation import run_simulation

    flwr_logger = logging.getLogger("flwr")
    level = flwr_logger.level
    if not verbose:
        flwr_logger.setLevel(logging.WARNING)
    try:
        run_simulation(
            server_app=server_app, client_app=client_app, num_supernodes=int(num_sites),
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                            "init_args": {"num_cpus": max(1, int(cpus)), "include_dashboard": False,
                                          "log_to_driver": bool(verbose),
                                          # Ray's default reserves 30% of RAM in /dev/shm; adapters are small
                                          "object_store_memory": 256 * 1024 * 1024}},
            verbose_logging=verbose,
        )
    finally:
        flwr_logger.setLevel(level)


def site_names(sites: Sequence[tuple[str, str]]) -> list[str]:
    """``site1-<image file name>``, ``site2-...``: how reports name the sites."""
    return [f"site{i + 1}-{Path(image).name}" for i, (image, _) in enumerate(sites)]


def _scores(model, test_planes, heldout: Sequence[tuple[str, list]]) -> dict:
    """Test-volume Dice (``box``, ``point``, ``objects``) and ``heldout``: box Dice per site's held-out planes."""
    return {**evaluate_planes(model, test_planes),
            "heldout": {name: evaluate_planes(model, planes)["box"] for name, planes in heldout if planes}}


def train_baselines(model_spec: str, sites: Sequence[tuple[str, str]], test: tuple[str, str],
                    config: FederatedConfig, local: bool = True, pooled: bool = True
                    ) -> tuple[list[dict], Optional[dict], dict]:
    """Dice of each site's adapter trained alone, of one trained on all sites' planes (budgets in the
    module docstring) and of the base model; the same LoRA, strategy and learning rate as the
    federation. Each is scored on the test volume and on every site's held-out planes (the same
    split as in the federation): returns (local, pooled, base), each entry as :func:`_scores`."""
    steps = config.rounds * config.local_steps
    model = load_base(model_spec)
    test_planes = frame_planes(model, read_labelled_planes(*test, min_pixels=config.min_pixels), config.min_pixels)
    site_planes, heldout = [], []
    for name, (image, labels) in zip(site_names(sites), sites):
        data = load_site_data(image, labels, config, name=name)
        site_planes.append((data.name, frame_planes(model, data.train, config.min_pixels)))
        heldout.append((data.name, frame_planes(model, data.heldout, config.min_pixels)))

    def measure() -> dict:
        return _scores(model, test_planes, heldout)   # re-embeds while LoRA sits in the encoder

    base = measure()
    local_scores: list[dict] = []
    if local:
        for index, (name, planes) in enumerate(site_planes):
            names = prepare_lora(model, config)
            train_lora(model, planes, names, config, seed=config.seed * 31 + index, steps=steps)
            local_scores.append({"site": name, **measure()})
    pooled_score = None
    if pooled:
        names = prepare_lora(model, config)
        every = [p for _, planes in site_planes for p in planes]
        train_lora(model, every, names, config, seed=config.seed * 31 + 997, steps=steps,
                   images_per_step=config.images_per_step * len(sites))
        pooled_score = measure()
    return local_scores, pooled_score, base


def simulate(model_spec: str, sites: Sequence[tuple[str, str]], test: tuple[str, str], config: FederatedConfig,
             out: str | Path, baselines: bool = True, cpus: int = 2, threads_per_site: int = 1,
             verbose: bool = False) -> SimulationResult:
    """Run the federation in Flower's simulation runtime, then the baselines; see the module docstring.

    ``sites``: (image, labels) paths, one per site; ``test``: the unseen (image, labels); ``out``:
    the global adapter (rewritten after every round, report beside it). ``cpus`` is what Ray may
    use; each site's worker uses ``threads_per_site`` torch threads.
    """
    from napari_vfmseg.federated.apps import ServerSettings, SiteSpec, make_client_app, make_server_app

    if len(sites) < 2:
        raise ValueError(f"a federation needs at least two sites, got {len(sites)}")
    for image, labels in list(sites) + [test]:
        for path in (image, labels):
            if not Path(path).exists():
                raise FileNotFoundError(f"{path}: file not found")
    config = replace(config, min_sites=min(max(config.min_sites, 2), len(sites)))
    out = Path(out)
    specs = [SiteSpec(name, str(Path(image).resolve()), str(Path(labels).resolve()), model_spec)
             for name, (image, labels) in zip(site_names(sites), sites)]
    settings = ServerSettings(model_spec, str(out.resolve()), config, f"{Path(test[0]).resolve()}:{Path(test[1]).resolve()}")
    report_path(out).unlink(missing_ok=True)      # a report left by an earlier run must not be read as this one's
    started = time.perf_counter()
    run_flower_simulation(make_server_app(settings), make_client_app(specs, threads=threads_per_site), len(specs),
                          cpus, verbose)
    seconds_federated = time.perf_counter() - started
    path = report_path(out)
    if not path.is_file():
        raise RuntimeError(f"the federated run wrote no report ({path}); see Flower's log above")
    record = RunRecord.read(path)
    if not record.rounds or record.rounds[-1].test is None:
        raise RuntimeError(f"the federated run completed no round; errors: {record.errors or 'none reported'}")
    result = SimulationResult(record, record.rounds[-1].test, record.base_test, seconds_federated=seconds_federated)
    if baselines:
        started = time.perf_counter()
        result.local, result.pooled, result.base_scores = train_baselines(model_spec, sites, test, config)
        result.seconds_baselines = time.perf_counter() - started
    return result
