"""Fine-tuning cost and quality: step time and peak memory per mode, and decoder vs encoder-LoRA
on a shifted domain.

Part 1 (cost). For each model and mode (``decoder``, ``encoder-lora``, ``full``) a fresh
subprocess builds the random-initialised network (costs do not depend on the weights), makes a few
synthetic labelled planes at the model's input size, and runs :class:`Trainer` without validation.
It reports the seconds per optimiser step (after the first), the one-off embedding time of decoder
mode, the trainable parameters, and the process's peak resident memory (``ru_maxrss``; on CUDA also
``torch.cuda.max_memory_allocated``). Models: ``vit_b`` (SAM ViT-B, 1024 px), ``builtin``
(napari-vfmseg's convolutional built-in architecture, 256 px) and ``tiny`` (a 2-block, 64-wide ViT
at 128 px, the test-suite size).

Part 2 (quality, ``--quality``). A tiny ViT SAM is first trained fully on domain A (bright
ellipsoids on a dark, smooth background). It is then adapted to domain B (dark objects on a
brighter, textured and blurred background) in each mode at three learning rates, with the same
number of steps, and the validation Dice on held-out plane blocks of B is reported before and
after, with wall time.

    python benchmarks/bench_training.py                  # part 1, all models (vit_b takes ~3 min on 2 cores)
    python benchmarks/bench_training.py --models tiny,builtin --quality
    python benchmarks/bench_training.py --quality-only

Prints a table and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from functools import partial

import numpy as np
import torch

MODES = ("decoder", "encoder-lora", "full")


# ------------------------------------------------------------------------------------------- models


def build_model(name: str, seed: int = 0):
    """A random-initialised LoadedModel: ``vit_b``, ``builtin`` or ``tiny``."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    from napari_vfmseg.models.base import LoadedModel, fingerprint_state_dict

    torch.manual_seed(seed)
    if name == "vit_b":
        from segment_anything import sam_model_registry

        sam = sam_model_registry["vit_b"](checkpoint=None)
    elif name == "builtin":
        from napari_vfmseg.models.builtin import build_builtin_sam

        sam = build_builtin_sam()
    elif name == "tiny":
        sam = Sam(
            image_encoder=ImageEncoderViT(img_size=128, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                                          mlp_ratio=2.0, out_chans=32,
                                          norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
                                          window_size=4, global_attn_indexes=(1,)),
            prompt_encoder=PromptEncoder(embed_dim=32, image_embedding_size=(16, 16), input_image_size=(128, 128),
                                         mask_in_chans=8),
            mask_decoder=MaskDecoder(num_multimask_outputs=3,
                                     transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
                                     transformer_dim=32, iou_head_depth=2, iou_head_hidden_dim=32),
        )
    else:
        raise ValueError(f"unknown benchmark model {name!r}")
    sam.eval()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sam.to(device)
    return LoadedModel(sam=sam, name=name, arch=name, device=device,
                       fingerprint=fingerprint_state_dict(sam.state_dict()))


# --------------------------------------------------------------------------------------------- data


def synthetic_volume(planes: int, size: int, seed: int, domain: str = "A"):
    """(plane, row, col) float32 image and int32 labels with two ellipsoid-like objects.

    Domain A: bright objects on a dark, smooth background. Domain B: dark objects on a brighter
    background with coarse texture, blur and stronger noise (a shift in appearance, same shapes).
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size].astype(np.float32)
    labels = np.zeros((planes, size, size), np.int32)
    specs = [(0.35, 0.35, 0.22, 0.16), (0.65, 0.62, 0.14, 0.2)]
    for p in range(planes):
        phase = np.sin(np.pi * (p + 1) / (planes + 1))
        for label, (r0, c0, ar, ac) in enumerate(specs, start=1):
            rr, rc = ar * size * (0.5 + 0.5 * phase), ac * size * (0.5 + 0.5 * phase)
            inside = ((rows - r0 * size - 2 * np.sin(p / 3)) / rr) ** 2 + ((cols - c0 * size) / rc) ** 2 <= 1
            labels[p][inside] = label
    if domain == "A":
        image = 40.0 + 140.0 * (labels == 1) + 80.0 * (labels == 2) + rng.normal(0, 12, labels.shape)
    else:
        texture = ndimage.gaussian_filter(rng.normal(0, 1, labels.shape), (0, 3, 3)) * 120
        image = 200.0 - 110.0 * (labels == 1) - 60.0 * (labels == 2) + texture + rng.normal(0, 20, labels.shape)
        image = ndimage.gaussian_filter(image, (0, 1.2, 1.2))
    return image.astype(np.float32), labels


# ---------------------------------------------------------------------------------------- part 1


def measure_one(model_name: str, mode: str, steps: int) -> dict:
    """Train ``steps`` steps of ``mode`` on ``model_name``; timing and memory as a dict."""
    from napari_vfmseg.models.lora import count_parameters
    from napari_vfmseg.training.data import pairs_from_volume
    from napari_vfmseg.training.trainer import TrainConfig, Trainer

    model = build_model(model_name)
    size = model.image_size
    # vit_b on a CPU embeds a plane in tens of seconds: one plane is enough to time its steps.
    image, labels = synthetic_volume(planes=1 if model_name == "vit_b" else 4, size=size, seed=0)
    pairs = pairs_from_volume(image, labels, window=(100, 300))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    config = TrainConfig(mode=mode, steps=steps, images_per_step=1 if model_name == "vit_b" else 4,
                         prompts_per_image=2, correction_clicks=2, lr=1e-4, augment=mode != "decoder")
    stamps: list[float] = []
    started = time.perf_counter()
    trainer = Trainer(model, pairs, [], config, progress=lambda p: stamps.append(time.perf_counter()))
    result = trainer.fit()
    total = time.perf_counter() - started
    first = stamps[0] - started
    per_step = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else first
    out = {
        "model": model_name,
        "mode": mode,
        "image_size": size,
        "images_per_step": config.images_per_step,
        "prompts_per_image": config.prompts_per_image,
        "correction_clicks": config.correction_clicks,
        "steps": result.steps_done,
        "seconds_first_step": round(first, 3),        # includes the one-off embedding in decoder mode
        "seconds_per_step": round(per_step, 3),
        "seconds_total": round(total, 2),
        "trainable_parameters": result.parameters.trainable,
        "trainable_share": round(result.parameters.share, 5),
        "total_parameters": count_parameters(model.sam).total,
        "rss_before_training_mib": round(rss_before, 1),   # model, data and imports
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": str(model.device),
        "threads": torch.get_num_threads(),
    }
    if model.device.type == "cuda":
        out["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def run_cost(models: list[str], steps: dict[str, int]) -> list[dict]:
    rows = []
    for model_name in models:
        for mode in MODES:
            n = steps.get(f"{model_name}:{mode}", steps.get(model_name, 6))
            cmd = [sys.executable, os.path.abspath(__file__), "--one", model_name, mode, str(n)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{model_name}/{mode} failed:\n{done.stderr[-2000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            added = row["peak_rss_mib"] - row["rss_before_training_mib"]
            print(f"{model_name:8} {mode:13} {row['seconds_per_step']:8.3f} s/step"
                  f"  first {row['seconds_first_step']:8.2f} s"
                  f"  trainable {row['trainable_parameters']:>11,} ({100 * row['trainable_share']:6.2f}%)"
                  f"  peak RSS {row['peak_rss_mib']:8.1f} MiB (+{added:.0f})",
                  flush=True)
    return rows


# ---------------------------------------------------------------------------------------- part 2


def run_quality(steps: int = 300, pretrain_steps: int = 300) -> list[dict]:
    from napari_vfmseg.training.adapters import remove_adapter
    from napari_vfmseg.training.data import pairs_from_volume, split_by_plane_blocks
    from napari_vfmseg.training.trainer import TrainConfig, fine_tune

    # No image augmentation in any mode: decoder mode cannot have it (fixed embeddings), so only the
    # trainable part differs between the runs.
    fast = dict(images_per_step=2, prompts_per_image=2, correction_clicks=1, early_stop_patience=0, augment=False)
    image_a, labels_a = synthetic_volume(24, 96, seed=0, domain="A")
    image_b, labels_b = synthetic_volume(24, 96, seed=1, domain="B")
    pairs_a = pairs_from_volume(image_a, labels_a, window=(110, 260))
    pairs_b = pairs_from_volume(image_b, labels_b, window=(110, 260))
    train_a, val_a = split_by_plane_blocks(pairs_a, 0.25, block_size=4)
    train_b, val_b = split_by_plane_blocks(pairs_b, 0.25, block_size=4)

    # A "pretrained" base: every weight trained on domain A, then frozen into the base.
    base = build_model("tiny")
    pre = fine_tune(base, train_a, val_a, TrainConfig(mode="full", steps=pretrain_steps, lr=3e-3, val_every=50, **fast))
    trained = {k: v.clone() for k, v in base.sam.state_dict().items()}
    rows = [{"experiment": "pretrain on A (full)", "val_dice_before": pre.val_dice_before,
             "val_dice_after": pre.val_dice_after, "seconds": round(pre.seconds, 1)}]
    print(f"pretrained on domain A: val Dice {pre.val_dice_before:.3f} → {pre.val_dice_after:.3f} "
          f"({pre.seconds:.1f} s)", flush=True)

    from napari_vfmseg.models.base import fingerprint_state_dict

    # Each mode at each learning rate (the best rate differs between modes); same steps, same data.
    for mode in MODES:
        for lr in (1e-3, 3e-3, 1e-2):
            model = build_model("tiny")
            remove_adapter(model)
            model.sam.load_state_dict(trained)
            model.fingerprint = fingerprint_state_dict(model.sam.state_dict())
            result = fine_tune(model, train_b, val_b, TrainConfig(mode=mode, steps=steps, lr=lr, val_every=50, **fast))
            row = {"experiment": f"adapt to B ({mode}, lr {lr:g})", "mode": mode, "lr": lr, "steps": result.steps_done,
                   "val_dice_before": round(result.val_dice_before, 4),
                   "val_dice_after": round(result.val_dice_after, 4), "seconds": round(result.seconds, 1),
                   "trainable_parameters": result.parameters.trainable,
                   "trainable_share": round(result.parameters.share, 4)}
            rows.append(row)
            print(f"domain B, {mode:13} lr {lr:<6g}: val Dice {row['val_dice_before']:.3f} → "
                  f"{row['val_dice_after']:.3f} in {row['seconds']:.1f} s, {row['trainable_parameters']:,} trainable",
                  flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,builtin,vit_b", help="comma-separated: tiny, builtin, vit_b")
    parser.add_argument("--quality", action="store_true", help="also run the domain-shift comparison")
    parser.add_argument("--quality-only", action="store_true", help="only the domain-shift comparison")
    parser.add_argument("--quality-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 avoids oversubscription on a busy machine")
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "MODE", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["VFMSEG_BENCH_THREADS"] = str(args.threads)
    elif os.environ.get("VFMSEG_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["VFMSEG_BENCH_THREADS"]))
    if args.one:
        print(json.dumps(measure_one(args.one[0], args.one[1], int(args.one[2]))))
        return 0
    figures: dict = {"torch": torch.__version__, "cpu_count": os.cpu_count(),
                     "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    if not args.quality_only:
        # vit_b on a CPU: 1 decoder step takes about a second, an encoder step about a minute.
        steps = {"tiny": 8, "builtin": 6, "vit_b:decoder": 4, "vit_b:encoder-lora": 1, "vit_b:full": 1}
        if torch.cuda.is_available():
            steps.update({"vit_b:encoder-lora": 6, "vit_b:full": 6})
        figures["cost"] = run_cost([m.strip() for m in args.models.split(",") if m.strip()], steps)
    if args.quality or args.quality_only:
        figures["quality"] = run_quality(args.quality_steps)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
