"""The ``vfmseg`` command line: one module per subcommand, all on the Qt-free core.

Each subcommand module exposes ``add_parser(subparsers)`` and ``run(args) -> int``. Exit code 0 on
success, 2 on bad input with one clear line on stderr, 1 on a bug (traceback kept, with where to
report it); see :func:`main`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Sequence

# (subcommand, module) — modules are imported only when their subcommand runs or for --help.
SUBCOMMANDS: list[tuple[str, str]] = [
    ("info", "napari_vfmseg.cli.info"),
    ("cache", "napari_vfmseg.cli.cache"),
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


def _raised_in_project(exc: BaseException) -> bool:
    """True when the innermost frame of ``exc``'s traceback is napari-vfmseg's own code: our checks
    raise errors that explain themselves, an error from deep inside a library is a bug of ours."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(package + os.sep)


def is_bad_input(exc: BaseException) -> bool:
    """Bad input (exit 2, one line): :class:`UserError`, a file-system error (missing, unreadable or
    unwritable file), or a ValueError raised by the project's own checks — every project error type
    (``VolumeReadError``, ``AdapterError``, ``NonFiniteImageError``, ...) is one. Anything else is a bug."""
    return isinstance(exc, (UserError, OSError)) or (isinstance(exc, ValueError) and _raised_in_project(exc))


def report_hint() -> str:
    """Where to report a bug: the issue tracker named in the package metadata, else the maintainers."""
    try:
        from importlib.metadata import metadata

        for entry in metadata("napari-vfmseg").get_all("Project-URL") or []:
            label, _, url = entry.partition(",")
            if label.strip().lower() in ("issues", "bug tracker", "bug reports", "tracker", "source"):
                return url.strip()
    except Exception:  # noqa: BLE001 - the hint must never fail
        pass
    return "the napari-vfmseg maintainers (the project's issue tracker)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand. Exit codes: 0 success, 2 bad input (one line on stderr naming the file and
    the problem), 1 a bug (the traceback, then where to report it), 130 interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - every failure ends in a message and an exit code
        if is_bad_input(exc):
            message = " ".join(str(exc).split()) or type(exc).__name__
            print(f"vfmseg {args.command}: error: {message}", file=sys.stderr)
            return 2
        traceback.print_exc()
        from napari_vfmseg import __version__

        print(
            f"vfmseg {args.command}: internal error ({type(exc).__name__}): this is a bug in napari-vfmseg "
            f"{__version__}, not a problem with your input. Please report it to {report_hint()}, with the "
            f"traceback above, the command you ran and the output of `vfmseg info`.",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
