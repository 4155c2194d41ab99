"""Choosing where a model runs, in which precision, and with how many CPU threads.

* ``resolve_device("auto")``: CUDA if available, then Apple MPS, then CPU.
* ``encoder_dtype_for(device)``: the autocast dtype for the image encoder — bfloat16 on CUDA
  GPUs that support it, float16 on older CUDA GPUs, ``None`` (full fp32) on CPU and MPS.
  Only the encoder runs under autocast; the prompt encoder and mask decoder stay fp32.
* ``configure_cpu_threads()``: one torch thread per physical core (hyper-threads slow GEMMs).
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Union

import torch

logger = logging.getLogger(__name__)

DeviceLike = Union[str, torch.device, None]

_KNOWN_TYPES = ("cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(spec: DeviceLike = "auto") -> torch.device:
    """A ``torch.device`` from ``"auto"``/``None``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.

    ``auto`` picks CUDA, then MPS, then CPU. Asking for an accelerator that this machine does not
    have, or for an unknown device, raises ``ValueError`` with the choices.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = spec if isinstance(spec, torch.device) else torch.device(str(spec).strip().lower())
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(
            f"unknown device {spec!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
        ) from exc
    if device.type not in _KNOWN_TYPES:
        raise ValueError(f"unsupported device {spec!r}: use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {spec!r} asked for, but CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {spec!r} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    if device.type == "mps" and not _mps_available():
        raise ValueError(f"device {spec!r} asked for, but Apple MPS is not available on this machine")
    return device


def encoder_dtype_for(device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype for the image encoder on ``device``; ``None`` means plain fp32.

    CUDA: bfloat16 on GPUs with native bf16 (compute capability 8.0+: Ampere, Hopper and newer),
    else float16 (bf16 is only emulated there, and slow). CPU: ``None`` (CPU autocast
    to bf16 is slower than fp32 on most desktop CPUs). MPS: ``None`` — autocast on MPS has caused
    dtype errors in other SAM tools, so it stays fp32 until tested on Apple hardware.
    """
    if device.type == "cuda":
        major, _minor = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    return None


def physical_cpu_count() -> int:
    """Number of physical CPU cores (psutil), falling back to ``os.cpu_count()``, at least 1."""
    count: Optional[int] = None
    try:
        import psutil

        count = psutil.cpu_count(logical=False)
    except ImportError:  # psutil is optional: napari brings it, a bare install may not
        count = None
    if not count:
        count = os.cpu_count()
    return max(1, int(count or 1))


def configure_cpu_threads() -> int:
    """Set torch's intra-op threads to the number of physical cores; return the count in use.

    If the user set ``OMP_NUM_THREADS`` explicitly, torch already follows it and it is kept.
    """
    if os.environ.get("OMP_NUM_THREADS", "").strip():
        return torch.get_num_threads()
    threads = physical_cpu_count()
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        logger.debug("torch CPU threads set to %d (physical cores)", threads)
    return threads
