"""LoRA layers: no-op when untrained, merge/unmerge equivalence, frozen base, parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_vfmseg.models.base import fingerprint_state_dict
from napari_vfmseg.models.lora import (
    LoRAConfig,
    LoRAConv1x1,
    LoRALinear,
    count_parameters,
    default_encoder_targets,
    inject_lora,
    lora_modules,
    merge_lora,
    remove_lora,
    unmerge_lora,
)

from _tiny_models import build_tiny_sam


pytestmark = pytest.mark.usefixtures("one_thread")


def _sam_outputs(sam, image: torch.Tensor):
    """Embedding plus decoder outputs for a box prompt, through the whole network."""
    with torch.no_grad():
        emb = sam.image_encoder(sam.preprocess(image))
        sparse, dense = sam.prompt_encoder(points=None, boxes=torch.tensor([[20.0, 30.0, 90.0, 100.0]]), masks=None)
        low, iou = sam.mask_decoder(image_embeddings=emb, image_pe=sam.prompt_encoder.get_dense_pe(),
                                    sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                    multimask_output=True)
    return emb, low, iou


def _randomise_lora(sam, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in lora_modules(sam):
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.05)


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(3)) * 255


def test_untrained_adapter_changes_no_output_exactly(image):
    sam = build_tiny_sam()
    before = _sam_outputs(sam, image)
    names = inject_lora(sam, LoRAConfig(rank=4, alpha=8, encoder_targets=("qkv", "proj"),
                                        decoder_targets=("q_proj", "v_proj")))
    # 2 encoder blocks x (qkv, proj) + decoder attention layers with q_proj / v_proj (7 attentions).
    assert sum(n.startswith("image_encoder.") for n in names) == 4
    assert sum(n.startswith("mask_decoder.transformer.") for n in names) == 14
    after = _sam_outputs(sam, image)
    for a, b in zip(before, after):
        assert torch.equal(a, b)
    # The base state-dict keys are unchanged; only lora_A / lora_B are added.
    keys = set(sam.state_dict())
    base_keys = {k for k in keys if ".lora_" not in k}
    assert base_keys == set(build_tiny_sam().state_dict())
    assert len(keys - base_keys) == 2 * len(names)


def test_trained_adapter_changes_output_and_merge_unmerge_are_equivalent(image):
    sam = build_tiny_sam()
    base_out = _sam_outputs(sam, image)
    base_print = fingerprint_state_dict(sam.state_dict())
    inject_lora(sam, LoRAConfig(rank=2, alpha=4, encoder_targets=("qkv",), decoder_targets=("q_proj",)))
    _randomise_lora(sam)
    adapted = _sam_outputs(sam, image)
    assert not torch.allclose(adapted[0], base_out[0], atol=1e-4)
    assert merge_lora(sam) == len(list(lora_modules(sam)))
    merged = _sam_outputs(sam, image)
    for a, b in zip(adapted, merged):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    unmerge_lora(sam)
    unmerged = _sam_outputs(sam, image)
    for a, b in zip(adapted, unmerged):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # Removing the layers gives back plain modules and (up to rounding) the base outputs.
    assert remove_lora(sam) > 0
    assert not list(lora_modules(sam))
    assert all(type(m) in (nn.Linear,) for n, m in sam.named_modules() if n.endswith(("qkv", "q_proj")))
    for a, b in zip(base_out, _sam_outputs(sam, image)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert set(sam.state_dict()) == set(build_tiny_sam().state_dict())
    assert base_print  # the base fingerprint was computable before injection


def test_base_weights_are_frozen_and_shared():
    base = nn.Linear(6, 9)
    layer = LoRALinear.wrap(base, rank=3, alpha=6.0)
    assert layer.weight is base.weight and layer.bias is base.bias
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad
    assert layer.scaling == pytest.approx(2.0)
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
    x = torch.randn(4, 6, requires_grad=False)
    layer(x).sum().backward()
    assert layer.weight.grad is None
    assert layer.lora_B.grad is not None and torch.count_nonzero(layer.lora_B.grad) > 0
    # The update equals B @ A * scaling.
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = x @ (base.weight + layer.lora_B @ layer.lora_A * 2.0).T + base.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_conv1x1_adapter_noop_merge_and_errors():
    base = nn.Conv2d(5, 7, 1)
    x = torch.randn(2, 5, 6, 6)
    before = base(x).detach()
    layer = LoRAConv1x1.wrap(base, rank=2, alpha=2.0)
    assert torch.equal(layer(x), before)
    with torch.no_grad():
        layer.lora_B.normal_()
    adapted = layer(x).detach()
    assert not torch.allclose(adapted, before)
    layer.merge()
    torch.testing.assert_close(layer(x), adapted, rtol=1e-5, atol=1e-5)
    restored = layer.unwrap()
    assert type(restored) is nn.Conv2d
    torch.testing.assert_close(restored(x), before, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="1 x 1"):
        LoRAConv1x1.wrap(nn.Conv2d(3, 3, 3), rank=1, alpha=1.0)


def test_convolutional_encoder_gets_conv_targets():
    class ConvEncoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.img_size = 32
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.pw1 = nn.Conv2d(8, 8, 1)
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)

    encoder = ConvEncoder()
    assert default_encoder_targets(encoder) == ("pw1",)
    assert default_encoder_targets(build_tiny_sam().image_encoder) == ("qkv",)


def test_parameter_counts_and_errors():
    sam = build_tiny_sam()
    for p in sam.parameters():
        p.requires_grad_(False)
    names = inject_lora(sam, LoRAConfig(rank=4, alpha=4, encoder_targets=("qkv",)))
    count = count_parameters(sam)
    expected = sum(l.lora_A.numel() + l.lora_B.numel() for _, l in lora_modules(sam))
    assert count.trainable == expected == count.by_part["image_encoder"]
    assert count.total == sum(p.numel() for p in sam.parameters())
    assert 0 < count.share < 0.1
    assert "trainable of" in str(count)
    assert len(names) == 2
    with pytest.raises(ValueError, match="already carries LoRA"):
        inject_lora(sam, LoRAConfig())
    with pytest.raises(ValueError, match="no linear layer"):
        inject_lora(build_tiny_sam(), LoRAConfig(encoder_targets=("nonexistent",)))
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)
    with pytest.raises(ValueError, match="decoder LoRA target"):
        LoRAConfig(decoder_targets=("qkv",))
