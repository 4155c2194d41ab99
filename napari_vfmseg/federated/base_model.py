"""How a server or a site names and loads its base model, offline.

A spec is what ``load_model`` takes (a registry name such as ``builtin``, or a checkpoint path),
loaded with ``download=False``: a federated run never reaches the network. For development and
tests a spec may also be ``FILE.py:FUNCTION``, a function without arguments that returns a
``LoadedModel`` (the file is executed: use only your own).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from napari_vfmseg.models.base import LoadedModel

__all__ = ["load_base"]


def load_base(spec: str, device: str = "cpu") -> LoadedModel:
    """The base model named by ``spec`` (see the module docstring), on ``device``."""
    spec = str(spec)
    file, sep, function = spec.rpartition(":")
    if sep and file.endswith(".py"):
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: model factory file not found (spec {spec!r})")
        module_spec = importlib.util.spec_from_file_location(f"_vfmseg_model_factory_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        factory = getattr(module, function, None)
        if factory is None:
            raise ValueError(f"{path}: has no function {function!r} (spec {spec!r})")
        model = factory()
        if not isinstance(model, LoadedModel):
            raise ValueError(f"{spec}: returned {type(model).__name__}, expected a LoadedModel")
        return model
    from napari_vfmseg.models import load_model

    return load_model(spec, device=device, download=False, progress=False)
