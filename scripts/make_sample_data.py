"""Regenerate the shipped sample data (seeded, deterministic) and print a summary table.

Usage (from the repository root):

    python scripts/make_sample_data.py                 # all samples into sample_data/
    python scripts/make_sample_data.py --only brain_mr --out /tmp/samples

sample_data/README.md is written by hand; this script only (re)writes the image and label files
and prints the Markdown table of shapes, spacings and sizes that the README reproduces.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from napari_vfmseg.data import SAMPLES
from napari_vfmseg.data.build import write_sample

REPO_SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_data"


def _size_bytes(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_SAMPLE_DIR, help="output folder (default: sample_data/)")
    parser.add_argument("--only", nargs="+", choices=sorted(SAMPLES), help="samples to write (default: all)")
    args = parser.parse_args(argv)

    rows = []
    for name in args.only or list(SAMPLES):
        info = SAMPLES[name]
        start = time.perf_counter()
        image_path, labels_path = write_sample(name, args.out)
        seconds = time.perf_counter() - start
        rows.append(
            f"| `{name}` | {info.modality} | `{image_path.name}{'/' if image_path.is_dir() else ''}` "
            f"({_size_bytes(image_path):,} B) | `{labels_path.name}` ({_size_bytes(labels_path):,} B) | "
            f"{' × '.join(map(str, info.shape))} | {' × '.join(f'{s:g}' for s in np.round(info.spacing, 4))} | "
            f"{info.seed} |"
        )
        print(f"wrote {name} in {seconds:.1f} s: {image_path}, {labels_path}", file=sys.stderr)
    print("| sample | modality | image | labels | shape | spacing (mm) | seed |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
