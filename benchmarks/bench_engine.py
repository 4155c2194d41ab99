"""Engine benchmark against upstream segment-anything (same as ``vfmseg bench``).

    python benchmarks/bench_engine.py            # random-init ViT-B, 2 slices of 512 px, 60 prompts
    python benchmarks/bench_engine.py --quick    # tiny model, seconds

Prints a table and, last, one JSON line with the figures and ratios. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import sys

from napari_vfmseg.cli import bench


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    bench.add_parser(sub)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return bench.run(args)


if __name__ == "__main__":
    sys.exit(main())
