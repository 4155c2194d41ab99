"""One fine-tuning round on the user's corrected planes: plan, train from the active adapter, measure, save.

A round, as the viewer's "Fine-tune" panel (and scripts) run it:

1. **Gather** the planes that hold committed objects (:func:`gather_examples`, one
   :class:`~napari_vfmseg.training.data.LabelledImage` per plane, windowed as the engine windows).
2. **Plan** (:func:`plan_round`): planes already in the project (by content key) keep the role they
   got in an earlier round; the new ones are split into training and held-out planes by blocks of
   neighbouring planes, and a new plane within ``guard_planes`` of a held-out one is a *spacer*,
   neither trained on nor measured (adjacent planes look alike and would flatter the held-out
   Dice). The guard holds within a round; planes added in later rounds are split among
   themselves. Earlier training planes
   are replayed (at most ``replay_limit``) and earlier held-out planes are measured again, so a
   round is penalised for forgetting old cases.
3. **Train** a copy of the model (the caller's model is never modified: a viewer keeps predicting
   with it during the round), starting from its active adapter when the mode and LoRA settings
   match (otherwise from the base weights), with the held-out planes as validation set.
4. **Measure** 1-click Dice (one click at each object's most interior point, the engine's own
   ``Segmenter`` path) on the held-out planes and on a guard set from the original domain
   (:func:`guard_examples`: a shipped sample), before and after.
5. **Save** the improved adapter as a new version in an
   :class:`~napari_vfmseg.training.adapter_store.AdapterStore`, with this round's new planes for
   replay. Nothing is saved when the round is cancelled, fails, or does not beat its starting point.

The validation set also selects the best training step, so the held-out "after" figure is
slightly optimistic; planes nobody annotated are the unbiased check (see
``benchmarks/bench_finetune_shift.py``). Qt-free and napari-free.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from napari_vfmseg.training.adapter_store import AdapterStore, AdapterVersion, example_key
from napari_vfmseg.training.data import LabelledImage, object_ids, pairs_from_volume, split_by_plane_blocks
from napari_vfmseg.training.measures import guard_examples, one_click_dice
from napari_vfmseg.training.round_config import DEFAULT_LR, FULL_MODE_MAX_PARAMETERS, LOPO_BELOW, RoundConfig

__all__ = [
    "DEFAULT_LR",
    "FULL_MODE_MAX_PARAMETERS",
    "LOPO_BELOW",
    "RoundConfig",
    "RoundPlan",
    "RoundProgress",
    "RoundResult",
    "gather_examples",
    "plan_round",
    "guard_examples",
    "one_click_dice",
    "copy_model",
    "run_round",
]


@dataclass
class RoundPlan:
    """What a round trains and measures on.

    ``train``: this round's training planes (new and re-seen ones with their current labels) plus
    ``replay`` (earlier training planes not open now); ``held_out``: planes never trained on (new,
    re-seen and stored ones); ``new``/``new_roles``: planes not yet in the project, or whose labels
    changed, with the role each gets ("train", "held_out" or "spacer"; saved with the version for
    later rounds).
    """

    train: list[LabelledImage]
    held_out: list[LabelledImage]
    replay: list[LabelledImage]
    new: list[LabelledImage]
    new_roles: list[str]
    n_open: int
    validation: str = "held_out"        # "lopo": the training planes are validated by leaving one out

    @property
    def n_new(self) -> int:
        return len(self.new)

    def describe(self) -> str:
        return (f"{len(self.train)} training planes ({len(self.replay)} replayed), "
                f"{len(self.held_out)} held out, {self.n_new} new")


@dataclass
class RoundProgress:
    """Reported while a round runs. ``phase``: "measuring before", "training", "measuring after",
    "saving"; ``step``/``total`` count training steps (0/0 outside training)."""

    phase: str
    step: int = 0
    total: int = 0
    loss: Optional[float] = None
    val_dice: Optional[float] = None
    elapsed_s: float = 0.0


@dataclass
class RoundResult:
    """The outcome of :func:`run_round`. ``version`` is the saved version (None when nothing was
    saved: cancelled, not improved, or no store); ``tensors``/``info`` the adapter either way."""

    plan: RoundPlan
    config: RoundConfig
    train: object                                  # napari_vfmseg.training.trainer.TrainResult
    tensors: dict
    info: object                                   # AdapterInfo
    parent: Optional[str]
    dice_before: Optional[float]
    dice_after: Optional[float]
    guard_before: Optional[float]
    guard_after: Optional[float]
    cancelled: bool
    improved: bool
    seconds: float
    train_seconds: float
    version: Optional[AdapterVersion] = None
    notes: list[str] = field(default_factory=list)
    lopo: object = None                            # napari_vfmseg.training.lopo.LopoReport, when validated so

    @property
    def changes_encoder(self) -> bool:
        return bool(getattr(self.info, "changes_encoder", False))

    def summary(self) -> dict:
        """JSON-friendly figures of the round."""
        return {
            "version": self.version.name if self.version else None,
            "parent": self.parent,
            "mode": self.config.mode,
            "rank": self.config.rank if self.config.mode == "encoder-lora" else None,
            "steps": self.config.steps,
            "steps_done": getattr(self.train, "steps_done", 0),
            "best_step": getattr(self.train, "best_step", 0),
            "train_planes": len(self.plan.train),
            "replayed_planes": len(self.plan.replay),
            "held_out_planes": len(self.plan.held_out),
            "new_planes": self.plan.n_new,
            "dice_before": self.dice_before,
            "dice_after": self.dice_after,
            "guard_before": self.guard_before,
            "guard_after": self.guard_after,
            "val_dice_before": getattr(self.train, "val_dice_before", None),
            "val_dice_after": getattr(self.train, "val_dice_after", None),
            "cancelled": self.cancelled,
            "improved": self.improved,
            "seconds": round(self.seconds, 2),
            "train_seconds": round(self.train_seconds, 2),
            "validation": self.plan.validation,
            "lopo": self.lopo.summary() if self.lopo is not None else None,
            "notes": list(self.notes),
        }


# --------------------------------------------------------------------------------------------- data


def gather_examples(image: np.ndarray, labels: np.ndarray, axis: int = 0, window=None, modality: Optional[str] = None,
                    source: str = "volume", min_pixels: int = 20, spacing=None) -> list[LabelledImage]:
    """The planes of ``image`` (plane, row, col) or (row, col) along ``axis`` whose ``labels`` hold an
    object of at least ``min_pixels`` pixels, windowed once for the whole volume as the engine does
    (``window``: None/"auto", a preset name, a Window or (level, width)). ``spacing`` (mm, the
    image's axis order) gives each plane its pixel aspect, so training sees the proportions the
    viewer's engine sees."""
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim == 3 and image.shape[-1] in (3, 4) and labels.ndim == 2:
        raise ValueError(f"{source}: fine-tuning uses grey images; convert the RGB image to grey first")
    return pairs_from_volume(image, labels, axis=axis, window=window, min_pixels=min_pixels, source=source,
                             modality=modality, spacing=spacing)


def plan_round(pairs: Sequence[LabelledImage], store: Optional[AdapterStore] = None,
               config: RoundConfig = RoundConfig()) -> RoundPlan:
    """Split ``pairs`` (the open planes with objects) into training and held-out planes, add replay.

    Raises ValueError when nothing is left to train on.
    """
    known = store.known_examples() if store is not None else {}
    keys = [example_key(p.image) for p in pairs]
    fresh, fresh_keys, train, held_out, new, new_roles = [], [], [], [], [], []
    for pair, key in zip(pairs, keys):
        stored = known.get(key)
        if stored is None:
            fresh.append(pair)
            fresh_keys.append(key)
            continue
        role = stored[1]
        if role == "train":
            train.append(pair)
        elif role == "held_out":
            held_out.append(pair)
        if not np.array_equal(stored[0].labels, pair.labels):   # corrected again since it was stored
            new.append(pair)
            new_roles.append(role)
    validation = config.validation_for(len(fresh))
    if validation == "lopo":  # few planes: every one trains, the folds validate
        fresh_train, fresh_held = list(fresh), []
    else:
        fresh_train, fresh_held = split_by_plane_blocks(fresh, config.held_out_fraction, config.block_size,
                                                        config.guard_planes, config.seed)
    roles = {id(p): "train" for p in fresh_train}
    roles.update({id(p): "held_out" for p in fresh_held})
    for pair in fresh:
        # A plane next to a held-out one is a spacer: not trained on (now or later), not measured.
        role = roles.get(id(pair), "spacer")
        if role == "train":
            train.append(pair)
        elif role == "held_out":
            held_out.append(pair)
        new.append(pair)
        new_roles.append(role)
    replay: list[LabelledImage] = []
    if store is not None:
        replay = store.replay_examples("train", exclude=keys, limit=config.replay_limit, seed=config.seed)
        held_out += store.replay_examples("held_out", exclude=keys)
    train = train + replay
    if not any(object_ids(p.labels, config.min_pixels) for p in train):
        raise ValueError(
            f"nothing to train on: {len(pairs)} annotated planes, {len(held_out)} of them held out for "
            f"measuring; commit objects on more planes (spread over the volume) and start again"
        )
    return RoundPlan(train=train, held_out=held_out, replay=replay, new=new, new_roles=new_roles, n_open=len(pairs),
                     validation=validation)


# --------------------------------------------------------------------------------------------- the round


def copy_model(model):
    """An independent copy of a ``LoadedModel`` (weights, LoRA layers and active adapter included),
    on the same device, with gradients off: training it leaves ``model`` untouched."""
    clone = copy.deepcopy(model)
    for parameter in clone.sam.parameters():
        parameter.requires_grad_(False)
        parameter.grad = None
    clone.sam.eval()
    return clone


def _parent_version(model, store: Optional[AdapterStore]) -> tuple[Optional[str], Optional[str]]:
    """(name of the store version on ``model``, fingerprint of the model's adapter), None when absent."""
    from napari_vfmseg.training.adapters import active_adapter

    info = active_adapter(model)
    if info is None:
        return None, None
    version = store.find_by_fingerprint(info.fingerprint) if store is not None else None
    return (version.name if version is not None else None), info.fingerprint


def run_round(model, pairs: Sequence[LabelledImage], store: Optional[AdapterStore] = None,
              config: RoundConfig = RoundConfig(), guard: Sequence[LabelledImage] = (),
              progress: Optional[Callable[[RoundProgress], None]] = None,
              cancel: Optional[threading.Event] = None, name: Optional[str] = None,
              activate: bool = False, plan: Optional[RoundPlan] = None) -> RoundResult:
    """Run one round on ``pairs`` (see the module docstring) and return its result.

    ``model`` (a ``LoadedModel``, with or without an active adapter) is only read: training runs on
    :func:`copy_model`. ``guard``: original-domain planes (e.g. :func:`guard_examples`) measured
    before and after. ``cancel`` (a ``threading.Event``) stops training before its next step; a
    cancelled round saves nothing. With a ``store``, an improved adapter becomes version ``name``
    (default ``vNNN``), marked active there when ``activate`` (the caller applies it to its model).

    With few new planes (``config.validation_for``), the round validates by leaving one plane out
    (:func:`~napari_vfmseg.training.lopo.leave_one_plane_out`), trains the final adapter on all
    planes, and keeps it only when the folds gained more than ``config.min_gain``; the notes then
    give the before/after figures either way.
    """
    from napari_vfmseg.engine import Segmenter
    from napari_vfmseg.training.lopo import leave_one_plane_out
    from napari_vfmseg.training.trainer import Trainer

    started = time.perf_counter()
    cancel = cancel or threading.Event()
    report = progress or (lambda _p: None)
    config = config.resolve(model)
    plan = plan or plan_round(pairs, store, config)
    lopo_mode = plan.validation == "lopo"
    parent, parent_fingerprint = _parent_version(model, store)
    notes: list[str] = []
    if parent_fingerprint is not None and parent is None:
        notes.append(f"started from an adapter ({parent_fingerprint}) that is not in this project")
    if not plan.held_out and not lopo_mode:
        notes.append("no held-out planes (commit objects on planes further apart): nothing measures the change")

    work = copy_model(model)
    scorer = Segmenter(work)
    measure = lambda pairs_: one_click_dice(scorer, pairs_, config.min_pixels, config.held_out_limit)  # noqa: E731
    report(RoundProgress("measuring before", elapsed_s=time.perf_counter() - started))
    dice_before = measure(plan.held_out)
    guard_before = measure(guard)
    train_config = config.train_config()

    lopo = None
    if lopo_mode:
        replayed = {id(p) for p in plan.replay}
        fold_targets = [p for p in plan.train if id(p) not in replayed]
        report(RoundProgress("validating", elapsed_s=time.perf_counter() - started))
        lopo = leave_one_plane_out(
            model, fold_targets, train_config, folds=config.lopo_folds, fold_steps=config.fold_steps,
            extra_train=plan.replay, cancel=cancel,
            progress=lambda done, total: report(RoundProgress("validating", done, total,
                                                              elapsed_s=time.perf_counter() - started)))
        if not lopo.folds and not lopo.cancelled:
            notes.append("only one corrected plane: nothing to validate on; commit objects on more planes")

    def on_step(p) -> None:
        report(RoundProgress("training", p.step, p.total_steps, p.loss, p.val_dice, time.perf_counter() - started))

    train_started = time.perf_counter()
    trainer = Trainer(work, plan.train, plan.held_out, train_config, progress=on_step, cancel=cancel)
    result = trainer.fit()
    train_seconds = time.perf_counter() - train_started
    cancelled = bool(result.cancelled) or bool(lopo is not None and lopo.cancelled)
    improved = bool(result.improved) and not cancelled
    if lopo is not None and not cancelled:
        gain = lopo.gain
        if gain is None or gain <= config.min_gain:
            improved = False
        if gain is not None:
            verdict = "kept" if improved else "not kept: the base stays active"
            notes.append(f"leave-one-plane-out on {len(lopo.folds)} planes: box Dice {lopo.box_before:.3f} → "
                         f"{lopo.box_after:.3f}, 1-click {lopo.click_before:.3f} → {lopo.click_after:.3f}; {verdict}")
    dice_after = guard_after = None
    version = None
    if improved:
        report(RoundProgress("measuring after", result.steps_done, config.steps, elapsed_s=time.perf_counter() - started))
        dice_after = measure(plan.held_out)
        guard_after = measure(guard)
        if store is not None:
            report(RoundProgress("saving", result.steps_done, config.steps, elapsed_s=time.perf_counter() - started))
            extra = {"lr": config.learning_rate, "images_per_step": config.images_per_step,
                     "prompts_per_image": config.prompts_per_image, "best_step": int(result.best_step),
                     "seed": config.seed, "validation": plan.validation}
            if lopo is not None:
                extra["lopo"] = lopo.summary()
            version = store.add(
                result.tensors, result.info, parent=parent, examples=plan.new, roles=plan.new_roles, name=name,
                activate=activate,
                n_examples=int(result.n_train_examples), n_planes=len(plan.train), n_new_planes=plan.n_new,
                n_replayed=len(plan.replay), n_held_out=len(plan.held_out),
                dice_before=dice_before if lopo is None else lopo.click_before,
                dice_after=dice_after if lopo is None else lopo.click_after,
                guard_before=guard_before, guard_after=guard_after,
                val_dice_before=result.val_dice_before, val_dice_after=result.val_dice_after,
                steps=int(result.steps_done), seconds=round(train_seconds, 2), extra=extra,
            )
    elif cancelled:
        notes.append("cancelled: nothing was saved")
    elif lopo is None:
        notes.append("the round did not beat its starting point on the held-out planes: nothing was saved")
    if improved and dice_before is not None and dice_after is not None and dice_after < dice_before:
        notes.append("held-out 1-click Dice fell although validation improved: check before activating")
    if improved and guard_before is not None and guard_after is not None and guard_after < guard_before - 0.01:
        notes.append(f"original-domain Dice fell by {100 * (guard_before - guard_after):.1f} points")
    scorer.close()
    if lopo is not None and dice_before is None:  # no stored held-out planes: the folds are the measure
        dice_before = lopo.click_before
        dice_after = lopo.click_after if improved else None
    return RoundResult(
        plan=plan, config=config, train=result, tensors=result.tensors, info=result.info, parent=parent,
        dice_before=dice_before, dice_after=dice_after, guard_before=guard_before, guard_after=guard_after,
        cancelled=cancelled, improved=improved, seconds=time.perf_counter() - started,
        train_seconds=train_seconds, version=version, notes=notes, lopo=lopo,
    )


def count_annotated(volumes: Sequence[tuple[np.ndarray, Optional[int]]], min_pixels: int = 20) -> dict:
    """What a round could train on: ``volumes`` are (labels, axis) pairs, labels (plane, row, col)
    sliced along ``axis`` or a 2D (row, col) map (axis None). Returns ``planes`` (planes holding any
    label), ``objects`` (per plane, the ids with at least ``min_pixels`` pixels, summed) and
    ``volumes`` (those with at least one such plane). Pure numpy; reads the labels without copying."""
    planes = objects = count = 0
    for labels, axis in volumes:
        labels = np.asarray(labels)
        stack = labels[None] if axis is None or labels.ndim == 2 else np.moveaxis(labels, axis, 0)
        flat = stack.reshape(stack.shape[0], -1)
        filled = np.flatnonzero(flat.any(axis=1))
        count += int(filled.size > 0)
        planes += int(filled.size)
        objects += sum(int(np.count_nonzero(np.bincount(flat[p].astype(np.int64))[1:] >= min_pixels)) for p in filled)
    return {"planes": planes, "objects": objects, "volumes": count}
