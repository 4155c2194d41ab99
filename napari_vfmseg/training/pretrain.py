"""Pre-training the built-in model on the synthetic stream; resumable across sessions.

``python -m napari_vfmseg.training.pretrain --out runs/builtin --steps 3000`` trains
:func:`~napari_vfmseg.models.builtin.build_builtin_sam` on :class:`~napari_vfmseg.training.synth.SynthGenerator`
slices with SAM-style prompts:

- a jittered box → one mask (the whole object in the box);
- one interior point → three masks, only the best of them is penalised (an ambiguous click may mean
  a part or the whole it belongs to, and the generator's objects are nested);
- a few positive and negative points → one mask;
- for the first ``box_only_steps`` steps only boxes (a curriculum: the decoder first learns to fill
  the object inside a box, then the ambiguous prompts);
- up to ``corrections`` further rounds (each with probability ``correction_probability``): a click
  in the error region, with the previous round's low-res logits fed back as ``mask_input``.

Prompts of one step are simulated and decoded in batches (:mod:`.batched`); the synthetic batches
come from :mod:`.synth_stream`, in ``workers`` processes if asked, seeded by the step number.
On CUDA the forward pass runs under bf16 autocast. With ``train="decoder"`` (``--train decoder``)
the image encoder is frozen as loaded (weights and BatchNorm statistics) and only the prompt
encoder and mask decoder learn: a cheap phase for what prompts mean, started with ``--init``.

Every ``checkpoint_every`` steps (and every two minutes, and when ``max_minutes`` is up) the model,
optimiser and stream position are saved atomically
to ``OUT/checkpoint.pt`` (tensors and numbers only, loaded with ``weights_only=True``); a rerun
with the same ``--out`` resumes there. Held-out validation uses a fixed synthetic set drawn from a
different seed and reports box Dice beside the filled-box baseline. Images are (B, H, W) in [0, 1].
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch.nn import functional as F

from napari_vfmseg.io.atomic import atomic_path, write_text_atomic
from napari_vfmseg.models.builtin import BuiltinConfig, build_builtin_sam
from napari_vfmseg.training.batched import BatchPromptConfig, pretrain_loss
from napari_vfmseg.training.prompts import PromptSet, bounding_box, interior_point
from napari_vfmseg.training.synth import SynthConfig, SynthGenerator
from napari_vfmseg.training.synth_stream import StreamConfig, batch_loader
from napari_vfmseg.training.forward import decode
from napari_vfmseg.training.metrics import dice

__all__ = ["PretrainConfig", "pretrain", "evaluate_synthetic", "images_to_input", "trainable_parameters"]

TRAINABLE = ("all", "decoder")


def _check_trainable(train: str) -> None:
    if train not in TRAINABLE:
        raise ValueError(f"train must be one of {sorted(TRAINABLE)}, got {train!r}")


def trainable_parameters(sam, train: str) -> list[torch.nn.Parameter]:
    """The parameters ``train`` updates; with "decoder" the image encoder is frozen (``requires_grad`` off).

    A frozen encoder costs one forward pass per image and nothing per prompt, so a decoder-only run
    spends almost all of its time on what prompts mean (boxes, ambiguous clicks, correction clicks).
    """
    _check_trainable(train)
    frozen = train == "decoder"
    for parameter in sam.image_encoder.parameters():
        parameter.requires_grad_(not frozen)
    return [p for p in sam.parameters() if p.requires_grad]


@dataclass
class PretrainConfig:
    steps: int = 3000
    images_per_step: int = 8
    prompts_per_image: int = 4
    lr: float = 6e-4
    min_lr: float = 3e-5
    warmup_steps: int = 100
    weight_decay: float = 0.02
    correction_probability: float = 0.5
    box_only_steps: int = 300     # curriculum: boxes (the easiest prompt) alone at first
    seed: int = 0
    eval_every: int = 250
    eval_images: int = 48
    checkpoint_every: int = 50
    device: str = "cpu"
    renders: int = 1              # appearances per generated label map
    corrections: int = 2          # correction rounds after the first prompt
    workers: int = 0              # DataLoader processes making the synthetic batches (0: in this process)
    max_minutes: float = 0.0      # stop (with a checkpoint) after this long; 0: no limit
    train: str = "all"            # "all" weights, or "decoder": prompt encoder + mask decoder on a frozen encoder

    def __post_init__(self) -> None:
        _check_trainable(self.train)


def images_to_input(sam, images: torch.Tensor) -> torch.Tensor:
    """(B, H, W) in [0, 1] → (B, 3, H, W) normalised model input, as the engine feeds an 8-bit slice."""
    rgb = (images * 255.0).round().unsqueeze(1).expand(-1, 3, -1, -1)
    return sam.preprocess(rgb)


@torch.no_grad()
def evaluate_synthetic(sam, samples, min_pixels: int = 64) -> dict:
    """Box and 1-click Dice on held-out synthetic slices, beside the filled-box baseline."""
    was_training = sam.training
    sam.eval()
    size = sam.image_encoder.img_size
    box_d, click_d, fill_d = [], [], []
    images = torch.stack([s.image for s in samples])
    embeddings = torch.cat([sam.image_encoder(images_to_input(sam, images[i : i + 8])) for i in range(0, len(samples), 8)])
    for b, sample in enumerate(samples):
        for k in range(sample.objects.shape[0]):
            target = sample.objects[k].cpu().numpy()
            if target.sum() < min_pixels:
                continue
            r0, c0, r1, c1 = bounding_box(target)
            box = PromptSet(None, None, np.array([[r0, c0, r1, c1]], np.float32))
            low, _ = decode(sam, embeddings[b : b + 1], box, multimask=False)
            pred = F.interpolate(low, (size, size), mode="bilinear", align_corners=False)[0, 0].cpu().numpy() > 0
            box_d.append(dice(pred, target))
            filled = np.zeros_like(target)
            filled[r0 : r1 + 1, c0 : c1 + 1] = True
            fill_d.append(dice(filled, target))
            point = np.array([[interior_point(target)]], np.float32)
            click = PromptSet(point, np.ones((1, 1), np.int64), None)
            low, iou = decode(sam, embeddings[b : b + 1], click, multimask=True)
            best = int(iou[0].argmax())
            pred = F.interpolate(low[:, best : best + 1], (size, size), mode="bilinear", align_corners=False)[0, 0].cpu().numpy() > 0
            click_d.append(dice(pred, target))
    sam.train(was_training)
    return {
        "box_dice": float(np.mean(box_d)),
        "click_dice": float(np.mean(click_d)),
        "box_filled_dice": float(np.mean(fill_d)),
        "n_objects": len(box_d),
    }


def _lr_at(step: int, cfg: PretrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def _drop_rows_after(log_path: Path, step: int) -> None:
    """Keep only the header and rows up to ``step`` in the CSV log (atomically)."""
    if not log_path.exists():
        return
    with open(log_path, newline="") as handle:
        rows = list(csv.reader(handle))
    kept = rows[:1] + [row for row in rows[1:] if row and int(row[0]) <= step]
    if len(kept) == len(rows):
        return
    text = io.StringIO(newline="")
    csv.writer(text).writerows(kept)
    write_text_atomic(log_path, text.getvalue())


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as temporary:
        torch.save(obj, temporary)


def pretrain(out: Path, cfg: PretrainConfig, arch: BuiltinConfig | None = None,
             callback: Optional[Callable[[dict], None]] = None, init: Optional[Path] = None) -> dict:
    """Train (or resume) the built-in model into ``out``; returns the last validation figures.

    A run folder with a checkpoint resumes from it. Otherwise ``init`` (exported ``.safetensors``
    weights, e.g. the shipped ones) starts the model from those weights with a fresh optimiser.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    arch = arch or BuiltinConfig()
    sam = build_builtin_sam(arch).to(device)
    optimizer = torch.optim.AdamW(trainable_parameters(sam, cfg.train), lr=cfg.lr, weight_decay=cfg.weight_decay)
    frozen_encoder = cfg.train == "decoder"
    start = 0
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location=device, weights_only=True)
        sam.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
    elif init is not None:
        from safetensors.torch import load_file

        sam.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(str(init)).items()})
    # the stream position is the step number: each step draws from a generator seeded by it
    val_gen = SynthGenerator(SynthConfig(size=arch.img_size), seed=10_000 + cfg.seed, device=device)
    val_samples = [val_gen.sample() for _ in range(cfg.eval_images)]
    log_path = out / "log.csv"
    _drop_rows_after(log_path, start)  # steps logged after the last checkpoint are run again
    new_log = not log_path.exists()
    last_eval: dict = {}
    with open(log_path, "a", newline="") as log_file:
        writer = csv.writer(log_file)
        if new_log:
            writer.writerow(["step", "loss", "lr", "seconds", "box_dice", "click_dice", "box_filled_dice"])
        sam.train()
        if frozen_encoder:
            sam.image_encoder.eval()  # its BatchNorm statistics stay as loaded
        t0 = time.time()
        last_save = t0
        running = []
        stream = StreamConfig(size=arch.img_size, label_maps=max(1, cfg.images_per_step // cfg.renders),
                              renders=cfg.renders, objects=cfg.prompts_per_image, seed=cfg.seed)
        prompt_cfg = BatchPromptConfig(corrections=cfg.corrections, correction_probability=cfg.correction_probability)
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
        done = start
        for step, (images, targets) in zip(range(start, cfg.steps), batch_loader(stream, start, cfg.steps, cfg.workers)):
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, cfg)
            with amp:
                with torch.no_grad() if frozen_encoder else contextlib.nullcontext():
                    embeddings = sam.image_encoder(images_to_input(sam, images))
                loss = pretrain_loss(sam, embeddings, targets, prompt_cfg, generator, boxes_only=step < cfg.box_only_steps)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], 1.0)
            optimizer.step()
            running.append(float(loss.detach()))
            done = step + 1
            row = [done, float(np.mean(running[-20:])), _lr_at(step, cfg), round(time.time() - t0, 1), "", "", ""]
            evaluated: dict = {}
            if done % cfg.eval_every == 0 or done == cfg.steps:
                evaluated = last_eval = evaluate_synthetic(sam, val_samples)
                if frozen_encoder:
                    sam.image_encoder.eval()
                row[4:] = [last_eval["box_dice"], last_eval["click_dice"], last_eval["box_filled_dice"]]
            writer.writerow(row)
            log_file.flush()
            if callback is not None:
                callback({"step": done, "loss": row[1], "seconds": row[3], **evaluated})
            out_of_time = cfg.max_minutes > 0 and time.time() - t0 > 60 * cfg.max_minutes
            if done % cfg.checkpoint_every == 0 or done == cfg.steps or out_of_time or time.time() - last_save > 120:
                _atomic_save({"model": sam.state_dict(), "optimizer": optimizer.state_dict(), "step": done,
                              "config": json.dumps(asdict(cfg)), "arch": json.dumps(arch.to_dict())}, ckpt_path)
                last_save = time.time()
            if out_of_time:
                break
    return last_eval


def export_weights(run: Path, path: Path, dtype: torch.dtype = torch.float16) -> dict:
    """Write the run's model as safetensors (``dtype``, metadata: architecture, steps, figures).

    The file is written to a temporary name and renamed, so a failed export never leaves a partial
    file where the package expects its weights. Returns the metadata.
    """
    from datetime import datetime, timezone

    from safetensors.torch import save_file

    run, path = Path(run), Path(path)
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    cfg = json.loads(state["config"])
    rows = list(csv.DictReader(open(run / "log.csv", newline=""))) if (run / "log.csv").exists() else []
    evaluated = [r for r in rows if r.get("box_dice")]
    metadata = {
        "format": "napari-vfmseg builtin v1",
        "config": state["arch"],
        "steps": str(state["step"]),
        "images_seen": str(int(state["step"]) * int(cfg["images_per_step"])),
        "pretrain_config": state["config"],
        "exported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if evaluated:
        last = evaluated[-1]
        metadata["synthetic_validation"] = json.dumps({k: float(last[k]) for k in ("box_dice", "click_dice", "box_filled_dice")})
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state["model"].items()}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    return metadata


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Pre-train the built-in model on synthetic slices (resumable).")
    parser.add_argument("--out", required=True, help="run folder: checkpoint.pt and log.csv")
    parser.add_argument("--steps", type=int, default=PretrainConfig.steps)
    parser.add_argument("--images-per-step", type=int, default=PretrainConfig.images_per_step)
    parser.add_argument("--prompts-per-image", type=int, default=PretrainConfig.prompts_per_image)
    parser.add_argument("--lr", type=float, default=PretrainConfig.lr)
    parser.add_argument("--eval-every", type=int, default=PretrainConfig.eval_every)
    parser.add_argument("--eval-images", type=int, default=PretrainConfig.eval_images)
    parser.add_argument("--checkpoint-every", type=int, default=PretrainConfig.checkpoint_every)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--img-size", type=int, default=BuiltinConfig.img_size)
    parser.add_argument("--box-only-steps", type=int, default=PretrainConfig.box_only_steps)
    parser.add_argument("--renders", type=int, default=PretrainConfig.renders, help="appearances per generated label map")
    parser.add_argument("--corrections", type=int, default=PretrainConfig.corrections)
    parser.add_argument("--correction-probability", type=float, default=PretrainConfig.correction_probability,
                        help="chance of each further correction round")
    parser.add_argument("--warmup-steps", type=int, default=PretrainConfig.warmup_steps)
    parser.add_argument("--train", choices=TRAINABLE, default=PretrainConfig.train,
                        help="all weights, or the prompt encoder and mask decoder on a frozen image encoder")
    parser.add_argument("--workers", type=int, default=0, help="processes generating the synthetic batches")
    parser.add_argument("--max-minutes", type=float, default=0.0, help="stop with a checkpoint after this long")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--init", default=None, metavar="FILE",
                        help="start a new run from exported weights (e.g. the shipped builtin.safetensors)")
    parser.add_argument("--export", default=None, metavar="FILE",
                        help="do not train: write the run's model to FILE (.safetensors, fp16) and exit")
    args = parser.parse_args(argv)
    if args.export:
        print(json.dumps(export_weights(Path(args.out), Path(args.export))))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PretrainConfig(steps=args.steps, images_per_step=args.images_per_step, prompts_per_image=args.prompts_per_image,
                         lr=args.lr, eval_every=args.eval_every, eval_images=args.eval_images,
                         checkpoint_every=args.checkpoint_every, seed=args.seed, device=args.device,
                         box_only_steps=args.box_only_steps, renders=args.renders, corrections=args.corrections,
                         workers=args.workers, max_minutes=args.max_minutes, train=args.train,
                         correction_probability=args.correction_probability, warmup_steps=args.warmup_steps)
    arch = BuiltinConfig(img_size=args.img_size)

    def report(info: dict) -> None:
        if info["step"] % 10 == 0 or "box_dice" in info:
            print(json.dumps(info), flush=True)

    result = pretrain(Path(args.out), cfg, arch, callback=report, init=Path(args.init) if args.init else None)
    print(json.dumps({"final": result}))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
