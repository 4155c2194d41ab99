"""The engine reproduces segment-anything's SamPredictor: geometry, encoder, decoder, post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from segment_anything.utils.transforms import ResizeLongestSide

from napari_vfmseg.engine import Segmenter
from napari_vfmseg.engine.acceleration import FastDecoder, encoder_forward_sdpa, sdpa_attention
from napari_vfmseg.engine.preprocess import Geometry, encoder_input, prepare_image, upscale_logits
from napari_vfmseg.io.windowing import Window, apply_window

from _tiny_models import build_engine_sam, engine_loaded_model, vit_b_loaded_model


def scene(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """RGB uint8 test picture: noisy background, a bright disc, a dark rectangle."""
    rng = np.random.default_rng(seed)
    image = rng.integers(40, 90, size=(rows, cols, 3), dtype=np.uint8)
    rr, cc = np.mgrid[:rows, :cols]
    disc = (rr - rows * 0.4) ** 2 + (cc - cols * 0.35) ** 2 < (min(rows, cols) * 0.2) ** 2
    image[disc] = (220, 200, 180)
    image[int(rows * 0.6) : int(rows * 0.85), int(cols * 0.55) : int(cols * 0.9)] = (10, 30, 20)
    return image


def upstream_call(predictor, points=None, labels=None, box=None, mask_input=None, multimask=True):
    """SamPredictor with napari-order prompts converted by hand ((row, col) → (x, y))."""
    xy = None if points is None else np.asarray(points, dtype=np.float64)[:, ::-1]
    xyxy = None
    if box is not None:
        r0, c0, r1, c1 = box
        xyxy = np.array([c0, r0, c1, r1], dtype=np.float64)
    masks, scores, low = predictor.predict(
        point_coords=xy,
        point_labels=None if labels is None else np.asarray(labels),
        box=xyxy,
        mask_input=None if mask_input is None else mask_input[None],
        multimask_output=multimask,
    )
    masks_logits, _, _ = predictor.predict(
        point_coords=xy,
        point_labels=None if labels is None else np.asarray(labels),
        box=xyxy,
        mask_input=None if mask_input is None else mask_input[None],
        multimask_output=multimask,
        return_logits=True,
    )
    return masks, scores, low, masks_logits


def upstream_candidates(predictor, prompt: dict) -> tuple[np.ndarray, np.ndarray]:
    """(scores (k,), low-res logits (k, L, L)) of every mask ``Segmenter.predict`` returns by default
    for ``prompt``: a box alone gives its own mask, then the three multimask masks."""
    single_point = "box" not in prompt and len(prompt["points"]) == 1
    _, scores, low, _ = upstream_call(predictor, prompt.get("points"), prompt.get("labels"), prompt.get("box"),
                                      multimask=single_point)
    if "box" in prompt and "points" not in prompt:
        _, more_scores, more_low, _ = upstream_call(predictor, None, None, prompt["box"], multimask=True)
        scores, low = np.concatenate([scores, more_scores]), np.concatenate([low, more_low])
    return scores, low


# --------------------------------------------------------------------------------------------- geometry


def test_box_on_non_square_image_maps_to_sam_xy():
    geometry = Geometry.for_shape(300, 600, 1024)  # 300 rows x 600 cols → input 512 x 1024
    assert geometry.input_size == (512, 1024)
    box = geometry.box_to_sam((30, 60, 150, 300))  # (row0, col0, row1, col1)
    np.testing.assert_allclose(box, [60 * 1024 / 600, 30 * 512 / 300, 300 * 1024 / 600, 150 * 512 / 300])
    points = geometry.points_to_sam([(10, 500), (299, 0)])
    np.testing.assert_allclose(points, [[500 * 1024 / 600, 10 * 512 / 300], [0, 299 * 512 / 300]])
    # a box given with its corners swapped is the same box
    np.testing.assert_allclose(geometry.box_to_sam((150, 300, 30, 60)), box)


def test_tall_image_and_medsam_stretch_geometry():
    tall = Geometry.for_shape(600, 300, 1024)
    assert tall.input_size == (1024, 512)
    np.testing.assert_allclose(tall.points_to_sam([(600 - 1, 299)]), [[299 * 512 / 300, 599 * 1024 / 600]])
    stretched = Geometry.for_shape(300, 600, 1024, stretch=True)
    assert stretched.input_size == (1024, 1024)
    np.testing.assert_allclose(stretched.box_to_sam((30, 60, 150, 300)), [60 * 1024 / 600, 30 * 1024 / 300, 512, 512])


def test_grey_resize_equals_rgb_resize_of_replicated_slice():
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, size=(123, 77), dtype=np.uint8)
    prepared = prepare_image(grey, None, 256)
    reference = ResizeLongestSide(256).apply_image(np.repeat(grey[..., None], 3, axis=2))
    for channel in range(3):
        np.testing.assert_array_equal(prepared.pixels, reference[..., channel])
    sam = build_engine_sam()
    ours = encoder_input([prepared], sam, torch.device("cpu"))
    upstream = sam.preprocess(torch.as_tensor(reference).permute(2, 0, 1).contiguous()[None])
    assert torch.equal(ours, upstream)


def test_windowed_slice_is_what_the_encoder_sees():
    slice_hu = np.linspace(-1000, 1000, 64 * 64, dtype=np.float32).reshape(64, 64).astype(np.int16)
    window = Window(40.0, 400.0)
    prepared = prepare_image(slice_hu, window, 256)
    expected = ResizeLongestSide(256).apply_image(apply_window(slice_hu, window))
    np.testing.assert_array_equal(prepared.pixels, expected)


@pytest.mark.parametrize("size", [(300, 600), (600, 300), (257, 1000), (1024, 1024), (50, 70), (13, 9)])
def test_upscale_logits_equals_sam_postprocess(size):
    sam = build_engine_sam()
    geometry = Geometry.for_shape(size[0], size[1], sam.image_encoder.img_size)
    low = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    ours = upscale_logits(low, geometry)
    upstream = sam.postprocess_masks(low, geometry.input_size, geometry.original_size)
    assert ours.shape == upstream.shape == (1, 3, *size)
    torch.testing.assert_close(ours, upstream, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------- modules


def test_sdpa_attention_equals_upstream_attention():
    sam = build_engine_sam(seed=4)
    torch.manual_seed(5)
    with torch.inference_mode():
        for block in sam.image_encoder.blocks:
            x = torch.randn(2, 16, 16, 48)
            if block.window_size:
                from segment_anything.modeling.image_encoder import window_partition

                x, _ = window_partition(x, block.window_size)
            torch.testing.assert_close(sdpa_attention(block.attn, x), block.attn(x), rtol=1e-5, atol=1e-5)
        image = torch.randn(1, 3, 256, 256)
        upstream = sam.image_encoder(image)
        ours = encoder_forward_sdpa(sam.image_encoder, image)
    assert upstream.abs().max() > 0.5  # the comparison is not between two zero maps
    torch.testing.assert_close(ours, upstream, rtol=1e-4, atol=1e-4)


def test_fast_decoder_equals_mask_decoder_with_and_without_mask_prompt():
    sam = build_engine_sam(seed=6)
    decoder = FastDecoder(sam)
    assert decoder.usable
    torch.manual_seed(7)
    embedding = torch.randn(1, 32, 16, 16)
    coords = torch.tensor([[[40.0, 100.0], [200.0, 30.0]]])
    labels = torch.tensor([[1, 0]])
    mask = torch.randn(1, 1, 64, 64)
    with torch.inference_mode():
        context = decoder.context(embedding)
        for mask_prompt in (None, mask):
            sparse, dense = sam.prompt_encoder((coords, labels), None, mask_prompt)
            for multimask, outputs in ((True, [1, 2, 3]), (False, [0])):
                low_up, iou_up = sam.mask_decoder(embedding, sam.prompt_encoder.get_dense_pe(), sparse, dense, multimask)
                low, iou = decoder(context, sparse, None if mask_prompt is None else dense, outputs)
                torch.testing.assert_close(low, low_up, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(iou[:, outputs], iou_up, rtol=1e-5, atol=1e-5)


def test_fast_decoder_cache_follows_weight_changes():
    model = engine_loaded_model(seed=8)
    image = scene(90, 120)
    segmenter = Segmenter(model)
    segmenter.set_image(image)
    before = segmenter.predict(points=[(40, 40)], point_labels=[1])
    with torch.no_grad():  # an optimiser step edits decoder weights in place
        layer = model.sam.mask_decoder.transformer.layers[0]
        layer.cross_attn_token_to_image.k_proj.weight.add_(0.3)
        layer.cross_attn_image_to_token.q_proj.weight.mul_(-1.0)
    after = segmenter.predict(points=[(40, 40)], point_labels=[1])
    predictor = SamPredictor(model.sam)
    predictor.set_image(image)
    _, scores, low, _ = upstream_call(predictor, [(40, 40)], [1], multimask=True)
    assert not np.allclose(before.candidate_logits, after.candidate_logits, atol=1e-3)
    np.testing.assert_allclose(after.candidate_logits, low, atol=1e-4)
    np.testing.assert_allclose(after.candidate_scores, scores, atol=1e-5)


# --------------------------------------------------------------------------------------------- end to end, tiny


# Prompts as fractions of (rows, cols), scaled to each image.
PROMPTS = {
    "one point": dict(points=[(0.4, 0.35)], labels=[1]),
    "positive and negative points": dict(points=[(0.4, 0.35), (0.7, 0.7)], labels=[1, 0]),
    "box": dict(box=(0.2, 0.15, 0.6, 0.55)),
    "box and negative point": dict(points=[(0.45, 0.5)], labels=[0], box=(0.2, 0.15, 0.6, 0.55)),
}


def scaled(prompt: dict, shape: tuple[int, int]) -> dict:
    rows, cols = shape
    out = dict(prompt)
    if "points" in prompt:
        out["points"] = [(round(r * rows), round(c * cols)) for r, c in prompt["points"]]
    if "box" in prompt:
        r0, c0, r1, c1 = prompt["box"]
        out["box"] = (round(r0 * rows), round(c0 * cols), round(r1 * rows), round(c1 * cols))
    return out


@pytest.mark.parametrize("shape", [(96, 128), (128, 72)])
@pytest.mark.parametrize("accelerate", ["sdpa", "none"])
@pytest.mark.parametrize("name", list(PROMPTS))
def test_tiny_model_matches_sam_predictor(name, accelerate, shape):
    model = engine_loaded_model(seed=2)
    image = scene(*shape, seed=3)
    predictor = SamPredictor(model.sam)
    predictor.set_image(image)
    segmenter = Segmenter(model, accelerate=accelerate)
    segmenter.set_image(image)
    prompt = scaled(PROMPTS[name], shape)
    single_point = "box" not in prompt and len(prompt["points"]) == 1
    ours = segmenter.predict(points=prompt.get("points"), point_labels=prompt.get("labels"), box=prompt.get("box"))
    masks, scores, low, logits = upstream_call(predictor, prompt.get("points"), prompt.get("labels"), prompt.get("box"), multimask=single_point)
    best = int(np.argmax(scores)) if single_point else 0
    assert ours.multimask == single_point and ours.index == best
    assert 0.001 < masks[best].mean() < 0.999  # a mask with both classes, so agreement means something
    assert (ours.mask == masks[best]).mean() >= 0.999
    assert abs(ours.score - scores[best]) < 1e-4
    all_scores, all_low = upstream_candidates(predictor, prompt)
    np.testing.assert_allclose(ours.candidate_logits, all_low, atol=1e-4)
    np.testing.assert_allclose(ours.candidate_scores, all_scores, atol=1e-4)

    # correction click: feed the previous low-res logits back
    again = segmenter.predict(points=prompt.get("points"), point_labels=prompt.get("labels"), box=prompt.get("box"), mask_input=ours.logits)
    masks2, scores2, low2, _ = upstream_call(predictor, prompt.get("points"), prompt.get("labels"), prompt.get("box"), mask_input=ours.logits, multimask=False)
    assert (again.mask == masks2[0]).mean() >= 0.999
    assert abs(again.score - scores2[0]) < 1e-4
    np.testing.assert_allclose(again.logits, low2[0], atol=1e-4)


# --------------------------------------------------------------------------------------------- end to end, ViT-B


@pytest.fixture(scope="module")
def vit_b_pair():
    """Random-init ViT-B (seeded): one image embedded by upstream SamPredictor and by the engine."""
    model = vit_b_loaded_model(seed=0)
    image = scene(384, 512, seed=11)
    predictor = SamPredictor(model.sam)
    predictor.set_image(image)
    segmenter = Segmenter(model)
    segmenter.set_image(image)
    return predictor, segmenter


VIT_B_PROMPTS = [
    dict(points=[(150, 180)], labels=[1]),
    dict(points=[(150, 180), (300, 400)], labels=[1, 0]),
    dict(points=[(30, 30), (150, 180), (260, 380)], labels=[0, 1, 0]),
    dict(box=(70, 90, 230, 270)),
    dict(points=[(150, 180)], labels=[1], box=(70, 90, 230, 270)),
]


def test_vit_b_embedding_matches_sam_predictor(vit_b_pair):
    predictor, segmenter = vit_b_pair
    upstream = predictor.features[0]
    ours = segmenter.embedding().features
    assert segmenter.encoder_calls == 1
    assert upstream.abs().max() > 0.5
    torch.testing.assert_close(ours, upstream, rtol=1e-3, atol=1e-3)
    cosine = torch.nn.functional.cosine_similarity(ours.flatten(), upstream.flatten(), dim=0)
    assert cosine > 0.99999


@pytest.mark.parametrize("index", range(len(VIT_B_PROMPTS)))
def test_vit_b_masks_and_scores_match_sam_predictor(vit_b_pair, index):
    predictor, segmenter = vit_b_pair
    prompt = VIT_B_PROMPTS[index]
    single_point = "box" not in prompt and len(prompt["points"]) == 1
    ours = segmenter.predict(points=prompt.get("points"), point_labels=prompt.get("labels"), box=prompt.get("box"))
    masks, scores, low, logits = upstream_call(predictor, prompt.get("points"), prompt.get("labels"), prompt.get("box"), multimask=single_point)
    best = int(np.argmax(scores)) if single_point else 0
    assert ours.index == best
    assert abs(ours.score - scores[best]) < 1e-4
    # The logits can be compared whatever the masks look like, so this part always has teeth.
    all_scores, all_low = upstream_candidates(predictor, prompt)
    np.testing.assert_allclose(ours.candidate_logits, all_low, atol=2e-3)
    np.testing.assert_allclose(ours.candidate_scores, all_scores, atol=1e-4)
    fraction = masks[best].mean()
    if 0.001 < fraction < 0.999:
        assert (ours.mask == masks[best]).mean() >= 0.999
    else:  # random weights gave a one-class mask: compare at the median logit instead
        threshold = float(np.median(logits[best]))
        ours_logits = upscale_logits(
            torch.as_tensor(ours.candidate_logits[best][None, None]), segmenter._target_item(None).geometry
        )[0, 0].numpy()
        assert ((ours_logits > threshold) == (logits[best] > threshold)).mean() >= 0.999

    again = segmenter.predict(points=prompt.get("points"), point_labels=prompt.get("labels"), box=prompt.get("box"), mask_input=low[best])
    masks2, scores2, low2, _ = upstream_call(predictor, prompt.get("points"), prompt.get("labels"), prompt.get("box"), mask_input=low[best], multimask=False)
    assert abs(again.score - scores2[0]) < 1e-4
    np.testing.assert_allclose(again.logits, low2[0], atol=2e-3)
    assert (again.mask == masks2[0]).mean() >= 0.999


def test_medsam_convention_follows_medsam_inference_recipe():
    from skimage.transform import resize

    rng = np.random.default_rng(12)
    grey = rng.integers(20, 200, size=(90, 150), dtype=np.uint8)
    prepared = prepare_image(grey, None, 256, preprocess="medsam")
    rgb = np.repeat(grey[..., None], 3, axis=2)
    reference = resize(rgb, (256, 256), order=3, preserve_range=True, anti_aliasing=True).astype(np.uint8)
    np.testing.assert_array_equal(prepared.pixels, reference[..., 0])
    tensor = encoder_input([prepared], build_engine_sam(), torch.device("cpu"))
    scaled = (reference - reference.min()) / max(int(reference.max()) - int(reference.min()), 1e-8)
    torch.testing.assert_close(tensor[0], torch.as_tensor(scaled, dtype=torch.float32).permute(2, 0, 1))

    model = engine_loaded_model(seed=13)
    model.info["preprocess"] = "medsam"
    segmenter = Segmenter(model)
    segmenter.set_image(grey)
    prediction = segmenter.predict(box=(10, 20, 60, 120))
    assert prediction.mask.shape == (90, 150)
    # MedSAM maps the box by stretching each axis to 256 and upsamples logits straight to the slice
    with torch.inference_mode():
        embedding = model.sam.image_encoder(tensor)
        box = torch.tensor([[20 * 256 / 150, 10 * 256 / 90, 120 * 256 / 150, 60 * 256 / 90]])
        sparse, dense = model.sam.prompt_encoder(None, box, None)
        low, iou = model.sam.mask_decoder(embedding, model.sam.prompt_encoder.get_dense_pe(), sparse, dense, False)
        logits = torch.nn.functional.interpolate(low, (90, 150), mode="bilinear", align_corners=False)
    assert abs(prediction.score - float(iou[0, 0])) < 1e-4
    assert (prediction.mask == (logits[0, 0] > 0).numpy()).mean() >= 0.999


def test_a_non_standard_decoder_falls_back_to_its_own_modules():
    from segment_anything.modeling.transformer import Attention

    class LoggingAttention(Attention):
        calls = 0

        def forward(self, q, k, v):
            LoggingAttention.calls += 1
            return super().forward(q, k, v)

    model = engine_loaded_model(seed=14)
    image = scene(64, 80, seed=15)
    segmenter = Segmenter(model)
    segmenter.set_image(image)
    segmenter.predict(points=[(20, 30)])  # fast path first, its per-image cache now exists
    final = model.sam.mask_decoder.transformer.final_attn_token_to_image
    replacement = LoggingAttention(final.embedding_dim, final.num_heads, downsample_rate=2)
    replacement.load_state_dict(final.state_dict())
    with torch.no_grad():
        replacement.out_proj.weight.mul_(2.0)  # a different decoder: stale caches would show
    model.sam.mask_decoder.transformer.final_attn_token_to_image = replacement
    ours = segmenter.predict(points=[(20, 30)])
    assert LoggingAttention.calls == 1
    predictor = SamPredictor(model.sam)
    predictor.set_image(image)
    _, scores, low, _ = upstream_call(predictor, [(20, 30)], [1], multimask=True)
    np.testing.assert_allclose(ours.candidate_logits, low, atol=1e-4)
    np.testing.assert_allclose(ours.candidate_scores, scores, atol=1e-5)
