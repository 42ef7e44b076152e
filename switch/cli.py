"""Command-line entry point: ``cdpswitch serve`` and ``cdpswitch version``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

DATA_ENV = "CDPSWITCH_DATA"
DEFAULT_DATA_DIR = "./cdpswitch-data"


def default_data_dir() -> Path:
    """The data directory: ``$CDPSWITCH_DATA`` if set and non-empty, else ``./cdpswitch-data``."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


def package_version() -> str:
    try:
        return metadata.version("cdpswitch")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cdpswitch",
        description="A storage switch emulator with continuous data protection.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser("serve", help="run the switch in the foreground")
    serve.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"data directory (default: ${DATA_ENV} or {DEFAULT_DATA_DIR})",
    )

    sub.add_parser("version", help="print the version and exit")
    return parser


def _serve(data_dir: Path) -> int:
    print("the switch daemon is not built yet; running the protected-volume demo", flush=True)
    from switch import demo  # lazy: only `serve` needs the engine

    result = demo.run(data_dir)
    return result if isinstance(result, int) else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"cdpswitch {package_version()}")
        return 0
    if args.command == "serve":
        data_dir: Path = args.data_dir if args.data_dir is not None else default_data_dir()
        try:
            return _serve(data_dir)
        except KeyboardInterrupt:
            return 130
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse rejects others


if __name__ == "__main__":
    raise SystemExit(main())
