"""Federated LoRA across three sites vs each site alone vs pooled, on a real brain MR (issue #25).

    python benchmarks/bench_federated.py                          # FFA and FedAvg, default budget
    python benchmarks/bench_federated.py --strategies ffa --rounds 3 --local-steps 10

Data: the real T1 scan in ``sample_data/mni_brain_t1.nii.gz`` (see sample_data/README.md). The
objects are the brain mask (its labels 1 and 2 merged), as in the project's fine-tuning figures
(docs/finetuning.md) and as a user outlines a brain with a box; ``--objects tissues`` keeps white
matter and "the rest of the brain" apart, a task a tight box does not define (the rest of the
brain is a ring whose box is the brain's; the base model scores no better than the filled box
there, and training on it lowers box Dice for every contender). Three sites hold non-identical
data: contiguous slabs of its axial planes (each site sees another part of the brain) rendered in
three contrasts — as scanned; gamma 0.6 with Gaussian noise; gamma 1.6 with a smooth bias field.
The test volume is the same scan resliced along the coronal axis (every third plane) in a fourth
contrast (gamma 0.8, mild noise): planes no site trained on, but the same subject (no second real
subject is shipped).

Each strategy runs ``vfmseg federated simulate`` (Flower's simulation runtime; sites in Ray
workers, one CPU each), which also trains the same LoRA on each site alone and on all sites
pooled with the same budget (see napari_vfmseg/federated/simulation.py). Dice: tight-box prompts
(and one interior click) on every labelled test plane, and box Dice on each site's held-out planes
for every contender. Default budget: 4 rounds × 8 local steps of 2 planes, lr 3e-3, decoder LoRA
rank 4 (the measured choice, docs/federated.md). Prints a table and, last, one JSON line. Record the machine's load
(``uptime``) beside the timings: the figures in docs/federated.md came from a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCAN = ROOT / "sample_data" / "mni_brain_t1.nii.gz"
LABELS = ROOT / "sample_data" / "mni_brain_t1_labels.nii.gz"


def _contrast(array: np.ndarray, gamma: float, noise: float, bias: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 volume re-rendered: gamma on [0, 1], a smooth multiplicative bias field, Gaussian noise."""
    x = array.astype(np.float32) / 255.0
    x = x ** gamma
    if bias:
        grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in x.shape], indexing="ij")
        x = x * (1.0 + bias * (0.6 * grid[1] + 0.4 * grid[2] - 0.3 * grid[0]))
    x = x + rng.normal(0.0, noise, x.shape) * (x > 0.02)
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def make_data(folder: Path, seed: int = 0, objects: str = "brain") -> tuple[list[tuple[str, str]], tuple[str, str]]:
    """Write the three sites' and the test volume's NIfTI files into ``folder``; return their paths.

    ``objects``: "brain" labels the brain mask (labels 1 and 2 merged: the object the project's
    fine-tuning figures measure), "tissues" keeps white matter and the rest of the brain apart."""
    from napari_vfmseg.io import read_volume, write_labels
    from napari_vfmseg.io.volume import Volume

    rng = np.random.default_rng(seed)
    scan, labels = read_volume(SCAN), read_volume(LABELS)
    array, lab = np.asarray(scan.array), np.asarray(labels.array).astype(np.int32)
    if objects == "brain":
        lab = (lab > 0).astype(np.int32)
    planes = np.flatnonzero(lab.reshape(lab.shape[0], -1).max(axis=1) > 0)
    slabs = np.array_split(planes, 3)
    variants = [(1.0, 0.0, 0.0), (0.6, 0.05, 0.0), (1.6, 0.02, 0.35)]
    sites = []
    for index, (slab, (gamma, noise, bias)) in enumerate(zip(slabs, variants), start=1):
        rendered = _contrast(array, gamma, noise, bias, rng)[slab[0]: slab[-1] + 1]
        part = lab[slab[0]: slab[-1] + 1]
        origin = tuple(np.asarray(scan.origin) + np.asarray(scan.direction) @ np.array([slab[0] * scan.spacing[0], 0, 0]))
        vol = Volume(rendered, scan.spacing, origin, scan.direction)
        image_path, label_path = folder / f"site{index}.nii.gz", folder / f"site{index}_labels.nii.gz"
        write_labels(image_path, rendered, like=vol)   # same writer, same geometry; uint8 values kept
        write_labels(label_path, part, like=vol)
        sites.append((str(image_path), str(label_path)))
    # Every third coronal plane (6 mm apart) keeps the measurement affordable on a shared 2-core machine.
    test = _contrast(array, 0.8, 0.02, 0.0, rng).transpose(1, 0, 2)[::3]
    test_labels = lab.transpose(1, 0, 2)[::3]
    spacing = (3 * scan.spacing[1], scan.spacing[0], scan.spacing[2])
    vol = Volume(test, spacing, (0.0, 0.0, 0.0))
    write_labels(folder / "test.nii.gz", test, like=vol)
    write_labels(folder / "test_labels.nii.gz", test_labels, like=vol)
    return sites, (str(folder / "test.nii.gz"), str(folder / "test_labels.nii.gz"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", default=["ffa", "fedavg"], choices=["ffa", "fedavg"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--local-steps", type=int, default=8)
    parser.add_argument("--images-per-step", type=int, default=2)
    parser.add_argument("--prompts-per-image", type=int, default=2)
    parser.add_argument("--correction-clicks", type=int, default=0)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--objects", default="brain", choices=["brain", "tissues"],
                        help="brain: the brain mask (default); tissues: white matter and the rest of the brain")
    parser.add_argument("--seed", type=int, default=0, help="data noise, shared A, sampling and held-out split")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--model", default="builtin")
    parser.add_argument("--work", help="folder for the data and adapters (default: temporary)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per strategy before giving up")
    args = parser.parse_args(argv)

    work = Path(args.work or tempfile.mkdtemp(prefix="vfmseg-bench-federated-"))
    work.mkdir(parents=True, exist_ok=True)
    sites, test = make_data(work, seed=args.seed, objects=args.objects)
    load_before = os.getloadavg()
    rows = {}
    for strategy in args.strategies:
        command = [sys.executable, "-m", "napari_vfmseg.cli", "federated", "simulate", "--json",
                   "--model", args.model, "--strategy", strategy, "--rounds", str(args.rounds),
                   "--local-steps", str(args.local_steps), "--lr", str(args.lr), "--cpus", str(args.cpus),
                   "--images-per-step", str(args.images_per_step), "--prompts-per-image", str(args.prompts_per_image),
                   "--correction-clicks", str(args.correction_clicks), "--seed", str(args.seed),
                   "--test", f"{test[0]}:{test[1]}", "--out", str(work / f"global_{strategy}.safetensors")]
        for image, labels in sites:
            command += ["--site", f"{image}:{labels}"]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return done.returncode
        summary = json.loads(done.stdout[done.stdout.index("{"):])
        summary["wall_s"] = round(time.perf_counter() - started, 1)
        rows[strategy] = summary
    load_after = os.getloadavg()

    print(f"{'strategy':8} {'base':>6} {'fed':>6} {'pooled':>7} {'alone':>6} {'fed/pooled':>10} "
          f"{'B/site/round':>13} {'% model':>8} {'wall s':>7}")
    for strategy, s in rows.items():
        print(f"{strategy:8} {s['base_dice']:6.3f} {s['federated_dice']:6.3f} {s['pooled_dice']:7.3f} "
              f"{s['local_dice_mean']:6.3f} {s['federated_dice'] / s['pooled_dice']:10.3f} "
              f"{s['bytes_per_round_per_site']:13,.0f} {100 * s['bytes_share_of_model']:8.2f} {s['wall_s']:7.1f}")
        held = s["heldout_dice_mean"]
        print(f"   held-out planes of the sites (box, mean over sites): base {held['base']:.3f}, federated "
              f"{held['federated']:.3f}, pooled {held['pooled']:.3f}, alone on its own {held['local_own']:.3f}, "
              f"alone on every site {held['local_all']:.3f}")
        print(f"   test point Dice: base {s['base_point_dice']:.3f}, federated {s['federated_point_dice']:.3f}, "
              f"pooled {s['pooled_point_dice']:.3f}, alone {s['local_point_dice_mean']:.3f}")
        for entry in s["per_round"]:
            sites_text = ", ".join(f"{k.split('-')[0]} {v.get('heldout_box_dice') or float('nan'):.3f}"
                                   for k, v in sorted(entry["sites"].items()))
            print(f"   round {entry['round']}: test {entry['test_box_dice']:.3f}; held-out {sites_text}")
    print(json.dumps({"objects": args.objects, "seed": args.seed, "load_before": load_before,
                      "load_after": load_after, "work": str(work),
                      "results": {k: {key: v[key] for key in ("base_dice", "federated_dice", "pooled_dice",
                                                               "local_dice_mean", "local_dice",
                                                               "base_point_dice", "federated_point_dice",
                                                               "pooled_point_dice", "local_point_dice_mean",
                                                               "heldout_dice_mean", "heldout_box_dice",
                                                               "bytes_per_round_per_site", "model_bytes",
                                                               "bytes_share_of_model", "seconds_federated",
                                                               "seconds_baselines", "wall_s")}
                                  for k, v in rows.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
