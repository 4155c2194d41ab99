"""A project folder of fine-tuned adapter versions, with their history and a replay buffer.

Layout of a project folder::

    adapters.json              the index: every version's record and the active version per base model
    adapters/v001.safetensors  one adapter file per version (see :mod:`napari_vfmseg.training.adapters`)
    replay/v001.npz            the planes that round added (images, label maps, roles), for replay

Each version records its name, creation date, mode, LoRA rank, the number of examples and planes
it was trained on, the 1-click Dice before and after on held-out planes and on a guard set from
the original domain, the base model's name and fingerprint, and its parent (the version that was
active when its round started, None for the base model). The *active* version is kept per base
model fingerprint, so one project can serve several models.

Nothing is ever half visible: the adapter and replay files are written to temporary files in the
same folder and renamed, and the index, written last in the same way, is the only thing that makes
a version exist. A crash in between leaves an unlisted file that the next version never reuses.

Replay examples are plain arrays in an ``.npz`` (read with ``allow_pickle=False``): ``image_<i>``
uint8 (row, col), ``labels_<i>`` int32 (row, col) and one JSON string ``meta`` listing each
example's source, plane, role ("train", "held_out", or "spacer" for a plane next to a held-out
one, which is neither trained on nor measured) and content key. The content key is a
digest of the windowed image (:func:`example_key`), so a plane seen again in a later round is
recognised: it keeps its role (a held-out plane is never trained on later) and its newest labels.
Index updates are serialised by a per-folder lock (several stores, threads, one project). Qt-free.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from napari_vfmseg.io.atomic import write_bytes_atomic
from napari_vfmseg.training.data import LabelledImage

__all__ = [
    "STORE_FORMAT",
    "STORE_VERSION",
    "ROLES",
    "AdapterStoreError",
    "AdapterVersion",
    "AdapterStore",
    "example_key",
]

STORE_FORMAT = "napari-vfmseg-adapter-store"
STORE_VERSION = 1
INDEX_NAME = "adapters.json"
ROLES = ("train", "held_out", "spacer")   # spacer: next to a held-out plane, neither trained on nor measured
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class AdapterStoreError(ValueError):
    """A project folder's index or replay file cannot be read, or a request names no version."""


def example_key(image: np.ndarray) -> str:
    """Content key (16 hex characters) of a windowed plane (row, col): the same pixels, the same key."""
    array = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{array.shape}|{array.dtype}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()[:16]


@dataclass
class AdapterVersion:
    """One saved adapter version (a record of the index). Dice values are means of 1-click Dice
    (None when there was nothing to measure)."""

    name: str
    file: str                                  # relative to the project folder
    created: str                               # UTC ISO date
    mode: str
    rank: Optional[int]
    base_name: str
    base_fingerprint: str
    adapter_fingerprint: str
    parent: Optional[str] = None               # version active when the round started (None: base)
    n_examples: int = 0                        # objects trained on (new + replayed)
    n_planes: int = 0                          # planes trained on (new + replayed)
    n_new_planes: int = 0                      # planes first seen in this round (training and held out)
    n_replayed: int = 0                        # earlier planes replayed in this round
    n_held_out: int = 0                        # held-out planes measured
    dice_before: Optional[float] = None        # held-out 1-click Dice with the parent
    dice_after: Optional[float] = None         # ... with this version
    guard_before: Optional[float] = None       # original-domain guard, parent
    guard_after: Optional[float] = None        # ... this version
    val_dice_before: Optional[float] = None    # the trainer's validation Dice (box and point prompts)
    val_dice_after: Optional[float] = None
    steps: int = 0
    seconds: float = 0.0
    replay_file: Optional[str] = None          # relative path of this round's new planes
    extra: dict = field(default_factory=dict)

    @property
    def changes_encoder(self) -> bool:
        """True when the adapter changes image embeddings (cached ones are stale under it)."""
        return self.mode in ("encoder-lora", "full")

    def describe(self) -> str:
        """One line for menus: name, date, mode, examples and the held-out Dice before → after."""
        date = self.created.replace("T", " ")[:16]
        rank = f" r{self.rank}" if self.rank else ""
        line = f"{self.name} · {date} · {self.mode}{rank} · {self.n_planes} planes"
        if self.dice_before is not None and self.dice_after is not None:
            line += f" · held-out {self.dice_before:.3f}→{self.dice_after:.3f}"
        return line

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str) -> "AdapterVersion":
        known = {f.name for f in fields(cls)}
        try:
            values = {k: v for k, v in data.items() if k in known}
            version = cls(**values)
        except TypeError as exc:
            raise AdapterStoreError(f"{where}: a version record is incomplete ({exc})") from None
        if not isinstance(version.name, str) or not _NAME.match(version.name):
            raise AdapterStoreError(f"{where}: invalid version name {version.name!r}")
        return version


_INDEX_LOCKS: dict[str, threading.RLock] = {}   # one per project folder, shared by its AdapterStore objects
_INDEX_LOCKS_GUARD = threading.Lock()


def _index_lock(folder: Path) -> threading.RLock:
    """The lock that serialises read-modify-write of ``folder``'s index within this process."""
    with _INDEX_LOCKS_GUARD:
        return _INDEX_LOCKS.setdefault(str(folder.resolve()), threading.RLock())


class AdapterStore:
    """The adapter versions of one project folder (created on the first :meth:`add`).

    >>> store = AdapterStore("~/liver-project")                       # doctest: +SKIP
    >>> version = store.add(result.tensors, result.info, dice_after=0.82, examples=planes)  # doctest: +SKIP
    >>> store.activate(version.name, model.fingerprint)                 # doctest: +SKIP
    >>> store.swap(model, version.name)     # or store.rollback(model.fingerprint)  # doctest: +SKIP
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder).expanduser()
        if self.folder.exists() and not self.folder.is_dir():
            raise AdapterStoreError(f"{self.folder}: not a folder (an adapter project is a folder)")
        self._lock = _index_lock(self.folder)   # guards every read-modify-write of the index

    # ------------------------------------------------------------------ the index

    @property
    def index_path(self) -> Path:
        return self.folder / INDEX_NAME

    def _read_index(self) -> dict:
        path = self.index_path
        if not path.is_file():
            return {"format": STORE_FORMAT, "version": STORE_VERSION, "versions": [], "active": {}, "history": []}
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AdapterStoreError(f"{path}: not a readable adapter index ({exc})") from None
        if not isinstance(data, dict) or data.get("format") != STORE_FORMAT:
            raise AdapterStoreError(f"{path}: not a napari-vfmseg adapter index (no '{STORE_FORMAT}' format tag)")
        if int(data.get("version", 0)) > STORE_VERSION:
            raise AdapterStoreError(
                f"{path}: adapter index version {data.get('version')} is newer than this napari-vfmseg reads "
                f"({STORE_VERSION}); update napari-vfmseg"
            )
        if not isinstance(data.get("versions"), list) or not isinstance(data.get("active", {}), dict):
            raise AdapterStoreError(f"{path}: adapter index has no 'versions' list")
        data.setdefault("active", {})
        data.setdefault("history", [])
        return data

    def _write_index(self, data: dict) -> None:
        write_bytes_atomic(self.index_path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode("utf-8"))

    def versions(self, base_fingerprint: Optional[str] = None) -> list[AdapterVersion]:
        """All versions, oldest first; only those of one base model when ``base_fingerprint`` is given."""
        data = self._read_index()
        out = [AdapterVersion.from_json(v, str(self.index_path)) for v in data["versions"]]
        return [v for v in out if base_fingerprint is None or v.base_fingerprint == base_fingerprint]

    def get(self, name: str) -> AdapterVersion:
        """The version called ``name``; AdapterStoreError naming the folder when there is none."""
        for version in self.versions():
            if version.name == name:
                return version
        raise AdapterStoreError(f"{self.folder}: no adapter version {name!r} in this project")

    def active_name(self, base_fingerprint: str) -> Optional[str]:
        """The version marked active for the base model ``base_fingerprint`` (None: the base model)."""
        return self._read_index()["active"].get(base_fingerprint)

    def active(self, base_fingerprint: str) -> Optional[AdapterVersion]:
        name = self.active_name(base_fingerprint)
        return None if name is None else self.get(name)

    def history(self) -> list[dict]:
        """Activation events, oldest first: ``{"date", "base_fingerprint", "active", "previous"}``."""
        return list(self._read_index()["history"])

    def find_by_fingerprint(self, adapter_fingerprint: str) -> Optional[AdapterVersion]:
        """The version whose adapter tensors have this fingerprint (as ``AdapterInfo.fingerprint``)."""
        return next((v for v in self.versions() if v.adapter_fingerprint == adapter_fingerprint), None)

    def adapter_path(self, name: str) -> Path:
        return self.folder / self.get(name).file

    def next_name(self) -> str:
        """``vNNN``: one more than the highest number used by a listed version or a file on disk."""
        used = [v.name for v in self.versions()]
        for sub in ("adapters", "replay"):
            folder = self.folder / sub
            if folder.is_dir():
                used += [p.name.split(".")[0] for p in folder.iterdir()]
        numbers = [int(m.group(1)) for m in (re.match(r"^v(\d+)$", n) for n in used) if m]
        return f"v{max(numbers, default=0) + 1:03d}"

    # ------------------------------------------------------------------ adding versions

    def add(self, tensors: dict, info, *, parent: Optional[str] = None, examples: Sequence[LabelledImage] = (),
            roles: Sequence[str] = (), name: Optional[str] = None, activate: bool = False,
            **record) -> AdapterVersion:
        """Save an adapter (``tensors`` and its :class:`~napari_vfmseg.training.adapters.AdapterInfo`)
        as a new version and return its record.

        ``examples`` (with one role per example in ``roles``, one of :data:`ROLES`) are this
        round's new planes, kept for replay; planes already in the store are skipped. ``record``
        fills the other :class:`AdapterVersion` fields (``dice_before=...``). ``activate`` also
        marks the version active for its base model. The adapter file, then the replay file, then
        the index are written, each atomically.
        """
        from napari_vfmseg.training.adapters import save_adapter

        name = name or self.next_name()
        if not _NAME.match(name):
            raise AdapterStoreError(f"{self.folder}: invalid version name {name!r} (letters, digits, '_', '-', '.')")
        if any(v.name == name for v in self.versions()):
            raise AdapterStoreError(f"{self.folder}: version {name!r} exists already")
        if parent is not None:
            self.get(parent)
        if len(roles) != len(examples):
            raise ValueError(f"{self.folder}: {len(examples)} examples but {len(roles)} roles")
        bad = sorted(set(roles) - set(ROLES))
        if bad:
            raise ValueError(f"{self.folder}: unknown example roles {bad} (use {ROLES})")
        adapter_file = Path("adapters") / f"{name}.safetensors"
        save_adapter(self.folder / adapter_file, tensors, info)
        replay_file = None
        known = self.known_examples()
        keep = []
        for example, role in zip(examples, roles):
            stored = known.get(example_key(example.image))
            if stored is None or not np.array_equal(stored[0].labels, example.labels):
                keep.append((example, role))
        if keep:
            replay_file = Path("replay") / f"{name}.npz"
            self._write_examples(self.folder / replay_file, [e for e, _ in keep], [r for _, r in keep])
        lora = getattr(info, "lora", None)
        version = AdapterVersion(
            name=name,
            file=adapter_file.as_posix(),
            created=info.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            mode=info.mode,
            rank=int(lora.rank) if lora is not None else None,
            base_name=info.base_name,
            base_fingerprint=info.base_fingerprint,
            adapter_fingerprint=info.fingerprint,
            parent=parent,
            replay_file=None if replay_file is None else replay_file.as_posix(),
            **record,
        )
        with self._lock:
            data = self._read_index()
            if any(v.get("name") == name for v in data["versions"]):
                raise AdapterStoreError(f"{self.folder}: version {name!r} was added meanwhile")
            data["versions"].append(version.to_json())
            if activate:
                self._set_active(data, info.base_fingerprint, name)
            self._write_index(data)
        return version

    # ------------------------------------------------------------------ activation

    def _set_active(self, data: dict, base_fingerprint: str, name: Optional[str]) -> None:
        previous = data["active"].get(base_fingerprint)
        if name is None:
            data["active"].pop(base_fingerprint, None)
        else:
            data["active"][base_fingerprint] = name
        data["history"].append({
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "base_fingerprint": base_fingerprint,
            "active": name,
            "previous": previous,
        })

    def activate(self, name: Optional[str], base_fingerprint: Optional[str] = None) -> Optional[AdapterVersion]:
        """Mark version ``name`` active for its base model (``None``: the base model itself, for
        ``base_fingerprint``). Only the index changes; :meth:`apply` puts it on a model."""
        if name is None:
            if base_fingerprint is None:
                raise ValueError("activate(None) needs the base model's fingerprint")
            version = None
        else:
            version = self.get(name)
            if base_fingerprint is not None and version.base_fingerprint != base_fingerprint:
                raise AdapterStoreError(
                    f"{self.folder}: version {name!r} was trained on base model {version.base_fingerprint} "
                    f"({version.base_name}), not on {base_fingerprint}"
                )
            base_fingerprint = version.base_fingerprint
        with self._lock:
            data = self._read_index()
            self._set_active(data, base_fingerprint, name)
            self._write_index(data)
        return version

    def rollback(self, base_fingerprint: str, to: Optional[str] = None) -> Optional[AdapterVersion]:
        """Make ``to`` active again (default: the active version's parent, i.e. the adapter that was in
        use before it; the base model when it has none). Returns the version now active (None: base)."""
        if to is None:
            current = self.active(base_fingerprint)
            if current is None:
                raise AdapterStoreError(f"{self.folder}: nothing to roll back: the base model is active")
            to = current.parent
        return self.activate(to, base_fingerprint)

    def load(self, name: str):
        """(tensors, AdapterInfo) of version ``name``, checked against its recorded fingerprint."""
        from napari_vfmseg.training.adapters import AdapterError, read_adapter

        version = self.get(name)
        tensors, info = read_adapter(self.folder / version.file)
        if version.adapter_fingerprint and info.fingerprint != version.adapter_fingerprint:
            raise AdapterError(f"{self.folder / version.file}: the file does not hold version {name!r} "
                               f"(fingerprint {info.fingerprint}, index says {version.adapter_fingerprint})")
        return tensors, info

    def apply(self, model, name: Optional[str]):
        """Put version ``name`` on ``model`` in place (None: remove any adapter) and return the model.

        The adapter's base fingerprint is checked against the model's (AdapterError otherwise).
        """
        from napari_vfmseg.training.adapters import AdapterError, apply_adapter_tensors, remove_adapter

        if name is None:
            return remove_adapter(model)
        tensors, info = self.load(name)
        if info.base_fingerprint != model.fingerprint:
            raise AdapterError(
                f"{self.folder / self.get(name).file}: adapter {name!r} was trained on base model "
                f"{info.base_fingerprint} ({info.base_name or 'unknown'}), but the loaded model {model.name!r} "
                f"has fingerprint {model.fingerprint}; load the matching base model"
            )
        return apply_adapter_tensors(model, tensors, info, source=str(self.folder / self.get(name).file))

    def swap(self, model, name: Optional[str]) -> bool:
        """Replace ``model``'s adapter by version ``name`` (None: none) in place; on any failure put the
        previous adapter back exactly and re-raise. Only the model changes (:meth:`activate` records the
        choice). True when the old or the new adapter changes the image encoder (embeddings are stale)."""
        from napari_vfmseg.training.adapters import active_adapter, apply_adapter_tensors, current_adapter_tensors, remove_adapter

        previous = active_adapter(model)
        saved = (current_adapter_tensors(model), previous) if previous is not None else None
        try:
            self.apply(model, name)
        except BaseException:
            remove_adapter(model)
            if saved is not None:
                apply_adapter_tensors(model, *saved)
            raise
        new = active_adapter(model)
        return any(info is not None and info.changes_encoder for info in (previous, new))

    # ------------------------------------------------------------------ replay buffer

    def _write_examples(self, path: Path, examples: Sequence[LabelledImage], roles: Sequence[str]) -> None:
        arrays: dict[str, np.ndarray] = {}
        meta = []
        for i, (example, role) in enumerate(zip(examples, roles)):
            image = np.ascontiguousarray(example.image)
            if image.dtype != np.uint8 or image.ndim != 2:
                raise ValueError(f"{path}: replay images must be windowed uint8 planes (row, col); "
                                 f"got {image.dtype} {image.shape} from {example.source or 'an example'}")
            arrays[f"image_{i}"] = image
            arrays[f"labels_{i}"] = np.ascontiguousarray(example.labels, dtype=np.int32)
            meta.append({"source": example.source, "plane": example.plane, "role": role,
                         "key": example_key(image), "pixel_aspect": float(example.pixel_aspect or 1.0),
                         "slice_ratio": float(example.slice_ratio)})
        arrays["meta"] = np.array(json.dumps(meta))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        write_bytes_atomic(path, buffer.getvalue())

    def _read_examples(self, relative: str) -> list[tuple[LabelledImage, str, str]]:
        """(example, role, key) of one replay file."""
        path = self.folder / relative
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                out = []
                for i, item in enumerate(meta):
                    example = LabelledImage(np.array(data[f"image_{i}"]), np.array(data[f"labels_{i}"]),
                                            item.get("plane"), item.get("source", ""),
                                            pixel_aspect=float(item.get("pixel_aspect", 1.0)),
                                            slice_ratio=float(item.get("slice_ratio", 1.0)))
                    out.append((example, item["role"], item["key"]))
        except FileNotFoundError:
            raise AdapterStoreError(f"{path}: replay file listed in the index is missing") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise AdapterStoreError(f"{path}: not a readable replay file ({exc})") from None
        return out

    def known_examples(self, base_fingerprint: Optional[str] = None) -> dict[str, tuple[LabelledImage, str, str]]:
        """Every stored plane by content key → (example, role, key); a later version's labels win.

        The role is the one a plane got first (a held-out plane stays held out)."""
        out: dict[str, tuple[LabelledImage, str, str]] = {}
        for version in self.versions(base_fingerprint):
            if not version.replay_file:
                continue
            for example, role, key in self._read_examples(version.replay_file):
                first_role = out[key][1] if key in out else role
                out[key] = (example, first_role, key)
        return out

    def replay_examples(self, role: str = "train", exclude: Sequence[str] = (), limit: Optional[int] = None,
                        seed: int = 0, base_fingerprint: Optional[str] = None) -> list[LabelledImage]:
        """Stored planes of ``role`` (one of :data:`ROLES`), minus the content keys in ``exclude``
        (planes the new round brings itself); at most ``limit``, chosen at random (``seed``)."""
        if role not in ROLES:
            raise ValueError(f"unknown example role {role!r} (use {ROLES})")
        skip = set(exclude)
        chosen = [e for e, r, k in self.known_examples(base_fingerprint).values() if r == role and k not in skip]
        if limit is not None and len(chosen) > limit:
            rng = np.random.default_rng(seed)
            picks = sorted(rng.choice(len(chosen), size=max(0, int(limit)), replace=False).tolist())
            chosen = [chosen[i] for i in picks]
        return chosen
