"""Low-rank adapters (LoRA) for the linear layers of a SAM-family network.

A :class:`LoRALinear` is an ``nn.Linear`` whose frozen weight ``W`` (out, in) is complemented by two
small trainable matrices ``lora_A`` (r, in) and ``lora_B`` (out, r)::

    y = x W^T + b + dropout(x) A^T B^T * (alpha / r)

``A`` starts random and ``B`` at zero, so a freshly injected adapter changes no output, bit for bit.
:meth:`LoRALinear.merge` folds ``B A * scaling`` into ``W`` for inference at the base model's speed;
:meth:`LoRALinear.unmerge` takes it out again. Because the class *is* an ``nn.Linear`` and keeps the
original ``weight``/``bias`` parameters, the base state-dict keys do not change: only
``<name>.lora_A`` and ``<name>.lora_B`` are added.

Targets are chosen by the last component of a module's name, inside the image encoder
(``qkv``, ``proj`` in SAM's ViT) and optionally the mask decoder's two-way transformer
(``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``). Convolutional encoders get adapters on their
1 x 1 convolutions (:class:`LoRAConv1x1`), which are linear layers over channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "LoRAConfig",
    "LoRALinear",
    "LoRAConv1x1",
    "ParameterCount",
    "inject_lora",
    "remove_lora",
    "lora_modules",
    "merge_lora",
    "unmerge_lora",
    "count_parameters",
    "ENCODER_TARGETS",
    "DECODER_TARGETS",
    "default_encoder_targets",
]

# Module names that may carry an adapter in SAM's ViT encoder and in its two-way transformer.
ENCODER_TARGETS = ("qkv", "proj")
DECODER_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass(frozen=True)
class LoRAConfig:
    """Where and how large the adapters are.

    ``encoder_targets`` / ``decoder_targets`` are last-name components of ``nn.Linear`` modules inside
    ``sam.image_encoder`` and ``sam.mask_decoder.transformer``; an empty tuple leaves that part
    without adapters. ``alpha / rank`` scales the low-rank update.
    """

    rank: int = 4
    alpha: float = 4.0
    dropout: float = 0.0
    encoder_targets: tuple[str, ...] = ("qkv",)
    decoder_targets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if int(self.rank) < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank!r}")
        if not (self.alpha > 0):
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if not (0.0 <= self.dropout < 1.0):
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        for name in tuple(self.encoder_targets) + tuple(self.decoder_targets):
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"LoRA targets are module names without dots (e.g. 'qkv'), got {name!r}")
        for name in self.decoder_targets:
            if name not in DECODER_TARGETS:
                raise ValueError(f"unknown decoder LoRA target {name!r}: choose from {DECODER_TARGETS}")
        object.__setattr__(self, "encoder_targets", tuple(self.encoder_targets))
        object.__setattr__(self, "decoder_targets", tuple(self.decoder_targets))

    @property
    def scaling(self) -> float:
        return float(self.alpha) / int(self.rank)

    def as_dict(self) -> dict:
        return {
            "rank": int(self.rank),
            "alpha": float(self.alpha),
            "dropout": float(self.dropout),
            "encoder_targets": list(self.encoder_targets),
            "decoder_targets": list(self.decoder_targets),
        }


class _LowRankUpdate:
    """What both LoRA layers share: the frozen base, the no-op start, merge and unmerge.

    Subclasses define ``lora_A``, ``lora_B``, ``scaling`` and ``delta_weight()`` (the update in the
    base weight's shape).
    """

    weight: torch.Tensor
    bias: Optional[torch.Tensor]
    merged: bool

    def _init_lora(self, shape_a: tuple[int, ...], shape_b: tuple[int, ...], rank: int, alpha: float,
                   dropout: float, device, dtype) -> None:
        self.rank = int(rank)
        self.alpha = float(alpha)
        self.scaling = self.alpha / self.rank
        self.lora_A = nn.Parameter(torch.empty(*shape_a, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(*shape_b, device=device, dtype=dtype))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.reset_lora()
        self._freeze_base()

    def _freeze_base(self) -> None:
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    def reset_lora(self) -> None:
        """A random (Kaiming-uniform), B zero: the adapter becomes a no-op again."""
        if self.merged:
            self.unmerge()
        with torch.no_grad():
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.lora_B.zero_()

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into ``weight``; forward then costs what the base layer costs."""
        if not self.merged:
            self.weight.add_(self.delta_weight().to(self.weight.dtype))
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract a merged update from ``weight`` (equal to the base up to float rounding)."""
        if self.merged:
            self.weight.sub_(self.delta_weight().to(self.weight.dtype))
            self.merged = False

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


class LoRALinear(_LowRankUpdate, nn.Linear):
    """``nn.Linear`` plus a low-rank update; the base ``weight`` and ``bias`` are frozen.

    Input (..., in_features) → output (..., out_features), like the linear layer it replaces.
    ``lora_A`` is (rank, in_features), ``lora_B`` (out_features, rank).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool, rank: int, alpha: float,
                 dropout: float = 0.0, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_lora((rank, in_features), (out_features, rank), rank, alpha, dropout, device, dtype)

    @classmethod
    def wrap(cls, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> "LoRALinear":
        """A LoRA layer that shares ``base``'s weight and bias tensors (no copy)."""
        layer = cls(base.in_features, base.out_features, base.bias is not None, rank, alpha, dropout,
                    device=base.weight.device, dtype=base.weight.dtype)
        layer.weight = base.weight
        layer.bias = base.bias
        layer._freeze_base()
        layer.train(base.training)
        return layer

    def unwrap(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding the base weight (the update is taken out if merged)."""
        if self.merged:
            self.unmerge()
        base = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                         device=self.weight.device, dtype=self.weight.dtype)
        base.weight = self.weight
        base.bias = self.bias
        base.train(self.training)
        return base

    def delta_weight(self) -> torch.Tensor:
        """The update ``B @ A * scaling``, shape (out_features, in_features)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        if self.merged:
            return out
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))
        return out + update * self.scaling


class LoRAConv1x1(_LowRankUpdate, nn.Conv2d):
    """A 1 x 1 ``nn.Conv2d`` (groups 1) plus a low-rank update over channels; base frozen.

    Input (B, in_channels, H, W) → (B, out_channels, H', W'), like the convolution it replaces.
    ``lora_A`` is (rank, in_channels, 1, 1), ``lora_B`` (out_channels, rank, 1, 1).
    """

    def __init__(self, base: nn.Conv2d, rank: int, alpha: float, dropout: float = 0.0) -> None:
        if base.kernel_size != (1, 1) or base.groups != 1:
            raise ValueError("LoRAConv1x1 wraps 1 x 1 convolutions with groups=1 only")
        super().__init__(base.in_channels, base.out_channels, 1, stride=base.stride, padding=base.padding,
                         dilation=base.dilation, bias=base.bias is not None, padding_mode=base.padding_mode,
                         device=base.weight.device, dtype=base.weight.dtype)
        self.weight = base.weight
        self.bias = base.bias
        self._init_lora((rank, base.in_channels, 1, 1), (base.out_channels, rank, 1, 1), rank, alpha, dropout,
                        base.weight.device, base.weight.dtype)
        self.train(base.training)

    @classmethod
    def wrap(cls, base: nn.Conv2d, rank: int, alpha: float, dropout: float = 0.0) -> "LoRAConv1x1":
        """A LoRA layer sharing ``base``'s weight and bias tensors (no copy)."""
        return cls(base, rank, alpha, dropout)

    def unwrap(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding the base weight (the update is taken out if merged)."""
        if self.merged:
            self.unmerge()
        base = nn.Conv2d(self.in_channels, self.out_channels, 1, stride=self.stride, padding=self.padding,
                         dilation=self.dilation, bias=self.bias is not None, padding_mode=self.padding_mode,
                         device=self.weight.device, dtype=self.weight.dtype)
        base.weight = self.weight
        base.bias = self.bias
        base.train(self.training)
        return base

    def delta_weight(self) -> torch.Tensor:
        """The update ``B @ A * scaling`` as a (out, in, 1, 1) kernel."""
        return (self.lora_B.flatten(1) @ self.lora_A.flatten(1))[:, :, None, None] * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if self.merged:
            return out
        low = F.conv2d(self.lora_dropout(x), self.lora_A.to(x.dtype), None, self.stride, self.padding, self.dilation)
        return out + F.conv2d(low, self.lora_B.to(x.dtype)) * self.scaling


LoRALayer = (LoRALinear, LoRAConv1x1)


def _adaptable(module: nn.Module) -> bool:
    if isinstance(module, LoRALayer):
        return False
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and module.groups == 1 \
        and module.padding_mode == "zeros"


@dataclass
class ParameterCount:
    """Trainable and total parameter numbers of a module; ``share`` is trainable / total."""

    trainable: int
    total: int
    by_part: dict[str, int] = field(default_factory=dict)

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.trainable:,} trainable of {self.total:,} parameters ({100 * self.share:.2f}%)"


def _target_roots(sam: nn.Module, config: LoRAConfig) -> list[tuple[str, nn.Module, tuple[str, ...]]]:
    roots = []
    if config.encoder_targets:
        roots.append(("image_encoder", sam.image_encoder, config.encoder_targets))
    if config.decoder_targets:
        transformer = getattr(sam.mask_decoder, "transformer", None)
        if transformer is None:
            raise ValueError("this mask decoder has no 'transformer' submodule to put decoder LoRA on")
        roots.append(("mask_decoder.transformer", transformer, config.decoder_targets))
    return roots


def inject_lora(sam: nn.Module, config: LoRAConfig) -> list[str]:
    """Replace the targeted ``nn.Linear`` layers of ``sam`` by :class:`LoRALinear` (in place).

    Returns the full module names that received an adapter. Raises ``ValueError`` when a requested
    part has no matching linear layer (e.g. a convolutional image encoder) or already has adapters.
    """
    if any(True for _ in lora_modules(sam)):
        raise ValueError("the model already carries LoRA layers: remove them before injecting new ones")
    injected: list[str] = []
    for prefix, root, targets in _target_roots(sam, config):
        found = [
            (name, module) for name, module in root.named_modules()
            if _adaptable(module) and name.rsplit(".", 1)[-1] in targets
        ]
        if not found:
            raise ValueError(
                f"no linear layer or 1x1 convolution named {list(targets)} in {prefix} "
                f"({type(root).__name__}): LoRA cannot be placed there; use the 'decoder' mode instead"
            )
        for name, module in found:
            parent_name, _, child = name.rpartition(".")
            parent = root.get_submodule(parent_name) if parent_name else root
            cls = LoRALinear if isinstance(module, nn.Linear) else LoRAConv1x1
            setattr(parent, child, cls.wrap(module, config.rank, config.alpha, config.dropout))
            injected.append(f"{prefix}.{name}")
    return injected


def lora_modules(module: nn.Module) -> Iterator[tuple[str, "LoRALinear | LoRAConv1x1"]]:
    """(name, layer) for every LoRA layer (:class:`LoRALinear`, :class:`LoRAConv1x1`) in ``module``."""
    for name, sub in module.named_modules():
        if isinstance(sub, LoRALayer):
            yield name, sub


def default_encoder_targets(image_encoder: nn.Module) -> tuple[str, ...]:
    """Encoder targets for a model: ``("qkv",)`` for SAM-style ViTs, otherwise the names of all
    1 x 1 convolutions (a convolutional encoder's channel mixers). Empty if neither exists."""
    modules = [(name.rsplit(".", 1)[-1], m) for name, m in image_encoder.named_modules() if _adaptable(m)]
    if any(name == "qkv" and isinstance(m, nn.Linear) for name, m in modules):
        return ("qkv",)
    convs = [name for name, m in modules if isinstance(m, nn.Conv2d)]
    return tuple(dict.fromkeys(convs))


def remove_lora(sam: nn.Module) -> int:
    """Put plain ``nn.Linear`` layers back (unmerging first); returns how many were removed."""
    found = list(lora_modules(sam))
    for name, layer in found:
        parent_name, _, child = name.rpartition(".")
        parent = sam.get_submodule(parent_name) if parent_name else sam
        setattr(parent, child, layer.unwrap())
    return len(found)


def merge_lora(module: nn.Module) -> int:
    """Merge every adapter inside ``module`` into its base weight; returns the number merged."""
    layers = [layer for _, layer in lora_modules(module)]
    for layer in layers:
        layer.merge()
    return len(layers)


def unmerge_lora(module: nn.Module) -> int:
    """Undo :func:`merge_lora`; returns the number of layers unmerged."""
    layers = [layer for _, layer in lora_modules(module)]
    for layer in layers:
        layer.unmerge()
    return len(layers)


def count_parameters(sam: nn.Module, parts: Iterable[str] = ("image_encoder", "prompt_encoder", "mask_decoder")
                     ) -> ParameterCount:
    """Trainable (``requires_grad``) and total parameters, with the trainable number per part."""
    params = list(sam.parameters())
    by_part = {}
    for part in parts:
        sub = getattr(sam, part, None)
        if sub is not None:
            by_part[part] = sum(p.numel() for p in sub.parameters() if p.requires_grad)
    return ParameterCount(
        trainable=sum(p.numel() for p in params if p.requires_grad),
        total=sum(p.numel() for p in params),
        by_part=by_part,
    )
