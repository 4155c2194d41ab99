"""The registry of SAM-family models: what each is, how to build it, where its weights come from.

Every entry is a :class:`ModelSpec`. Official entries download their weights from the authors'
release (URL, sha256 and size below were taken from the upstream releases and cross-checked
against independent registries such as micro-sam's). Every builder returns a
``segment_anything.modeling.Sam``, so the engine treats all models alike.

Extension point. A model whose weights ship inside this package (the project's own ``builtin``
model, added by a later issue) is a spec with ``package_file="models/weights/<file>.safetensors"``
(relative to the ``napari_vfmseg`` package), ``url=None`` and its own ``builder``; add it to
:func:`_official_specs` once the file exists, or call :func:`register_model` at run time
(plugins, tests). A spec is only listed when its weights can actually be had.

Architectures (``ARCHITECTURES``) are what a bare checkpoint is built as: ``vit_b``, ``vit_l``,
``vit_h`` (SAM ViT encoders) and ``vit_t`` (MobileSAM's TinyViT); ``infer_arch`` tells them apart
from a state dict's keys and shapes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch

from napari_vfmseg.models.paths import weights_dir

Builder = Callable[[], "torch.nn.Module"]  # returns segment_anything.modeling.Sam, random init


def _sam_vit_b():
    from segment_anything import build_sam_vit_b

    return build_sam_vit_b(None)


def _sam_vit_l():
    from segment_anything import build_sam_vit_l

    return build_sam_vit_l(None)


def _sam_vit_h():
    from segment_anything import build_sam_vit_h

    return build_sam_vit_h(None)


def _sam_vit_t():
    from napari_vfmseg.models.tiny_vit import build_sam_vit_t

    return build_sam_vit_t()


@dataclass(frozen=True)
class Architecture:
    """A network layout a checkpoint can be loaded into.

    ``encoder_embed_dim``/``encoder_depth`` identify SAM ViT encoders in a state dict (``None``
    for encoders that are not a plain ViT, such as TinyViT).
    """

    key: str
    builder: Builder
    description: str
    encoder_embed_dim: Optional[int] = None
    encoder_depth: Optional[int] = None


ARCHITECTURES: Mapping[str, Architecture] = {
    "vit_b": Architecture("vit_b", _sam_vit_b, "SAM ViT-B encoder (12 blocks, width 768)", 768, 12),
    "vit_l": Architecture("vit_l", _sam_vit_l, "SAM ViT-L encoder (24 blocks, width 1024)", 1024, 24),
    "vit_h": Architecture("vit_h", _sam_vit_h, "SAM ViT-H encoder (32 blocks, width 1280)", 1280, 32),
    "vit_t": Architecture("vit_t", _sam_vit_t, "MobileSAM TinyViT-5M encoder"),
}

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

BUILTIN_MODEL = "builtin"


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry.

    ``preprocess`` names the input convention the engine must apply: ``"sam"`` (longest side
    resized to ``image_size``, ImageNet mean/std normalization, zero padding — segment-anything's
    ``SamPredictor``) or ``"medsam"`` (MedSAM's own: image resized to ``image_size`` x
    ``image_size``, min-max scaled to [0, 1], no mean/std).
    ``sha256=None`` means no digest is published; the file is then checked by size only.
    """

    name: str
    arch: str
    builder: Builder
    image_size: int
    filename: str
    licence: str
    description: str
    url: Optional[str] = None
    sha256: Optional[str] = None
    size_bytes: Optional[int] = None
    homepage: Optional[str] = None
    preprocess: str = "sam"
    propagation: str = "generic"  # the 3D walk's preset: engine.propagate.preset
    package_file: Optional[str] = None  # weights shipped in the napari_vfmseg package (no download)

    def __post_init__(self) -> None:
        if not re.match(r"^[a-z0-9_]+$", self.name):
            raise ValueError(f"model name {self.name!r} must be lower-case letters, digits and '_'")
        if self.url is None and self.package_file is None:
            raise ValueError(f"model {self.name!r} needs a download url or a package_file")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError(f"model {self.name!r}: sha256 must be 64 lower-case hex digits")
        if self.preprocess not in ("sam", "medsam"):
            raise ValueError(f"model {self.name!r}: preprocess must be 'sam' or 'medsam'")
        if self.propagation not in ("generic", "tight"):
            raise ValueError(f"model {self.name!r}: propagation must be 'generic' or 'tight'")

    def local_path(self) -> Path:
        """Where this model's weights are (or will be) on this machine."""
        if self.package_file is not None:
            from importlib.resources import files

            return Path(str(files("napari_vfmseg").joinpath(self.package_file)))
        return weights_dir() / self.filename

    def is_present(self) -> bool:
        """True when the weights file exists locally with the expected size (when known)."""
        path = self.local_path()
        if not path.is_file():
            return False
        return self.size_bytes is None or path.stat().st_size == self.size_bytes


_SAM_HOME = "https://github.com/facebookresearch/segment-anything"


def _builtin_specs() -> list[ModelSpec]:
    """The project's own model, listed when its weights ship inside the package."""
    from napari_vfmseg.models.builtin import WEIGHTS_FILE, build_shipped_builtin, shipped_config, shipped_weights_path

    if not shipped_weights_path().is_file():
        return []
    return [
        ModelSpec(
            name=BUILTIN_MODEL,
            arch="builtin",
            builder=build_shipped_builtin,
            image_size=shipped_config().img_size,
            filename="builtin.safetensors",
            package_file=WEIGHTS_FILE,
            propagation="tight",   # fills its box, IoU head uncalibrated: docs/3d.md
            licence="Apache-2.0",
            homepage="https://github.com/napari-vfmseg/napari-vfmseg",
            description="napari-vfmseg built-in: small CNN encoder + SAM decoder trained on synthetic "
                        "slices by this project; offline, CPU-fast; see docs/models.md for its figures",
        )
    ]


def _official_specs() -> list[ModelSpec]:
    """The models napari-vfmseg knows out of the box, smallest encoder first."""
    return _builtin_specs() + [
        ModelSpec(
            name="mobilesam_vit_t",
            arch="vit_t",
            builder=_sam_vit_t,
            image_size=1024,
            filename="mobile_sam.pt",
            url="https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
            size_bytes=40_728_226,
            licence="Apache-2.0",
            homepage="https://github.com/ChaoningZhang/MobileSAM",
            description="MobileSAM: TinyViT-5M encoder distilled from SAM ViT-H, SAM's decoder; fast on CPU",
        ),
        ModelSpec(
            name="vit_b",
            arch="vit_b",
            builder=_sam_vit_b,
            image_size=1024,
            filename="sam_vit_b_01ec64.pth",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
            sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            size_bytes=375_042_383,
            licence="Apache-2.0",
            homepage=_SAM_HOME,
            description="Segment Anything ViT-B (Meta AI), 90 M-parameter encoder",
        ),
        ModelSpec(
            name="medsam_vit_b",
            arch="vit_b",
            builder=_sam_vit_b,
            image_size=1024,
            filename="medsam_vit_b.pth",
            url="https://zenodo.org/records/10689643/files/medsam_vit_b.pth",
            sha256="34b34b78c1d18cb8c6bf84cf9c00e135d6d6c965699f3c0e31ef1bc9dcb5be74",
            size_bytes=375_049_145,
            licence="Apache-2.0",
            homepage="https://github.com/bowang-lab/MedSAM",
            preprocess="medsam",
            description="MedSAM (Ma et al. 2024): SAM ViT-B fine-tuned on 1.57 M medical image-mask pairs; box prompts",
        ),
        ModelSpec(
            name="vit_l",
            arch="vit_l",
            builder=_sam_vit_l,
            image_size=1024,
            filename="sam_vit_l_0b3195.pth",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
            sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            size_bytes=1_249_524_607,
            licence="Apache-2.0",
            homepage=_SAM_HOME,
            description="Segment Anything ViT-L (Meta AI), 308 M-parameter encoder",
        ),
        ModelSpec(
            name="vit_h",
            arch="vit_h",
            builder=_sam_vit_h,
            image_size=1024,
            filename="sam_vit_h_4b8939.pth",
            url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
            sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            size_bytes=2_564_550_879,
            licence="Apache-2.0",
            homepage=_SAM_HOME,
            description="Segment Anything ViT-H (Meta AI), 637 M-parameter encoder; best quality, slowest",
        ),
    ]


# The registry's contents are specs (immutable descriptions), never loaded models.
_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in _official_specs()}


def register_model(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Add ``spec`` to the registry (``replace=True`` to override an entry of the same name)."""
    if not callable(spec.builder):
        raise ValueError(f"model {spec.name!r} has no builder callable")
    if spec.name in _SPECS and not replace:
        raise ValueError(f"a model named {spec.name!r} is already registered")
    _SPECS[spec.name] = spec
    return spec


def unregister_model(name: str) -> None:
    """Remove a model added with :func:`register_model` (no error if absent)."""
    _SPECS.pop(name, None)


def model_names() -> list[str]:
    """Registered model names, in registry order."""
    return list(_SPECS)


def get_spec(name: str) -> ModelSpec:
    """The spec registered under ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return _SPECS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(_SPECS)}") from None


def list_models() -> list[dict]:
    """One JSON-ready record per registered model, with ``present`` = weights found locally.

    Keys: name, arch, description, licence, image_size, preprocess, url, sha256, size_bytes,
    verification ("sha256" or "size"), homepage, path, present, shipped (weights in the package).
    """
    records = []
    for spec in _SPECS.values():
        records.append(
            {
                "name": spec.name,
                "arch": spec.arch,
                "description": spec.description,
                "licence": spec.licence,
                "image_size": spec.image_size,
                "preprocess": spec.preprocess,
                "url": spec.url,
                "sha256": spec.sha256,
                "size_bytes": spec.size_bytes,
                "verification": "sha256" if spec.sha256 else "size",
                "homepage": spec.homepage,
                "path": str(spec.local_path()),
                "present": spec.is_present(),
                "shipped": spec.package_file is not None,
            }
        )
    return records


def infer_arch(state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> str:
    """Architecture key of a SAM-format state dict (keys ``image_encoder.*`` etc.).

    TinyViT (``vit_t``) is recognised by its staged ``image_encoder.layers.N`` keys; SAM ViTs by
    the patch-embedding width and the number of ``image_encoder.blocks.N``. ``source`` names the
    file in error messages. Raises ``ValueError`` when nothing matches.
    """
    keys = list(state_dict)
    if not any(k.startswith("image_encoder.") for k in keys):
        raise ValueError(
            f"{source} is not a SAM-format checkpoint: it has no 'image_encoder.*' weights "
            f"(first keys: {', '.join(keys[:5]) or 'none'})"
        )
    if any(k.startswith("image_encoder.layers.") for k in keys) and "image_encoder.patch_embed.seq.0.c.weight" in state_dict:
        return "vit_t"
    patch = state_dict.get("image_encoder.patch_embed.proj.weight")
    if patch is None:
        raise ValueError(
            f"cannot tell the architecture of {source}: no 'image_encoder.patch_embed.proj.weight' "
            f"(SAM ViT) nor TinyViT 'image_encoder.layers.*' keys; pass arch= one of {', '.join(ARCHITECTURES)}"
        )
    embed_dim = int(patch.shape[0])
    block_ids = {int(m.group(1)) for k in keys if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))}
    depth = max(block_ids) + 1 if block_ids else 0
    for arch in ARCHITECTURES.values():
        if (arch.encoder_embed_dim, arch.encoder_depth) == (embed_dim, depth):
            return arch.key
    known = ", ".join(
        f"{a.key} (width {a.encoder_embed_dim}, {a.encoder_depth} blocks)"
        for a in ARCHITECTURES.values()
        if a.encoder_embed_dim
    )
    raise ValueError(
        f"cannot tell the architecture of {source}: its ViT encoder has width {embed_dim} and "
        f"{depth} blocks, which matches none of {known}; pass arch= explicitly"
    )


def default_model_name() -> Optional[str]:
    """The registry model to use when the user names none, or None when no weights are present.

    Policy: official weights the user has put on this machine come first (registry order, smallest
    encoder first); else the built-in model shipped in the package; else None. Nothing is
    downloaded behind the user's back.
    """
    records = list_models()
    for record in records:
        if record["present"] and record["name"] != BUILTIN_MODEL:
            return str(record["name"])
    for record in records:
        if record["name"] == BUILTIN_MODEL and record["present"]:
            return BUILTIN_MODEL
    return None
