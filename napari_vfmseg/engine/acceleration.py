"""Faster, upstream-equivalent execution of SAM's image encoder and mask decoder.

Nothing here changes a model's modules or weights: the functions walk segment-anything's modules
and call their layers (so LoRA-wrapped linears keep working), only changing how the arithmetic is
scheduled.

Encoder modes (``EncoderRunner``):

- ``"none"``: call ``sam.image_encoder`` as it is (upstream).
- ``"sdpa"`` (default): attention through ``torch.nn.functional.scaled_dot_product_attention`` with
  SAM's decomposed relative-position term passed as the additive mask. Same maths as upstream,
  fp32 differences ~1e-6; avoids materialising the attention matrix three times.
- ``"bf16"``: ``"sdpa"`` under bfloat16 autocast (CPUs with AVX512-BF16/AMX, or GPUs). Approximate.
- ``"int8"``: ``"sdpa"`` on a copy of the encoder whose ``nn.Linear`` layers are dynamically quantised
  to int8 (CPU only). Approximate.

Decoder (``FastDecoder``): SAM's TwoWayTransformer and mask head on a contiguous token-major layout,
with the prompt-independent projections of the first block cached per image, transposed convolutions
(kernel 2, stride 2) as one matrix product each, and only the requested masks computed.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.image_encoder import (
    Attention as EncoderAttention,
    Block,
    ImageEncoderViT,
    get_rel_pos,
    window_partition,
    window_unpartition,
)
from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.transformer import Attention as DecoderAttention
from segment_anything.modeling.transformer import TwoWayAttentionBlock, TwoWayTransformer

__all__ = [
    "ENCODER_MODES",
    "EncoderRunner",
    "FastDecoder",
    "DecoderContext",
    "sdpa_attention",
    "encoder_forward_sdpa",
    "supports_sdpa",
    "module_version",
]

ENCODER_MODES = ("none", "sdpa", "bf16", "int8")

# Upper bound for the relative-position bias tensor materialised per attention call (bytes).
_MAX_BIAS_BYTES = 256 * 1024 * 1024


def module_version(module: nn.Module) -> tuple:
    """A cheap token that changes when a module's parameters or buffers are replaced or edited in place
    (an optimiser step, ``load_state_dict``, a LoRA merge or a wrapped layer)."""
    return tuple(
        (name, id(tensor), tensor._version)
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers())
    )


# --------------------------------------------------------------------------------------------- encoder


def supports_sdpa(encoder: nn.Module) -> bool:
    """True when ``encoder`` is segment-anything's ViT with unmodified block and attention classes."""
    if type(encoder) is not ImageEncoderViT:
        return False
    for block in encoder.blocks:
        if type(block) is not Block or type(block.attn) is not EncoderAttention:
            return False
    return True


def sdpa_attention(attn: EncoderAttention, x: torch.Tensor) -> torch.Tensor:
    """SAM encoder attention (B, H, W, C) → (B, H, W, C) through scaled_dot_product_attention.

    The decomposed relative-position term ``q·R_h + q·R_w`` is the additive attention mask; queries
    are processed in chunks so that mask never exceeds ``_MAX_BIAS_BYTES``.
    """
    batch, height, width, _ = x.shape
    heads = attn.num_heads
    tokens = height * width
    qkv = attn.qkv(x).reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # each (B, heads, tokens, head_dim)
    if not attn.use_rel_pos:
        out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
    else:
        rel_h_table = get_rel_pos(height, height, attn.rel_pos_h)
        rel_w_table = get_rel_pos(width, width, attn.rel_pos_w)
        q_grid = q.reshape(batch, heads, height, width, -1)
        rel_h = torch.einsum("bnhwc,hkc->bnhwk", q_grid, rel_h_table).reshape(batch, heads, tokens, height, 1)
        rel_w = torch.einsum("bnhwc,wkc->bnhwk", q_grid, rel_w_table).reshape(batch, heads, tokens, 1, width)
        chunk = max(1, _MAX_BIAS_BYTES // max(1, batch * heads * tokens * q.element_size()))
        if chunk >= tokens:
            bias = (rel_h + rel_w).view(batch, heads, tokens, tokens).to(q.dtype)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attn.scale)
        else:
            out = torch.empty_like(q)
            for start in range(0, tokens, chunk):
                stop = min(tokens, start + chunk)
                bias = (rel_h[:, :, start:stop] + rel_w[:, :, start:stop]).view(batch, heads, stop - start, tokens)
                out[:, :, start:stop] = F.scaled_dot_product_attention(
                    q[:, :, start:stop], k, v, attn_mask=bias.to(q.dtype), scale=attn.scale
                )
    out = out.view(batch, heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(batch, height, width, -1)
    return attn.proj(out)


def encoder_forward_sdpa(encoder: ImageEncoderViT, x: torch.Tensor) -> torch.Tensor:
    """``ImageEncoderViT.forward`` with :func:`sdpa_attention`: (B, 3, S, S) → (B, C, S/16, S/16)."""
    x = encoder.patch_embed(x)
    if encoder.pos_embed is not None:
        x = x + encoder.pos_embed
    for block in encoder.blocks:
        shortcut = x
        x = block.norm1(x)
        if block.window_size > 0:
            height, width = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, block.window_size)
        x = sdpa_attention(block.attn, x)
        if block.window_size > 0:
            x = window_unpartition(x, block.window_size, pad_hw, (height, width))
        x = shortcut + x
        x = x + block.mlp(block.norm2(x))
    return encoder.neck(x.permute(0, 3, 1, 2))


class EncoderRunner:
    """Runs a SAM image encoder in one of :data:`ENCODER_MODES`.

    ``cache_tag`` names the numerics of the embeddings it produces ("fp32" for the exact modes), so
    embeddings from approximate modes never share cache entries with exact ones.
    """

    def __init__(self, sam: nn.Module, mode: str = "sdpa", autocast_dtype: Optional[torch.dtype] = None) -> None:
        if mode not in ENCODER_MODES:
            raise ValueError(f"unknown encoder acceleration {mode!r}: use one of {ENCODER_MODES}")
        self.sam = sam
        self.mode = mode
        self.autocast_dtype = torch.bfloat16 if mode == "bf16" else autocast_dtype
        if mode == "int8" and sam.device.type != "cpu":
            raise ValueError(f"accelerate='int8' runs on the CPU only; the model is on {sam.device}")
        self._quantized: Optional[nn.Module] = None
        self._quantized_version: Optional[tuple] = None

    @property
    def exact(self) -> bool:
        """True when embeddings equal upstream's within fp32 rounding."""
        return self.mode in ("none", "sdpa") and self.autocast_dtype is None

    @property
    def cache_tag(self) -> str:
        if self.mode == "int8":
            return "int8"
        if self.autocast_dtype is not None:
            return str(self.autocast_dtype).replace("torch.", "")
        return "fp32"

    def _encoder(self) -> nn.Module:
        encoder = self.sam.image_encoder
        if self.mode != "int8":
            return encoder
        version = module_version(encoder)
        if self._quantized is None or version != self._quantized_version:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao
                self._quantized = torch.ao.quantization.quantize_dynamic(
                    copy.deepcopy(encoder), {nn.Linear}, dtype=torch.qint8
                )
            self._quantized_version = version
        return self._quantized

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised, padded input → float32 (B, C, h, w) embeddings."""
        encoder = self._encoder()
        autocast = (
            torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            if self.mode == "none" or not supports_sdpa(encoder):
                features = encoder(x)
            else:
                features = encoder_forward_sdpa(encoder, x)
        return features.float()


# --------------------------------------------------------------------------------------------- decoder


@dataclass
class DecoderContext:
    """Per-image tensors for :class:`FastDecoder`, all token-major (1, h*w, C).

    ``src`` is the image embedding plus the no-mask embedding; ``first_k``/``first_v`` are the first
    block's token-to-image key/value projections and ``first_q`` its image-to-token query projection —
    they depend on the image only, so every click on this image reuses them.
    """

    embedding: torch.Tensor  # (1, C, h, w)
    src: Optional[torch.Tensor] = None
    first_k: Optional[torch.Tensor] = None
    first_v: Optional[torch.Tensor] = None
    first_q: Optional[torch.Tensor] = None
    version: Optional[tuple] = None


def _is_k2s2(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.ConvTranspose2d
        and tuple(conv.kernel_size) == (2, 2)
        and tuple(conv.stride) == (2, 2)
        and tuple(conv.padding) == (0, 0)
        and tuple(conv.output_padding) == (0, 0)
        and tuple(conv.dilation) == (1, 1)
        and conv.groups == 1
    )


def _transposed_conv_k2s2(tokens: torch.Tensor, conv: nn.ConvTranspose2d) -> torch.Tensor:
    """ConvTranspose2d(kernel 2, stride 2) on per-pixel rows (P, Cin) → (4P, Cout), sub-pixels unshuffled.

    Each input pixel feeds its own 2x2 output block, so the convolution is one (P, Cin) x (Cin, 4*Cout)
    product; output row ``4p + 2a + b`` is sub-pixel (a, b) of input pixel ``p``. Everything that
    follows in SAM's mask head is per pixel, so the pixel shuffle is left to the final masks.
    """
    c_out = conv.out_channels
    weight = conv.weight.permute(0, 2, 3, 1).reshape(conv.in_channels, 4 * c_out)  # (Cin, a*b*Cout)
    if conv.bias is None:
        out = tokens @ weight
    else:
        out = torch.addmm(conv.bias.repeat(4), tokens, weight)
    return out.view(-1, c_out)


def _shuffle_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-sub-pixel mask values (h*w*16, k) in (i, j, a1, b1, a2, b2) order → (1, k, 4h, 4w) images,
    pixel (4i + 2*a1 + a2, 4j + 2*b1 + b2)."""
    k = masks.shape[-1]
    grid = masks.view(height, width, 2, 2, 2, 2, k).permute(6, 0, 2, 4, 1, 3, 5)
    return grid.reshape(1, k, 4 * height, 4 * width)


class FastDecoder:
    """SAM's mask decoder for one image and one prompt set, equal to ``MaskDecoder`` within fp32 rounding.

    ``usable`` is False when the model's decoder is not segment-anything's standard one; callers then
    use the modules directly.
    """

    def __init__(self, sam: nn.Module) -> None:
        self.sam = sam
        self._pe_cache: Optional[tuple[tuple, torch.Tensor]] = None

    @property
    def usable(self) -> bool:
        """Checked on every use, so a decoder whose modules are later replaced falls back safely."""
        return self._check(self.sam.mask_decoder)

    @staticmethod
    def _check(decoder: nn.Module) -> bool:
        if type(decoder) is not MaskDecoder or type(decoder.transformer) is not TwoWayTransformer:
            return False
        transformer = decoder.transformer
        attentions = [transformer.final_attn_token_to_image]
        for layer in transformer.layers:
            if type(layer) is not TwoWayAttentionBlock:
                return False
            attentions += [layer.self_attn, layer.cross_attn_token_to_image, layer.cross_attn_image_to_token]
        if any(type(a) is not DecoderAttention for a in attentions):
            return False
        up = decoder.output_upscaling
        return (
            isinstance(up, nn.Sequential)
            and len(up) == 5
            and _is_k2s2(up[0])
            and type(up[1]) is LayerNorm2d
            and _is_k2s2(up[3])
        )

    def version(self) -> tuple:
        return module_version(self.sam.mask_decoder) + module_version(self.sam.prompt_encoder)

    def dense_pe(self) -> torch.Tensor:
        """The prompt encoder's dense positional encoding, token-major (1, h*w, C), computed once per weights."""
        token = module_version(self.sam.prompt_encoder.pe_layer)
        if self._pe_cache is None or self._pe_cache[0] != token:
            pe = self.sam.prompt_encoder.get_dense_pe()
            self._pe_cache = (token, pe.flatten(2).transpose(1, 2).contiguous())
        return self._pe_cache[1]

    def context(self, embedding: torch.Tensor, previous: Optional[DecoderContext] = None) -> DecoderContext:
        """Per-image cache for ``embedding`` (1, C, h, w); reuses ``previous`` while the weights are unchanged."""
        version = self.version()
        if previous is not None and previous.embedding is embedding and previous.version == version:
            return previous
        return DecoderContext(embedding=embedding, version=version)

    def _first_block(self, ctx: DecoderContext) -> None:
        decoder = self.sam.mask_decoder
        layer = decoder.transformer.layers[0]
        pe = self.dense_pe()
        no_mask = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, 1, -1)
        src = ctx.embedding.flatten(2).transpose(1, 2) + no_mask
        src_pe = src + pe
        ctx.src = src
        ctx.first_k = layer.cross_attn_token_to_image.k_proj(src_pe)
        ctx.first_v = layer.cross_attn_token_to_image.v_proj(src)
        ctx.first_q = layer.cross_attn_image_to_token.q_proj(src_pe)

    @staticmethod
    def _attend(attn: DecoderAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Multi-head attention on already projected (1, N, C') tensors, then ``out_proj``.

        Image-to-token attention (4096 queries, a handful of keys) computes the scores transposed,
        (keys, queries), so the softmax runs over a short strided axis with long contiguous rows;
        the other directions use scaled_dot_product_attention.
        """
        heads = attn.num_heads
        n_q, n_k = q.shape[1], k.shape[1]
        qh = q.view(1, n_q, heads, -1).transpose(1, 2)
        kh = k.view(1, n_k, heads, -1).transpose(1, 2)
        vh = v.view(1, n_k, heads, -1).transpose(1, 2)
        if n_k < n_q:
            scores_t = torch.matmul(kh, qh.transpose(-2, -1)) / math.sqrt(qh.shape[-1])  # (1, heads, n_k, n_q)
            out = torch.matmul(torch.softmax(scores_t, dim=-2).transpose(-2, -1), vh)
        else:
            out = F.scaled_dot_product_attention(qh, kh, vh)
        return attn.out_proj(out.transpose(1, 2).reshape(1, n_q, -1))

    def _full_attention(self, attn: DecoderAttention, q, k, v) -> torch.Tensor:
        return self._attend(attn, attn.q_proj(q), attn.k_proj(k), attn.v_proj(v))

    def __call__(
        self,
        ctx: DecoderContext,
        sparse: torch.Tensor,
        dense: Optional[torch.Tensor],
        outputs: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode one prompt set.

        ``sparse``: (1, N, C) prompt tokens; ``dense``: (1, C, h, w) mask-prompt embedding, or None for
        "no mask prompt". ``outputs``: indices into the decoder's mask tokens (0 = single-mask output,
        1..3 = multimask outputs). Returns low-res logits (1, len(outputs), 4h, 4w) and the IoU
        predictions of all mask tokens (1, num_mask_tokens).
        """
        decoder = self.sam.mask_decoder
        transformer = decoder.transformer
        embedding = ctx.embedding
        height, width = embedding.shape[-2:]
        pe = self.dense_pe()

        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0).unsqueeze(0)
        point_embedding = torch.cat((output_tokens, sparse), dim=1)  # (1, T, C)

        cached = dense is None
        if cached:
            if ctx.src is None:
                self._first_block(ctx)
            keys = ctx.src
        else:
            keys = (embedding + dense).flatten(2).transpose(1, 2).contiguous()

        queries = point_embedding
        for index, layer in enumerate(transformer.layers):
            if layer.skip_first_layer_pe:
                queries = self._full_attention(layer.self_attn, queries, queries, queries)
            else:
                q = queries + point_embedding
                queries = queries + self._full_attention(layer.self_attn, q, q, queries)
            queries = layer.norm1(queries)

            t2i = layer.cross_attn_token_to_image
            i2t = layer.cross_attn_image_to_token
            q = queries + point_embedding
            if cached and index == 0:
                k_proj, v_proj, keys_pe = ctx.first_k, ctx.first_v, None
            else:
                keys_pe = keys + pe
                k_proj, v_proj = t2i.k_proj(keys_pe), t2i.v_proj(keys)
            queries = layer.norm2(queries + self._attend(t2i, t2i.q_proj(q), k_proj, v_proj))
            queries = layer.norm3(queries + layer.mlp(queries))

            q = queries + point_embedding
            image_q = ctx.first_q if keys_pe is None else i2t.q_proj(keys_pe)
            keys = layer.norm4(keys + self._attend(i2t, image_q, i2t.k_proj(q), i2t.v_proj(queries)))

        final = transformer.final_attn_token_to_image
        q = queries + point_embedding
        k = keys + pe
        queries = transformer.norm_final_attn(queries + self._full_attention(final, q, k, keys))

        iou_pred = decoder.iou_prediction_head(queries[:, 0, :])
        mask_tokens = queries[:, 1 : 1 + decoder.num_mask_tokens, :]

        up = decoder.output_upscaling
        x = _transposed_conv_k2s2(keys[0], up[0])  # (4hw, C/4), sub-pixels unshuffled
        x = F.layer_norm(x, (x.shape[-1],), up[1].weight, up[1].bias, up[1].eps)  # LayerNorm2d over channels
        x = up[2](x)
        x = _transposed_conv_k2s2(x, up[3])  # (16hw, C/8)
        x = up[4](x)
        hyper = torch.stack(
            [decoder.output_hypernetworks_mlps[i](mask_tokens[:, i, :]) for i in outputs], dim=1
        )  # (1, k, C/8)
        masks = _shuffle_masks(x @ hyper[0].transpose(0, 1), height, width)
        return masks, iou_pred
