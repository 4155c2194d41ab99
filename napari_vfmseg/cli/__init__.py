"""The ``vfmseg`` command line: one module per subcommand, all on the Qt-free core.

Each subcommand module exposes ``add_parser(subparsers)`` and ``run(args) -> int``. Exit code 0 on
success, 2 on bad input with one clear line on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# (subcommand, module) — modules are imported only when their subcommand runs or for --help.
SUBCOMMANDS: list[tuple[str, str]] = [
    ("info", "napari_vfmseg.cli.info"),
    ("demo", "napari_vfmseg.cli.demo"),
    ("models", "napari_vfmseg.cli.models"),
    ("embed", "napari_vfmseg.cli.embed"),
    ("bench", "napari_vfmseg.cli.bench"),
    ("evaluate", "napari_vfmseg.cli.evaluate"),
    ("finetune", "napari_vfmseg.cli.finetune"),
    ("segment", "napari_vfmseg.cli.segment"),
    ("federated", "napari_vfmseg.cli.federated"),
    ("distill", "napari_vfmseg.cli.distill"),
]


class UserError(Exception):
    """Bad input from the user: printed as one line on stderr, exit code 2."""


def model_argument(name: str | None) -> str:
    """The model a subcommand uses: the one named, else the default policy's choice.

    With no weights present at all this is ``vit_b``, so loading fails with the message that says
    which file to fetch and where to put it.
    """
    if name:
        return name
    from napari_vfmseg.models import default_model_name

    return default_model_name() or "vit_b"


def build_parser() -> argparse.ArgumentParser:
    from napari_vfmseg import __version__

    parser = argparse.ArgumentParser(
        prog="vfmseg",
        description="Interactive and batch segmentation of medical images with SAM-family models.",
    )
    parser.add_argument("--version", action="version", version=f"napari-vfmseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS:
        module = importlib.import_module(module_name)
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"vfmseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, OSError) as exc:
        # Library errors for bad input are raised with a message that names the file and problem.
        print(f"vfmseg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
