"""The loaded-model record that the engine, training and UI layers pass around."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from segment_anything.modeling import Sam


@dataclass
class LoadedModel:
    """A SAM-family network ready for inference, with what the cache and the UI need to know.

    ``sam`` is a ``segment_anything.modeling.Sam`` (image_encoder, prompt_encoder, mask_decoder,
    pixel_mean/std); every model in the registry, the built-in one included, is built as one so the
    engine treats them alike. ``fingerprint`` identifies the base weights (hex digest); it becomes
    part of every embedding-cache key, together with ``adapter_fingerprint`` when an adapter that
    changes the encoder is active.
    """

    sam: Sam
    name: str                      # registry name ("vit_b", "builtin", ...) or the checkpoint path
    arch: str                      # architecture key: "vit_b", "vit_l", "vit_h", "vit_t", "builtin"
    device: torch.device
    fingerprint: str               # sha256 hex digest of the base weights' tensors
    adapter_fingerprint: Optional[str] = None
    encoder_dtype: Optional[torch.dtype] = None   # autocast dtype for the encoder (None = fp32)
    info: dict = field(default_factory=dict)      # free-form: licence, source file, parameter count

    @property
    def image_size(self) -> int:
        """Side of the square encoder input in pixels (1024 for official SAM)."""
        return int(self.sam.image_encoder.img_size)

    @property
    def cache_key(self) -> str:
        """Model part of an embedding-cache key: base weights plus any encoder-changing adapter."""
        return self.fingerprint if not self.adapter_fingerprint else f"{self.fingerprint}+{self.adapter_fingerprint}"


def fingerprint_state_dict(state_dict: dict[str, torch.Tensor], length: int = 16) -> str:
    """Stable hex digest of a state dict's names, shapes, dtypes and values (order independent).

    Used as the model part of embedding-cache keys and to check that an adapter matches its base.
    """
    import hashlib

    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key]
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(key.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()[:length]
