"""``vfmseg distill``: distil a (fine-tuned) teacher into a small, fast student model file."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "distill",
        help="distil a teacher model (with its adapter) into a small fast student on your unlabelled scans",
        description=(
            "Task-specific distillation. The teacher (--teacher, with --teacher-adapter applied) runs once over "
            "the transfer set: every plane of each VOLUME along every axis, part of them augmented, plus "
            "synthetic slices. The student (a small CNN encoder, --student, with the teacher's prompt encoder "
            "and mask decoder as its start) first learns the teacher's image embeddings, then its masks and "
            "IoU scores on simulated boxes, clicks and correction clicks; with --labels a short final round "
            "trains on the labelled planes. The student file loads with --model PATH everywhere. A checkpoint "
            "next to --out lets an interrupted run resume."
        ),
    )
    parser.add_argument("volumes", nargs="+", metavar="VOLUME_OR_FOLDER",
                        help="image files, DICOM series folders, or folders of image files")
    parser.add_argument("--teacher", required=True, metavar="MODEL", help="registry name or checkpoint path")
    parser.add_argument("--teacher-adapter", default=None, metavar="ADAPTER",
                        help="fine-tuning adapter (.safetensors) fitted to the teacher")
    parser.add_argument("--student", default="tiny", metavar="SIZE",
                        help="student encoder size: builtin, small, tiny (default) or nano")
    parser.add_argument("--student-input", type=int, default=256, metavar="PX",
                        help="student input side in pixels (multiple of 16; default 256)")
    parser.add_argument("--labels", nargs="+", default=[], metavar="LABELS",
                        help="label maps, the i-th for the i-th VOLUME (planes along axis 0 with objects)")
    parser.add_argument("--out", required=True, metavar="STUDENT", help="student file to write (.safetensors)")
    parser.add_argument("--embed-steps", type=int, default=300, help="embedding stage steps (default 300)")
    parser.add_argument("--mask-steps", type=int, default=150, help="mask stage steps (default 150)")
    parser.add_argument("--label-steps", type=int, default=60, help="final round steps with --labels (default 60)")
    parser.add_argument("--batch", type=int, default=8, help="images per embedding step (default 8)")
    parser.add_argument("--max-images", type=int, default=480, help="transfer set size at most (default 480)")
    parser.add_argument("--synthetic", type=float, default=0.15,
                        help="synthetic slices as a share of the real planes (default 0.15; 0: none)")
    parser.add_argument("--window", default="auto",
                        help="intensity window: auto, percentile, a CT preset or LEVEL,WIDTH")
    parser.add_argument("--timing-repeats", type=int, default=10,
                        help="planes timed per encoder for teacher_encoder_ms / student_encoder_ms (default 10)")
    parser.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start over")
    parser.add_argument("--device", default="auto", help="cpu, cuda, mps or auto (default)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of progress bars")
    parser.set_defaults(func=run)


def _volume_files(folder) -> list:
    from napari_vfmseg.training.data import IMAGE_SUFFIXES

    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))


def read_inputs(paths: list[str]) -> list:
    """The volumes named on the command line: files, DICOM series folders, folders of image files."""
    from pathlib import Path

    from napari_vfmseg.cli import UserError
    from napari_vfmseg.io import read_volume

    volumes = []
    for text in paths:
        path = Path(text)
        if not path.exists():
            raise UserError(f"{path}: no such file or folder")
        files = _volume_files(path) if path.is_dir() else []
        for item in files or [path]:
            volume = read_volume(item)
            if getattr(volume, "is_rgb", False):
                raise UserError(f"{item}: colour images are not supported for distillation; use grey images")
            volumes.append(volume)
    return volumes


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from napari_vfmseg.cli import UserError
    from napari_vfmseg.cli.embed import parse_window
    from napari_vfmseg.io import read_volume
    from napari_vfmseg.models.student import STUDENT_SIZES
    from napari_vfmseg.training.distill import DistillConfig, distill, load_teacher

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: the student file must end in .safetensors")
    if args.student not in STUDENT_SIZES:
        raise UserError(f"--student {args.student}: choose one of {', '.join(STUDENT_SIZES)}")
    volumes = read_inputs(args.volumes)
    if len(args.labels) > len(volumes):
        raise UserError(f"--labels: {len(args.labels)} label maps for {len(volumes)} volumes")
    labels = []
    for volume, label_path in zip(volumes, args.labels):
        label_map = read_volume(label_path).array
        if label_map.shape != volume.array.shape:
            raise UserError(f"{label_path}: label shape {label_map.shape} differs from image shape "
                            f"{volume.array.shape} of {volume.path}")
        labels.append((volume, label_map))
    config = DistillConfig(student_size=args.student, img_size=args.student_input, embed_steps=args.embed_steps,
                           mask_steps=args.mask_steps, label_steps=args.label_steps, batch=args.batch,
                           max_transfer_images=args.max_images, synthetic_fraction=args.synthetic, seed=args.seed)
    teacher = load_teacher(args.teacher, args.teacher_adapter, device=args.device)

    bars: dict = {}

    def progress(p) -> None:
        if args.json:
            return
        from tqdm import tqdm

        bar = bars.get(p.stage)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[p.stage] = tqdm(total=p.total, unit="img" if p.stage == "teacher" else "step",
                                       desc=f"distil: {p.stage}", file=sys.stderr)
        bar.n = p.step
        if p.loss is not None:
            bar.set_postfix(loss=f"{p.loss:.4f}", refresh=False)
        bar.refresh()

    try:
        result = distill(teacher, volumes, out, labels=labels, config=config, window=parse_window(args.window),
                         progress=progress, resume=not args.no_resume,
                         timing_repeats=max(1, args.timing_repeats))
    finally:
        for bar in bars.values():
            bar.close()
    summary = {"student_file": str(out), **result.card, "seconds": round(result.seconds, 2),
               "checkpoint": result.checkpoint}
    if args.json:
        print(json.dumps(summary))
        return 0
    figures = result.card["figures"]
    print(f"student → {out}: encoder {figures['student_encoder_ms']} ms per plane "
          f"(teacher {figures['teacher_encoder_ms']} ms, {figures['encoder_speedup']}x); box agreement Dice "
          f"{figures.get('box_agreement_dice')}; {result.card['transfer']['images']} transfer images; "
          f"{result.seconds:.0f} s")
    return 0
