"""Serve one protected volume over iSCSI, for manual testing and subprocess tests.

    python -m switch.iscsi_serve --volume DIR --primary FILE --size BYTES --iqn IQN --port N

Creates the protected volume in DIR (its primary FILE, thin, of BYTES) or opens the one
already there, exports it as LUN 0 of IQN on 127.0.0.1 (``--host`` to change), prints
``ready <port>`` once listening (``--port 0`` picks a free port), and on SIGTERM/SIGINT
stops serving gracefully and closes the volume cleanly.

Access control: ``--allow INITIATOR`` (repeatable) limits who may log in and who sees the
target in discovery. CHAP user names are options, their secrets come from the environment
so they never show in a process listing: ``--chap USER`` with CDPSWITCH_CHAP_SECRET
(initiators must authenticate), ``--mutual-chap USER`` with CDPSWITCH_MUTUAL_CHAP_SECRET
(the target authenticates back), ``--discovery-chap USER`` with
CDPSWITCH_DISCOVERY_CHAP_SECRET (discovery sessions must authenticate).

It lives in ``switch`` (the composition root) rather than in ``target.iscsi.server``
because ``target`` may import only the block-device interface of ``volume_manager``
(DESIGN.md "Layers", enforced by tests/test_layout.py), and this opens a ``Volume``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, cast

from switch.tuning import tune_allocator
from target.iscsi.chap import ChapConfig, ChapCredentials
from target.iscsi.server import DEFAULT_POLL_WINDOW, Target, start_server
from target.scsi.lu import LogicalUnit
from volume_manager import BlockDevice, Volume

DEFAULT_IQN = "iqn.2026-11.org.cdpswitch:vol0"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m switch.iscsi_serve",
                                     description="Serve one protected volume over iSCSI.")
    parser.add_argument("--volume", required=True, help="secondary directory of the volume")
    parser.add_argument("--primary", help="primary file (needed to create the volume)")
    parser.add_argument("--size", type=int, help="primary size in bytes if it must be created")
    parser.add_argument("--iqn", default=DEFAULT_IQN)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3260, help="0 picks a free port")
    parser.add_argument("--poll-us", type=float, default=DEFAULT_POLL_WINDOW * 1e6,
                        metavar="US",
                        help="microseconds the loop keeps polling after a receive (0: off)")
    parser.add_argument("--allow", action="append", metavar="INITIATOR",
                        help="admit only these initiator IQNs (repeatable)")
    parser.add_argument("--chap", metavar="USER", help="CHAP user; secret: $CDPSWITCH_CHAP_SECRET")
    parser.add_argument("--mutual-chap", metavar="USER",
                        help="mutual CHAP user; secret: $CDPSWITCH_MUTUAL_CHAP_SECRET")
    parser.add_argument("--discovery-chap", metavar="USER",
                        help="discovery CHAP user; secret: $CDPSWITCH_DISCOVERY_CHAP_SECRET")
    return parser


def _credentials(user: str | None, variable: str) -> ChapCredentials | None:
    if user is None:
        return None
    secret = os.environ.get(variable)
    if not secret:
        raise SystemExit(f"CHAP user {user!r} given but {variable} is not set")
    try:
        return ChapCredentials(user, secret.encode())
    except ValueError as exc:
        raise SystemExit(f"{variable}: {exc}") from None


def chap_settings(args: argparse.Namespace) -> tuple[ChapConfig | None, ChapConfig | None]:
    """(target CHAP, discovery CHAP) from the options and the environment."""
    initiator = _credentials(args.chap, "CDPSWITCH_CHAP_SECRET")
    mutual = _credentials(args.mutual_chap, "CDPSWITCH_MUTUAL_CHAP_SECRET")
    discovery = _credentials(args.discovery_chap, "CDPSWITCH_DISCOVERY_CHAP_SECRET")
    if mutual is not None and initiator is None:
        raise SystemExit("--mutual-chap needs --chap too")
    try:
        target = None if initiator is None else ChapConfig(initiator, mutual)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return target, None if discovery is None else ChapConfig(discovery)


def open_volume(directory: str, primary: str | None, size: int | None) -> Volume:
    if os.path.exists(os.path.join(directory, "catalog.db")):
        return Volume.open(directory)
    if primary is None:
        raise SystemExit(f"{directory} holds no volume yet: --primary (and --size) needed")
    return Volume.create(directory, primary, size=size)


async def serve(volume: Volume, iqn: str, host: str, port: int, *,
                chap: ChapConfig | None = None, discovery_chap: ChapConfig | None = None,
                allowed: frozenset[str] | None = None,
                poll_us: float = DEFAULT_POLL_WINDOW * 1e6) -> None:
    # Volume.write returns the record's sequence number where the interface says None.
    device = cast(BlockDevice, volume)
    lu = LogicalUnit(device, uuid=uuid.UUID(bytes=volume.uuid), target_name=iqn)
    target = Target(iqn, {0: lu}, chap=chap, allowed_initiators=allowed)
    server = await start_server([target], host, port, discovery_chap=discovery_chap,
                                poll_window=poll_us / 1e6)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"ready {server.port}", flush=True)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        server.close()
        await server.wait_closed()


def _runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop when installed (DESIGN.md dependencies), else the default loop."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return asyncio.run

    def run(main: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_allocator()
    chap, discovery_chap = chap_settings(args)
    allowed = None if args.allow is None else frozenset(args.allow)
    volume = open_volume(args.volume, args.primary, args.size)
    try:
        _runner()(serve(volume, args.iqn, args.host, args.port, chap=chap,
                        discovery_chap=discovery_chap, allowed=allowed,
                        poll_us=args.poll_us))
    finally:
        volume.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
