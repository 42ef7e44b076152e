"""Command-line entry point: ``cdpswitch serve``, ``cdpswitch shell``, ``cdpswitch policy check``
and ``cdpswitch version``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence
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
    serve.add_argument(
        "--config",
        type=Path,
        default=None,
        help="YAML configuration to run (default: the data directory's running"
        " configuration, or one 1 GiB volume vol0 on 127.0.0.1:3260 on a first start)",
    )

    shell = sub.add_parser(
        "shell",
        help="administer a running switch (targetcli-style)",
        description=(
            "Without a command: an interactive shell (help, ls, cd, TAB completion). "
            "With one: run it and exit 0 on success, 1 on failure, e.g. "
            "`cdpswitch shell /volumes create name=vol0 size=1G`."
        ),
    )
    shell.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"the daemon's data directory (default: ${DATA_ENV} or {DEFAULT_DATA_DIR})",
    )
    shell.add_argument(
        "words",
        nargs=argparse.REMAINDER,
        metavar="PATH COMMAND ARGS",
        help="a path in the tree (default /), a command and its key=value parameters",
    )

    policy = sub.add_parser("policy", help="retention policy files (offline)")
    policy_sub = policy.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)
    check = policy_sub.add_parser(
        "check",
        help="validate a policy file",
        description="Validate a retention policy file without a running switch: exit 0 and"
        " a one-line summary, or exit 1 with one FILE:LINE: message line per problem.",
    )
    check.add_argument("file", type=Path, metavar="FILE")

    sub.add_parser("version", help="print the version and exit")
    return parser


def _policy_check(path: Path) -> int:
    from policies.schema import PolicyError, load_policies

    try:
        loaded = load_policies(path)
    except PolicyError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    names = ", ".join(loaded.policies)
    count = len(loaded.policies)
    print(f"{path}: ok, {count} polic{'y' if count == 1 else 'ies'}: {names}")
    return 0


def _serve(data_dir: Path, config: Path | None) -> int:
    from switch import daemon  # lazy: only `serve` needs the engine and the target

    return daemon.run(data_dir, config)


def _quiet_on_broken_pipe(run: Callable[[], int]) -> int:
    """Run a command whose output may go to a pipe closed early (``| head``): end quietly
    with the status a tool killed by SIGPIPE has, as other command-line tools do."""
    try:
        code = run()
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at /dev/null so that is quiet too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 128 + signal.SIGPIPE


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"cdpswitch {package_version()}")
        return 0
    if args.command == "serve":
        data_dir: Path = args.data_dir if args.data_dir is not None else default_data_dir()
        try:
            return _serve(data_dir, args.config)
        except KeyboardInterrupt:
            return 130
    if args.command == "shell":
        from switch import shell  # lazy: configshell sets up readline and SIGINT on import

        data_dir = args.data_dir if args.data_dir is not None else default_data_dir()
        return _quiet_on_broken_pipe(lambda: shell.main(args.words, data_dir))
    if args.command == "policy":
        # "check" is the only policy command
        return _quiet_on_broken_pipe(lambda: _policy_check(args.file))
    raise AssertionError(f"unhandled command {args.command!r}")  # argparse rejects others


if __name__ == "__main__":
    raise SystemExit(main())
