"""SAM-family models: the registry, verified downloads, safe loading and device choice.

>>> from napari_vfmseg.models import list_models, load_model
>>> [m["name"] for m in list_models()]            # doctest: +SKIP
['mobilesam_vit_t', 'vit_b', 'medsam_vit_b', 'vit_l', 'vit_h']
>>> model = load_model("vit_b", device="auto")    # doctest: +SKIP
"""

from napari_vfmseg.models.base import LoadedModel, fingerprint_state_dict
from napari_vfmseg.models.device import (
    configure_cpu_threads,
    encoder_dtype_for,
    physical_cpu_count,
    resolve_device,
)
from napari_vfmseg.models.download import ModelDownloadError, WeightsIntegrityError, ensure_weights
from napari_vfmseg.models.loading import (
    CheckpointMismatchError,
    UnsafeCheckpointError,
    load_model,
    read_state_dict,
)
from napari_vfmseg.models.paths import vfmseg_home, weights_dir
from napari_vfmseg.models.registry import (
    BUILTIN_MODEL,
    default_model_name,
    ARCHITECTURES,
    ModelSpec,
    get_spec,
    infer_arch,
    list_models,
    model_names,
    register_model,
    unregister_model,
)

__all__ = [
    "ARCHITECTURES",
    "BUILTIN_MODEL",
    "default_model_name",
    "CheckpointMismatchError",
    "LoadedModel",
    "ModelDownloadError",
    "ModelSpec",
    "UnsafeCheckpointError",
    "WeightsIntegrityError",
    "configure_cpu_threads",
    "encoder_dtype_for",
    "ensure_weights",
    "fingerprint_state_dict",
    "get_spec",
    "infer_arch",
    "list_models",
    "load_model",
    "model_names",
    "physical_cpu_count",
    "read_state_dict",
    "register_model",
    "resolve_device",
    "unregister_model",
    "vfmseg_home",
    "weights_dir",
]
