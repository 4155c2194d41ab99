"""Batched pre-training pieces: paired decoding, prompt simulation, the seeded synthetic stream."""

from __future__ import annotations

import torch

from napari_vfmseg.models.builtin import BuiltinConfig, build_builtin_sam
from napari_vfmseg.training.batched import (
    BatchPromptConfig,
    decode_paired,
    encode_prompts,
    jittered_boxes,
    pretrain_loss,
    sample_points,
    tight_boxes,
)
from napari_vfmseg.training.synth_stream import StreamConfig, batch_loader, step_batch

TINY = BuiltinConfig(img_size=64, widths=(8, 8, 16, 16), depths=(1, 1, 1), embed_dim=32,
                     decoder_depth=1, decoder_mlp_dim=64, decoder_heads=2)


def _squares() -> torch.Tensor:
    masks = torch.zeros(3, 64, 64, dtype=torch.bool)
    masks[0, 10:20, 30:41] = True
    masks[1, 0:64, 5:6] = True
    masks[2, 40:60, 40:50] = True
    return masks


def test_paired_decoding_matches_sam_decoder_per_image():
    torch.manual_seed(0)
    sam = build_builtin_sam(TINY).eval()
    embeddings = torch.randn(2, 32, 8, 8)
    points = torch.tensor([[[5.0, 9.0]], [[40.0, 12.0]], [[30.0, 30.0]]])
    labels = torch.ones(3, 1, dtype=torch.int64)
    owner = torch.tensor([0, 0, 1])
    with torch.no_grad():
        sparse, dense = encode_prompts(sam, points, labels, None, None)
        low, iou = decode_paired(sam, embeddings[owner], sparse, dense, multimask=True)
        for i in range(3):
            # upstream: SAM's (x, y) order, one image embedding per call
            sp, de = sam.prompt_encoder(points=(points[i : i + 1].flip(-1), labels[i : i + 1]), boxes=None, masks=None)
            ref_low, ref_iou = sam.mask_decoder(embeddings[owner[i] : owner[i] + 1], sam.prompt_encoder.get_dense_pe(), sp, de, True)
            torch.testing.assert_close(low[i : i + 1], ref_low, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(iou[i : i + 1], ref_iou, atol=1e-5, rtol=1e-4)
    assert low.shape == (3, 3, 32, 32) and iou.shape == (3, 3)


def test_boxes_and_points_follow_the_masks():
    masks = _squares()
    assert tight_boxes(masks).tolist() == [[10, 30, 19, 40], [0, 5, 63, 5], [40, 40, 59, 49]]
    assert tight_boxes(torch.zeros(1, 64, 64, dtype=torch.bool)).tolist() == [[0, 0, 0, 0]]
    generator = torch.Generator().manual_seed(1)
    jittered = jittered_boxes(masks, BatchPromptConfig(box_jitter=0.1, box_jitter_max_px=3), generator)
    assert (jittered >= 0).all() and (jittered <= 63).all()
    assert ((jittered - tight_boxes(masks)).abs() < 20).all()   # 3 px std: never wildly off
    region = torch.cat([masks, torch.zeros(1, 64, 64, dtype=torch.bool)])
    for _ in range(5):
        points, found = sample_points(region, generator)
        assert found.tolist() == [True, True, True, False]
        rows, cols = points[:3, 0].long(), points[:3, 1].long()
        assert region[torch.arange(3), rows, cols].all()


def test_pretrain_loss_trains_every_part_and_skips_empty_targets():
    torch.manual_seed(0)
    sam = build_builtin_sam(TINY)
    images, targets = step_batch(StreamConfig(size=64, label_maps=2, renders=1, objects=3, seed=4), step=0)
    targets[1, 2] = False  # an empty target is skipped, not a NaN
    embeddings = sam.image_encoder(sam.preprocess(images[:, None].expand(-1, 3, -1, -1) * 255))
    loss = pretrain_loss(sam, embeddings, targets, BatchPromptConfig(corrections=2, correction_probability=1.0),
                         torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    for part in (sam.image_encoder, sam.prompt_encoder.point_embeddings, sam.mask_decoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_stream_is_seeded_by_step_and_the_same_in_worker_processes():
    cfg = StreamConfig(size=64, label_maps=2, renders=2, objects=3, seed=7)
    images, targets = step_batch(cfg, step=3)
    assert images.shape == (4, 64, 64) and targets.shape == (4, 3, 64, 64)
    assert targets.flatten(2).any(dim=2).all()  # every target has pixels
    again, _ = step_batch(cfg, step=3)
    other, _ = step_batch(cfg, step=4)
    assert torch.equal(images, again) and not torch.equal(images, other)
    here = [b[0] for b in batch_loader(cfg, 2, 5, workers=0)]
    there = [b[0] for b in batch_loader(cfg, 2, 5, workers=2)]
    assert len(here) == len(there) == 3
    assert all(torch.equal(a, b) for a, b in zip(here, there))
    assert torch.equal(here[1], images)
