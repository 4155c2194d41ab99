"""Example-weighted averaging of adapter tensors, and the check that a reply holds nothing else.

Pure numpy, no Flower: the server's strategy (:mod:`.strategy`) unpacks each Flower reply into a
:class:`Reply` and calls :func:`aggregate_replies`. Weights are the sites' numbers of training
objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np

__all__ = ["weighted_mean", "check_payload", "payload_bytes", "Reply", "RoundAggregate", "aggregate_replies"]


def weighted_mean(updates: Sequence[dict[str, np.ndarray]], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Σ_k w_k x_k / Σ_k w_k for every tensor name (accumulated in float64, returned as float32).

    All updates must hold the same names and shapes; weights must be >= 0 with a positive sum.
    """
    if not updates or len(updates) != len(weights):
        raise ValueError(f"need one weight per update, got {len(updates)} updates and {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or not w.sum() > 0:
        raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
    names = set(updates[0])
    for index, update in enumerate(updates[1:], start=1):
        if set(update) != names:
            raise ValueError(f"update {index} holds other tensors than update 0: "
                             f"{sorted(set(update) ^ names)[:5]}")
    out = {}
    for name in sorted(names):
        shapes = {tuple(np.shape(u[name])) for u in updates}
        if len(shapes) != 1:
            raise ValueError(f"tensor {name!r} has different shapes across updates: {sorted(shapes)}")
        total = sum(wk * np.asarray(u[name], dtype=np.float64) for wk, u in zip(w, updates))
        out[name] = (total / w.sum()).astype(np.float32)
    return out


def check_payload(names: Iterable[str], allowed: Iterable[str], source: str = "reply") -> None:
    """Refuse a payload that holds any tensor outside ``allowed`` (the adapter's exchanged tensors)
    or lacks one of them."""
    names, allowed = set(names), set(allowed)
    extra, missing = sorted(names - allowed), sorted(allowed - names)
    if extra:
        raise ValueError(f"{source}: holds {len(extra)} tensor(s) that are not exchanged adapter tensors, "
                         f"e.g. {extra[:3]}; refused")
    if missing:
        raise ValueError(f"{source}: lacks {len(missing)} adapter tensor(s), e.g. {missing[:3]}")


def payload_bytes(tensors: dict[str, np.ndarray]) -> int:
    """Bytes of the tensors' values (without any framing)."""
    return int(sum(np.asarray(t).nbytes for t in tensors.values()))


@dataclass
class Reply:
    """One site's answer to a training message, as plain data (the strategy unpacks Flower's).

    ``arrays`` maps the reply's array-record names to their tensors ({record: {name: array}});
    ``error`` is set when the site failed or refused (then nothing else counts).
    """

    site: str
    node_id: int
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    examples: int = 0
    payload_bytes: int = 0
    train_loss: float = float("nan")
    error: Optional[str] = None


@dataclass
class RoundAggregate:
    """What a round's replies give: the averaged tensors (None if no reply counted), the replies that
    counted, and why the others did not."""

    tensors: Optional[dict[str, np.ndarray]]
    accepted: list[Reply]
    refused: list[tuple[Reply, str]]

    @property
    def examples(self) -> int:
        return int(sum(r.examples for r in self.accepted))


def aggregate_replies(replies: Sequence[Reply], allowed: Iterable[str], server_round: int = 0) -> RoundAggregate:
    """Check every reply (one array record ``arrays`` holding exactly the ``allowed`` tensors, a
    positive example count) and average the accepted ones, weighted by their examples."""
    allowed = list(allowed)
    accepted, refused = [], []
    for reply in replies:
        where = f"round {server_round}, {reply.site}"
        if reply.error is not None:
            refused.append((reply, f"{where}: {reply.error}"))
            continue
        try:
            if list(reply.arrays) != ["arrays"]:
                raise ValueError(f"{where}: expected one array record 'arrays', got {sorted(reply.arrays)}")
            check_payload(reply.arrays["arrays"], allowed, source=where)
            if reply.examples < 1:
                raise ValueError(f"{where}: reports {reply.examples} training examples")
        except ValueError as exc:
            refused.append((reply, str(exc)))
            continue
        accepted.append(reply)
    if not accepted:
        return RoundAggregate(None, [], refused)
    tensors = weighted_mean([r.arrays["arrays"] for r in accepted], [r.examples for r in accepted])
    return RoundAggregate(tensors, accepted, refused)
