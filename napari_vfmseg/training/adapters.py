"""Fine-tuned adapters: saved as safetensors with metadata, applied to and removed from a model.

An adapter file holds the tensors that fine-tuning changed, named as in ``sam.state_dict()``
(``mask_decoder.iou_token.weight``, ``image_encoder.blocks.0.attn.qkv.lora_A``, ...), and string
metadata: the format and its version, the base model's fingerprint, the mode, the LoRA rank, alpha
and targets, the number of training examples, the date, and the validation Dice before and after.

:func:`apply_adapter` refuses a file trained on another base model and names both fingerprints.
It keeps a copy of every base tensor it overwrites, so :func:`remove_adapter` restores the base
exactly. When the adapter changes the image encoder (modes ``encoder-lora`` and ``full``), its
fingerprint goes into ``LoadedModel.adapter_fingerprint`` and therefore into every embedding-cache
key; a decoder-only adapter leaves cached embeddings valid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import torch

from napari_vfmseg.io.atomic import atomic_path
from napari_vfmseg.models.base import LoadedModel, fingerprint_state_dict
from napari_vfmseg.models.lora import LoRAConfig, inject_lora, lora_modules, merge_lora, remove_lora

__all__ = [
    "ADAPTER_FORMAT",
    "ADAPTER_FORMAT_VERSION",
    "MODES",
    "AdapterInfo",
    "AdapterError",
    "save_adapter",
    "read_adapter",
    "apply_adapter",
    "remove_adapter",
    "active_adapter",
    "adapter_fingerprint",
    "apply_adapter_tensors",
    "current_adapter_tensors",
    "backup_base_tensors",
    "set_active",
]

ADAPTER_FORMAT = "napari-vfmseg-adapter"
ADAPTER_FORMAT_VERSION = 1
MODES = ("decoder", "encoder-lora", "full")
_STATE_ATTR = "_vfmseg_adapter_state"


class AdapterError(ValueError):
    """An adapter file cannot be used: wrong format, corrupt, or made for another base model."""


@dataclass
class AdapterInfo:
    """What an adapter file says about itself (its safetensors metadata, decoded)."""

    base_fingerprint: str
    mode: str
    lora: Optional[LoRAConfig] = None
    n_train_examples: int = 0
    val_dice_before: Optional[float] = None
    val_dice_after: Optional[float] = None
    base_name: str = ""
    base_arch: str = ""
    created: str = ""
    fingerprint: str = ""
    format_version: int = ADAPTER_FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    @property
    def changes_encoder(self) -> bool:
        """True when image embeddings differ from the base model's (so cached ones are stale)."""
        return self.mode in ("encoder-lora", "full")

    def to_metadata(self) -> dict[str, str]:
        lora = self.lora.as_dict() if self.lora else None
        return {
            "format": ADAPTER_FORMAT,
            "format_version": str(self.format_version),
            "base_fingerprint": self.base_fingerprint,
            "base_name": self.base_name,
            "base_arch": self.base_arch,
            "mode": self.mode,
            "rank": str(lora["rank"]) if lora else "",
            "alpha": str(lora["alpha"]) if lora else "",
            "lora": json.dumps(lora),
            "targets": json.dumps(lora["encoder_targets"] + lora["decoder_targets"] if lora else []),
            "n_train_examples": str(int(self.n_train_examples)),
            "created": self.created,
            "val_dice_before": "" if self.val_dice_before is None else repr(float(self.val_dice_before)),
            "val_dice_after": "" if self.val_dice_after is None else repr(float(self.val_dice_after)),
            "adapter_fingerprint": self.fingerprint,
            "extra": json.dumps(self.extra),
        }

    @classmethod
    def from_metadata(cls, meta: Optional[dict], path: str | Path) -> "AdapterInfo":
        if not meta or meta.get("format") != ADAPTER_FORMAT:
            raise AdapterError(f"{path}: not a napari-vfmseg adapter (no '{ADAPTER_FORMAT}' metadata)")
        try:
            version = int(meta.get("format_version", ""))
        except ValueError:
            raise AdapterError(f"{path}: adapter metadata has an invalid format_version") from None
        if version > ADAPTER_FORMAT_VERSION:
            raise AdapterError(
                f"{path}: adapter format version {version} is newer than this napari-vfmseg reads "
                f"({ADAPTER_FORMAT_VERSION}); update napari-vfmseg"
            )
        try:
            lora_dict = json.loads(meta.get("lora", "null"))
            lora = None if lora_dict is None else LoRAConfig(
                rank=int(lora_dict["rank"]), alpha=float(lora_dict["alpha"]), dropout=float(lora_dict["dropout"]),
                encoder_targets=tuple(lora_dict["encoder_targets"]),
                decoder_targets=tuple(lora_dict["decoder_targets"]),
            )
            number = lambda key: float(meta[key]) if meta.get(key) else None  # noqa: E731
            info = cls(
                base_fingerprint=meta["base_fingerprint"],
                mode=meta["mode"],
                lora=lora,
                n_train_examples=int(meta.get("n_train_examples") or 0),
                val_dice_before=number("val_dice_before"),
                val_dice_after=number("val_dice_after"),
                base_name=meta.get("base_name", ""),
                base_arch=meta.get("base_arch", ""),
                created=meta.get("created", ""),
                fingerprint=meta.get("adapter_fingerprint", ""),
                format_version=version,
                extra=json.loads(meta.get("extra") or "{}"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AdapterError(f"{path}: adapter metadata is incomplete or invalid ({exc})") from None
        if info.mode not in MODES:
            raise AdapterError(f"{path}: unknown adapter mode {info.mode!r} (expected one of {MODES})")
        return info

    def summary(self) -> dict:
        """A JSON-friendly description (for ``LoadedModel.info['adapter']``, the CLI and the UI)."""
        return {
            "mode": self.mode,
            "base_fingerprint": self.base_fingerprint,
            "fingerprint": self.fingerprint,
            "lora": self.lora.as_dict() if self.lora else None,
            "n_train_examples": self.n_train_examples,
            "val_dice_before": self.val_dice_before,
            "val_dice_after": self.val_dice_after,
            "created": self.created,
            "changes_encoder": self.changes_encoder,
            **({"extra": self.extra} if self.extra else {}),
        }


@dataclass
class _AdapterState:
    """Kept on the ``Sam`` module while an adapter is active: base tensors it overwrote, its info."""

    backup: dict[str, torch.Tensor] = field(default_factory=dict)
    info: Optional[AdapterInfo] = None
    names: list[str] = field(default_factory=list)   # the adapter's tensors, as in sam.state_dict()


def adapter_fingerprint(tensors: dict[str, torch.Tensor], mode: str) -> str:
    """Digest of an adapter's tensors and mode (16 hex characters)."""
    return fingerprint_state_dict({f"{mode}:{k}": v for k, v in tensors.items()})


def _state(model: LoadedModel, create: bool = False) -> Optional[_AdapterState]:
    state = model.sam.__dict__.get(_STATE_ATTR)
    if state is None and create:
        state = _AdapterState()
        model.sam.__dict__[_STATE_ATTR] = state
    return state


def active_adapter(model: LoadedModel) -> Optional[AdapterInfo]:
    """The info of the adapter currently applied to ``model``, or None."""
    state = _state(model)
    return state.info if state else None


def backup_base_tensors(model: LoadedModel, names: list[str]) -> None:
    """Remember the current (base) values of ``names`` so :func:`remove_adapter` can restore them.

    Tensors already remembered keep their first (base) value. LoRA tensors are not backed up: they
    disappear with the LoRA layers.
    """
    state = _state(model, create=True)
    params = dict(model.sam.named_parameters())
    params.update(dict(model.sam.named_buffers()))
    for name in names:
        if name in state.backup or ".lora_" in name:
            continue
        state.backup[name] = params[name].detach().to("cpu", copy=True)


def set_active(model: LoadedModel, info: AdapterInfo, names: list[str]) -> None:
    """Record ``info`` (tensors ``names``) as the model's active adapter; update the cache fingerprint."""
    state = _state(model, create=True)
    state.info = info
    state.names = list(names)
    model.adapter_fingerprint = info.fingerprint if info.changes_encoder else None
    model.info["adapter"] = info.summary()


def current_adapter_tensors(model: LoadedModel) -> dict[str, torch.Tensor]:
    """CPU copies of the active adapter's tensors as they are now ({} without an adapter)."""
    state = _state(model)
    if state is None or state.info is None:
        return {}
    values = model.sam.state_dict()
    return {name: values[name].detach().to("cpu", copy=True) for name in state.names}


def remove_adapter(model: LoadedModel) -> LoadedModel:
    """Take the active adapter off ``model`` (in place) and return it; the base weights come back
    exactly. Without an active adapter (and no LoRA layers) nothing changes."""
    state = _state(model)
    remove_lora(model.sam)
    if state is not None:
        params = dict(model.sam.named_parameters())
        params.update(dict(model.sam.named_buffers()))
        with torch.no_grad():
            for name, value in state.backup.items():
                params[name].copy_(value.to(params[name].device, params[name].dtype))
        del model.sam.__dict__[_STATE_ATTR]
    model.adapter_fingerprint = None
    model.info.pop("adapter", None)
    return model


def save_adapter(path: str | Path, tensors: dict[str, torch.Tensor], info: AdapterInfo) -> Path:
    """Write ``tensors`` and ``info`` as a safetensors file, atomically (temporary file + rename).

    ``info.fingerprint`` and ``info.created`` are filled in when empty. Returns the path written.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: adapter files must end in .safetensors")
    if not tensors:
        raise ValueError(f"{path}: refusing to save an adapter without tensors")
    if info.mode not in MODES:
        raise ValueError(f"{path}: unknown adapter mode {info.mode!r} (expected one of {MODES})")
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    if not info.fingerprint:
        info.fingerprint = adapter_fingerprint(cpu, info.mode)
    if not info.created:
        info.created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with atomic_path(path) as temporary:
        save_file(cpu, str(temporary), metadata=info.to_metadata())
    return path


def read_adapter(path: str | Path) -> tuple[dict[str, torch.Tensor], AdapterInfo]:
    """The tensors (on the CPU) and the info of an adapter file; checks format and integrity."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: adapter file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = handle.metadata()
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"{path}: not a readable safetensors adapter ({exc})") from None
    info = AdapterInfo.from_metadata(meta, path)
    if info.fingerprint and adapter_fingerprint(tensors, info.mode) != info.fingerprint:
        raise AdapterError(f"{path}: adapter tensors do not match their recorded fingerprint (file corrupt?)")
    return tensors, info


def apply_adapter(model: LoadedModel, path: str | Path, merge: bool = False) -> LoadedModel:
    """Load the adapter at ``path`` onto ``model`` (in place) and return the model.

    Any adapter already active is removed first. ``merge=True`` folds LoRA updates into the base
    weights (no inference overhead; removal still restores the exact base). Raises
    :class:`AdapterError` when the file was trained on another base model (naming both fingerprints)
    or does not fit this architecture.
    """
    tensors, info = read_adapter(path)
    if info.base_fingerprint != model.fingerprint:
        raise AdapterError(
            f"{path}: adapter was trained on base model {info.base_fingerprint} "
            f"({info.base_name or 'unknown'}), but the loaded model {model.name!r} has fingerprint "
            f"{model.fingerprint}; load the matching base model"
        )
    return apply_adapter_tensors(model, tensors, info, merge=merge, source=str(path))


def apply_adapter_tensors(model: LoadedModel, tensors: dict[str, torch.Tensor], info: AdapterInfo,
                          merge: bool = False, source: str = "adapter") -> LoadedModel:
    """Apply an adapter held in memory (as read by :func:`read_adapter`) to ``model`` in place.

    Same rules as :func:`apply_adapter`, except that the base fingerprint is not checked here.
    """
    remove_adapter(model)
    try:
        if info.lora is not None and (info.lora.encoder_targets or info.lora.decoder_targets):
            inject_lora(model.sam, info.lora)
        current = model.sam.state_dict()
        for name, tensor in tensors.items():
            if name not in current:
                raise AdapterError(f"{source}: tensor {name!r} has no place in model {model.name!r}")
            if tuple(current[name].shape) != tuple(tensor.shape):
                raise AdapterError(
                    f"{source}: tensor {name!r} has shape {tuple(tensor.shape)}, model {model.name!r} "
                    f"expects {tuple(current[name].shape)}"
                )
        lora_weights = [f"{n}.weight" for n, _ in lora_modules(model.sam)] if merge else []
        backup_base_tensors(model, list(tensors) + lora_weights)
        params = dict(model.sam.named_parameters())
        params.update(dict(model.sam.named_buffers()))
        with torch.no_grad():
            for name, tensor in tensors.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))
        if merge:
            merge_lora(model.sam)
    except BaseException:
        remove_adapter(model)
        raise
    set_active(model, info, list(tensors))
    return model
