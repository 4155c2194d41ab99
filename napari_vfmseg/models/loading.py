"""Safe loading of SAM-family checkpoints into ready-to-run :class:`LoadedModel` records.

``load_model("vit_b")`` loads a registry model (downloading its weights on first use);
``load_model("/path/ckpt.pth")`` loads a bare checkpoint and infers its architecture from the
state dict (or takes ``arch=``). Checkpoints are read with ``torch.load(weights_only=True)`` —
a pickle that would import or call anything beyond tensors and plain containers is refused — or
with safetensors for ``.safetensors`` files. Keys must match the architecture exactly: a mismatch
raises :class:`CheckpointMismatchError` listing the missing, unexpected and mis-shaped keys.
"""

from __future__ import annotations

import logging
import pickle
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from napari_vfmseg.models.base import LoadedModel, fingerprint_state_dict
from napari_vfmseg.models.device import configure_cpu_threads, encoder_dtype_for, resolve_device
from napari_vfmseg.models.download import ensure_weights
from napari_vfmseg.models.registry import ARCHITECTURES, Builder, ModelSpec, get_spec, infer_arch, model_names
from napari_vfmseg.models.student import student_checkpoint

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

# Containers that training scripts wrap a state dict in (MedSAM saves {"model": ..., "optimizer": ...}).
_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "sam", "module", "net")
# Prefixes added by DataParallel / wrapper modules, stripped when every key carries them.
_KEY_PREFIXES = ("module.", "model.", "sam.")
_SHOWN_KEYS = 5


class UnsafeCheckpointError(ValueError):
    """The checkpoint is a pickle that would run code (or build arbitrary objects) when loaded."""


class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not fit the architecture it is loaded into."""

    def __init__(self, message: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (``.safetensors`` or a torch ``.pth``/``.pt``), on CPU.

    Common wrappers (``{"model": ...}``, ``{"state_dict": ...}``, ``module.`` prefixes) are
    removed; non-tensor entries are dropped. Raises ``FileNotFoundError`` for a missing file,
    :class:`UnsafeCheckpointError` for a code-running pickle, ``ValueError`` for anything unreadable.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(f"cannot read safetensors checkpoint {path}: {exc}") from exc
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise UnsafeCheckpointError(
                f"refused to load {path}: it is a pickle that needs Python objects other than tensors "
                f"to be built, which could run code (torch.load weights_only=True: {first}). Load only "
                f"checkpoints from sources you trust; re-save a trusted one as a plain state dict or as "
                f".safetensors"
            ) from exc
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise ValueError(f"cannot read checkpoint {path}: {exc}") from exc
    return unwrap_state_dict(raw, source=str(path))


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The flat ``{name: tensor}`` state dict inside a loaded checkpoint object."""
    for _ in range(len(_WRAPPER_KEYS)):
        if not isinstance(obj, Mapping) or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source} holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{source} contains no tensors (top-level keys: {', '.join(map(str, list(obj)[:8]))})")
    stripped = True
    while stripped:
        stripped = False
        for prefix in _KEY_PREFIXES:
            if all(k.startswith(prefix) for k in tensors):
                tensors = {k[len(prefix):]: v for k, v in tensors.items()}
                stripped = True
    return tensors


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN_KEYS])
    return shown + (f", ... ({len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else "")


def check_state_dict(model: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], arch: str, source: str) -> None:
    """Raise :class:`CheckpointMismatchError` unless ``state_dict`` fits ``model`` key for key and shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k].shape)})"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys: {_listing(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
    if mismatched:
        parts.append(f"{len(mismatched)} keys with another shape: {_listing(mismatched)}")
    raise CheckpointMismatchError(
        f"{source} does not fit architecture {arch!r}: " + "; ".join(parts),
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
    )


def weights_fingerprint(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``fingerprint_state_dict`` of a loaded state dict (identifies the base weights)."""
    return fingerprint_state_dict(dict(state_dict))


def _resolve_source(
    name_or_path: PathLike,
    arch: Optional[str],
    checkpoint: Optional[PathLike],
    download: bool,
    progress: bool,
) -> tuple[Optional[ModelSpec], Path]:
    """(registry spec or None, checkpoint path) for the arguments of :func:`load_model`."""
    if isinstance(name_or_path, str) and name_or_path in model_names():
        spec = get_spec(name_or_path)
        if arch is not None and arch != spec.arch:
            raise ValueError(f"model {spec.name!r} is architecture {spec.arch!r}; arch={arch!r} cannot change that")
        if checkpoint is not None:
            path = Path(checkpoint).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"no checkpoint file at {path}")
            return spec, path
        return spec, ensure_weights(spec, progress=progress, allow_download=download)
    if checkpoint is not None:
        raise ValueError(
            f"checkpoint= only goes with a registry model name ({', '.join(model_names())}); "
            f"pass the checkpoint path as the first argument instead"
        )
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        text = str(name_or_path)
        looks_like_name = not any(c in text for c in "/\\.")
        hint = f" ({text!r} is not a registry model either: {', '.join(model_names())})" if looks_like_name else ""
        raise FileNotFoundError(f"no checkpoint file at {path.resolve()}{hint}")
    return None, path


def _build_and_load(builder: Builder, state_dict: Mapping[str, torch.Tensor], arch: str, source: str) -> torch.nn.Module:
    """Build the network and load ``state_dict`` into it, checking keys and shapes first.

    The check runs on a skeleton built on the ``meta`` device (no memory, no random init), so a
    wrong checkpoint fails before a multi-gigabyte model is allocated; a builder that cannot run
    on ``meta`` is checked on the real model instead.
    """
    try:
        with torch.device("meta"):
            skeleton = builder()
    except Exception:  # noqa: BLE001 - only an optimisation; the real build below is checked too
        skeleton = None
    if skeleton is not None:
        check_state_dict(skeleton, state_dict, arch, source)
        del skeleton
    sam = builder()
    check_state_dict(sam, state_dict, arch, source)
    sam.load_state_dict(state_dict, strict=True)
    return sam


def load_model(
    name_or_path: PathLike,
    device: Union[str, torch.device, None] = "auto",
    arch: Optional[str] = None,
    checkpoint: Optional[PathLike] = None,
    *,
    download: bool = True,
    progress: bool = True,
) -> LoadedModel:
    """Load a registry model or a checkpoint file, ready for inference on ``device``.

    ``name_or_path``: a registry name (``"vit_b"``, ``"medsam_vit_b"``, ...) or a checkpoint path.
    ``arch``: architecture of a bare checkpoint (``"vit_b"``, ``"vit_l"``, ``"vit_h"``, ``"vit_t"``);
    inferred from the state dict when omitted. ``checkpoint``: other weights for a registry model's
    architecture (e.g. a fine-tuned ``vit_b``). ``download=False`` never uses the network.
    On CPU, torch threads are set to the number of physical cores (:func:`configure_cpu_threads`).
    """
    started = time.perf_counter()
    target = resolve_device(device)
    spec, path = _resolve_source(name_or_path, arch, checkpoint, download, progress)
    state_dict = read_state_dict(path)
    student = student_checkpoint(path) if spec is None and arch is None else None
    if spec is not None:
        arch_key, builder = spec.arch, spec.builder
    elif student is not None:  # a distilled student: its metadata names its architecture
        arch_key, builder = "student", student.builder
    else:
        arch_key = arch or infer_arch(state_dict, source=str(path))
        if arch_key not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch_key!r}; choose one of {', '.join(ARCHITECTURES)}")
        builder = ARCHITECTURES[arch_key].builder
    sam = _build_and_load(builder, state_dict, arch_key, str(path))
    fingerprint = weights_fingerprint(state_dict)
    del state_dict
    cpu_threads = configure_cpu_threads() if target.type == "cpu" else None
    sam = sam.to(target).eval()
    info = {
        "source_file": str(path),
        "registry_name": spec.name if spec else None,
        "licence": spec.licence if spec else None,
        "description": spec.description if spec else ARCHITECTURES[arch_key].description if student is None else "",
        "preprocess": spec.preprocess if spec else "sam",
        "propagation": spec.propagation if spec else "generic",
        **(student.info() if student is not None else {}),
        "parameters": sum(p.numel() for p in sam.parameters()),
        "encoder_parameters": sum(p.numel() for p in sam.image_encoder.parameters()),
        "cpu_threads": cpu_threads,
        "load_seconds": round(time.perf_counter() - started, 3),
    }
    name = spec.name if (spec is not None and checkpoint is None) else str(path)
    logger.info("loaded %s (%s) on %s in %.1f s", name, arch_key, target, info["load_seconds"])
    return LoadedModel(
        sam=sam,
        name=name,
        arch=arch_key,
        device=target,
        fingerprint=fingerprint,
        encoder_dtype=encoder_dtype_for(target),
        info=info,
    )
