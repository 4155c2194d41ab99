"""``vfmseg finetune``: adapt a model to a labelled volume and save the adapter."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on a labelled volume and save a safetensors adapter",
        description=(
            "Train on the planes of VOLUME along --axis with the objects of LABELS (every label id on "
            "every plane with at least --min-pixels pixels), validating on held-out blocks of "
            "neighbouring planes. Mode 'decoder' trains the prompt encoder and mask decoder on cached "
            "embeddings (fast); 'encoder-lora' adds LoRA to the image encoder (stronger on an unusual "
            "domain, slower: every step runs the encoder); 'full' trains every weight. Prints the "
            "validation Dice before and after and writes the adapter to --out."
        ),
    )
    parser.add_argument("volume", metavar="VOLUME", help="image file or DICOM folder")
    parser.add_argument("labels", metavar="LABELS", help="label map with the same shape as VOLUME")
    parser.add_argument("--out", required=True, metavar="ADAPTER", help="adapter file to write (.safetensors)")
    parser.add_argument("--model", default=None, help="registry name or checkpoint path (default: official weights present on this machine, else the built-in model)")
    parser.add_argument("--mode", default="decoder", choices=("decoder", "encoder-lora", "full"),
                        help="what trains (default: decoder)")
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank (encoder-lora, or --decoder-lora; default 4)")
    parser.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: equal to the rank)")
    parser.add_argument("--decoder-lora", action="store_true",
                        help="put LoRA on the mask decoder's attention instead of training its transformer fully")
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps (default 200)")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    parser.add_argument("--images-per-step", type=int, default=4, help="planes per step (default 4)")
    parser.add_argument("--prompts-per-image", type=int, default=4, help="objects per plane and step (default 4)")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (default 1)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of planes held out (default 0.2)")
    parser.add_argument("--block-size", type=int, default=8, help="neighbouring planes per split block (default 8)")
    parser.add_argument("--val-every", type=int, default=25, help="steps between validations (default 25)")
    parser.add_argument("--patience", type=int, default=4,
                        help="stop after this many validations without improvement (0: never; default 4)")
    parser.add_argument("--min-pixels", type=int, default=20, help="ignore smaller objects (default 20)")
    parser.add_argument("--axis", type=int, default=0, choices=(0, 1, 2), help="plane axis (default 0)")
    parser.add_argument("--window", default="auto",
                        help="intensity window: auto, percentile, a CT preset (soft_tissue, lung, bone, "
                             "brain) or LEVEL,WIDTH")
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    parser.add_argument("--cache-dir", default=None, help="embedding cache folder to reuse (decoder mode)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a progress bar")
    parser.set_defaults(func=run)


def _read_pair(volume_path: str, labels_path: str):
    from napari_vfmseg.cli import UserError
    from napari_vfmseg.io import read_volume

    volume = read_volume(volume_path)
    labels = read_volume(labels_path)
    if getattr(volume, "is_rgb", False):
        raise UserError(f"{volume_path}: colour images are not supported for training; use a grey volume")
    if volume.array.shape != labels.array.shape:
        raise UserError(
            f"{labels_path}: label shape {labels.array.shape} differs from image shape "
            f"{volume.array.shape} of {volume_path}"
        )
    return volume, labels


def run(args: argparse.Namespace) -> int:
    from napari_vfmseg.cli import model_argument
    from pathlib import Path

    from napari_vfmseg.cli import UserError
    from napari_vfmseg.cli.embed import parse_window
    from napari_vfmseg.models import load_model
    from napari_vfmseg.models.lora import LoRAConfig
    from napari_vfmseg.training.data import count_objects, pairs_from_volume, split_by_plane_blocks
    from napari_vfmseg.training.trainer import TrainConfig, Trainer

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: the adapter file must end in .safetensors")
    if args.rank < 1 or args.steps < 1:
        raise UserError("--rank and --steps must be >= 1")
    window = parse_window(args.window)
    volume, labels = _read_pair(args.volume, args.labels)
    modality = getattr(volume, "modality", None)
    pairs = pairs_from_volume(volume.array, labels.array, axis=args.axis, window=window, min_pixels=args.min_pixels,
                              source=Path(args.volume).name, modality=modality)
    if not pairs:
        raise UserError(f"{args.labels}: no plane along axis {args.axis} has an object of at least "
                        f"{args.min_pixels} pixels")
    train, val = split_by_plane_blocks(pairs, val_fraction=args.val_fraction, block_size=args.block_size,
                                       seed=args.seed)
    if not train:
        raise UserError(f"{args.labels}: too few labelled planes to keep any for training; lower --val-fraction")
    if not val:
        print("warning: too few labelled planes for a validation split; training without validation",
              file=sys.stderr)

    alpha = float(args.alpha) if args.alpha is not None else float(args.rank)
    lora = None
    if args.mode == "encoder-lora" or args.decoder_lora:
        lora = LoRAConfig(rank=args.rank, alpha=alpha, encoder_targets=(),
                          decoder_targets=("q_proj", "v_proj") if args.decoder_lora else ())
    config = TrainConfig(
        mode=args.mode, lora=lora, steps=args.steps, lr=args.lr, images_per_step=args.images_per_step,
        prompts_per_image=args.prompts_per_image, grad_accum=args.grad_accum, val_every=args.val_every,
        early_stop_patience=args.patience, min_pixels=args.min_pixels, seed=args.seed,
    )
    model = load_model(model_argument(args.model), device=args.device)

    embedder = None
    if args.mode == "decoder":
        from napari_vfmseg.engine import Segmenter

        segmenter = Segmenter(model, cache_dir=args.cache_dir)
        segmenter.set_volume(volume.array, axis=args.axis, window=window, modality=modality)
        embedder = lambda pair: segmenter.embedding(pair.plane).features  # noqa: E731

    bar = None
    if not args.json:
        from tqdm import tqdm

        bar = tqdm(total=args.steps, unit="step", desc=f"fine-tuning ({args.mode})")

    def progress(p) -> None:
        if bar is None:
            return
        bar.update(1)
        postfix = {"loss": f"{p.loss:.3f}"}
        if p.best_val_dice is not None:
            postfix["val Dice"] = f"{p.best_val_dice:.3f}"
        bar.set_postfix(postfix)

    trainer = Trainer(model, train, val, config, progress=progress, embedder=embedder)
    try:
        result = trainer.fit()
    finally:
        if bar is not None:
            bar.close()
    result.save(out)

    summary = {
        "adapter": str(out),
        "model": model.name,
        "base_fingerprint": model.fingerprint,
        "adapter_fingerprint": result.info.fingerprint,
        **result.summary(),
        "n_train_planes": len(train),
        "n_val_planes": len(val),
        "n_val_objects": count_objects(val, args.min_pixels),
    }
    if args.json:
        print(json.dumps(summary))
        return 0

    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    print(f"validation Dice before: {fmt(result.val_dice_before)}")
    unchanged = not result.improved and result.val_dice_before is not None
    print(f"validation Dice after:  {fmt(result.val_dice_after)}"
          + (" (no improvement: adapter equals the start)" if unchanged else ""))
    stop = " (stopped early)" if result.stopped_early else ""
    print(f"{result.steps_done} steps in {result.seconds:.1f} s{stop}; {result.parameters}; "
          f"{result.n_train_examples} training objects on {len(train)} planes → {out}")
    return 0
