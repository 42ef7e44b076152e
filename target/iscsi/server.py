"""The asyncio shell around the sans-I/O iSCSI core (STYLE.md section 2 and rule 5; DESIGN.md
"Measuring performance"). With sending.py, its send path, the only modules of
target/iscsi that do I/O.

Theory of operation:

- One ``IscsiProtocol`` (an ``asyncio.BufferedProtocol``) per TCP connection. The loop
  receives straight into the protocol's own 1 MiB buffer and ``buffer_updated`` hands a
  memoryview of it to ``Connection.receive_data``. The buffer is reused on every receive:
  by the time ``receive_data`` returns, the connection has copied whatever it keeps
  (framing.py "Lifetime rule"), and every event that reads PDU data is handled before the
  next receive. A PDU of up to ``CARRY_LIMIT`` bytes that the receive ends inside of is
  moved to the front of the buffer and the next receive goes after it, so it is decoded
  in place (framing.py "Carrying over"); a larger one the reader assembles.
- Events are handled in order, inline. ``ExecuteCommand`` calls ``LogicalUnit.execute`` as
  a plain synchronous call on the loop: the engine's reads and writes hit the page cache in
  microseconds, while a thread hop per command costs 80-100 us of CPU. Only durability
  leaves the loop: a response with ``flush_before_status`` goes to ``complete_flush`` in a
  small thread pool (the engine's group commit lets one fsync serve every waiter), and the
  status is sent when it returns.
- After each batch (a receive, a tick, a finished flush) everything the connection queued
  goes out in ONE ``writev`` (sendmsg) of its buffer list (payloads are never joined),
  large reads of applied data as file spans by ``sendfile``; what the socket does not take
  waits in the connection's send backlog (sending.py). Spans are off with data digests
  (the digest needs the bytes) and for tasks that must complete before later ones start
  (ATTR other than SIMPLE).
- After each receive the loop keeps polling for ``poll_window`` (200 us by default)
  instead of sleeping in epoll: a host that waits for each answer before its next
  command finds the target awake. Adaptive polling as storage targets know it (SPDK,
  io_uring's SQPOLL idle time), bounded so that an idle target costs nothing.
- A write whose volume's write buffer is full (``LogicalUnit.waits_for_room``) would
  block the loop, and every session on it, until the volume's group commit frees room.
  It is held back instead, with the events after it, and reading from its connection
  pauses; the volume calls back when there is room (``when_room``, through
  ``call_soon_threadsafe``) and they run then, in order. Other connections go on.
  While reading is paused the host's giving up goes unseen: each tick polls a holding
  connection's socket for the host's close, and a new login of the same initiator port
  (InitiatorName and ISID) ends the old session at once (session reinstatement, RFC 7143
  section 6.3.5). Either way the held writes never land after the host moved on.
- Flow control (uvicorn ``flow_control.py``): reading pauses while the transport's write
  buffer is above its high-water mark or the send backlog above sending.BACKLOG_HIGH (an
  initiator that does not read its Data-In must not make us queue reads without bound),
  while a write is held back for room, or while more than ``MAX_FLUSHING`` commands wait
  for a flush; it resumes when every condition has cleared. The CmdSN window bounds the
  rest.
- One server-wide timer calls ``Connection.tick`` every ``TICK_SECONDS`` for NOP-In pings,
  their timeout and window updates.
- Lifecycle: ``start_server`` -> serving -> ``close()`` (stop accepting, stop reading) ->
  ``wait_closed()`` (let flushes in flight finish, at most ``grace`` seconds, send their
  status, close every connection, wait at most ``grace`` for them to go, abort those left,
  stop the flush threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import cast

from target.scsi.command import ScsiCommand, ScsiResponse
from target.scsi.lu import LogicalUnit
from target.scsi.target_luns import execute_without_lu

from .chap import ChapConfig
from .connection import Connection, InlineReader, InlineWriter, NopPolicy
from .discovery import Portal, VisibleTarget
from .events import (
    CloseConnection,
    Event,
    ExecuteCommand,
    LoggedOut,
    LoginComplete,
    Nexus,
    TaskManagement,
)
from .login import PortalConfig, TargetEntry
from .pdu import TaskFunction
from .sending import ReadFlow, Sender

__all__ = ["IscsiProtocol", "IscsiServer", "Target", "start_server"]

log = logging.getLogger(__name__)

RECEIVE_BUFFER = 1 << 20  # holds a whole 256 KiB Data-Out PDU several times over
# PDUs up to this size that a receive ends inside of are carried over to the front of
# the buffer rather than assembled (framing.py); half, so the next receive has room.
CARRY_LIMIT = RECEIVE_BUFFER // 2
TICK_SECONDS = 1.0
# Commands waiting for a flush before reading pauses: the default CmdSN window, which
# immediate commands (outside the window) could otherwise exceed.
MAX_FLUSHING = 128
DEFAULT_GRACE = 10.0  # seconds in-flight flushes get at shutdown
# After a receive, the loop keeps polling (does not sleep) this long: a host waiting for
# each answer before sending its next command (queue depth 1) then finds us awake, which
# saves a wake-up per command: about 14% of the round trip here, for up to this much CPU
# per idle gap. 0 turns it off.
DEFAULT_POLL_WINDOW = 200e-6
# Only a receive that left at most this many buffers to send (one answer: a Data-In with
# its data, or a response) starts the polling: the host is waiting for that answer. After
# a larger batch it has more commands in flight, which come without our polling: at queue
# depth 32 polling cost 1-2 us of CPU per 4 KiB read here and gained nothing.
POLL_AFTER_BUFFERS = 2
FLUSH_THREADS = 2  # group commit: more threads only queue on the same fsync
# Reasons to pause reading that are the target's, not the initiator's: while one holds,
# the initiator's silence is ours, and its connection is not pinged (tick).
_ROOM = "waiting for room in a volume's write buffer"
_FLUSHES = "flushes outstanding"


@dataclass(frozen=True, slots=True)
class Target:
    """One exported target: its IQN and LUN map, with optional CHAP and an initiator ACL.

    Build each ``LogicalUnit`` with ``lun_list=lambda: sorted(luns)`` when a target has
    LUNs other than 0, so REPORT LUNS lists them all."""

    iqn: str
    luns: Mapping[int, LogicalUnit]
    chap: ChapConfig | None = None
    alias: str | None = None
    allowed_initiators: frozenset[str] | None = None
    acl_chap: Mapping[str, ChapConfig] = field(default_factory=dict)


class IscsiProtocol(asyncio.BufferedProtocol):
    """The shell of one TCP connection (module docstring)."""

    def __init__(self, server: IscsiServer) -> None:
        self.server = server
        self.conn: Connection | None = None
        self._transport: asyncio.Transport | None = None
        self.sender: Sender | None = None  # connection_made makes it
        self._flow: ReadFlow | None = None
        self._buffer = bytearray(RECEIVE_BUFFER)
        self._view = memoryview(self._buffer)
        self._carried = 0  # bytes at the front of the buffer carried over
        # Events held back behind a write waiting for room in its volume's write buffer.
        self._held: list[Event] | None = None
        # While events are held: the LU and the callback it is to call when there is room.
        self._room_wait: tuple[LogicalUnit, Callable[[], None]] | None = None
        self._luns: Mapping[int, LogicalUnit] = {}
        self._nexus: Nexus | None = None  # set at login, cleared once its loss is reported
        self.flushing: set[asyncio.Future[ScsiResponse]] = set()
        self._closing = False
        self.closed = asyncio.get_running_loop().create_future()

    # --- asyncio callbacks ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport = cast(asyncio.Transport, transport)
        self._flow = ReadFlow(transport)
        self.sender = Sender(transport, self._flow)
        local = transport.get_extra_info("sockname")
        server = self.server
        self.conn = Connection(
            server.portal, luns=server.luns_of,
            visible_targets=lambda initiator: server.visible_to(initiator, local),
            allocate_tsih=server.allocate_tsih, nop=server.nop, inline=_inline,
            inline_read=cast(InlineReader, LogicalUnit.fast_read),
            inline_write=cast(InlineWriter, LogicalUnit.fast_write),
            file_spans=self.sender.spans_ok and server.file_spans,
            carry_limit=CARRY_LIMIT,
        )  # fmt: skip
        server.connections.add(self)
        if server.closing:
            self.close()

    @property
    def nexus(self) -> Nexus | None:
        """The session's I_T nexus once logged in to a target, until it is gone."""
        return None if self._closing else self._nexus

    def get_buffer(self, sizehint: int) -> memoryview:
        carried = self._carried
        return self._view[carried:] if carried else self._view

    def buffer_updated(self, nbytes: int) -> None:
        conn = self.conn
        assert conn is not None
        carried = self._carried
        end = carried + nbytes
        view = self._view
        self._handle(conn.receive_data(view[:end], carried))
        # Every event is handled: no view of the buffer is left, and the PDU the data
        # ends inside of moves to the front (framing.py, "Carrying over").
        tail = conn.take_tail()
        if tail:
            view[:tail] = view[end - tail : end]
        self._carried = tail
        if self._send() <= POLL_AFTER_BUFFERS:
            self.server.keep_polling()

    def eof_received(self) -> bool:
        return False  # close our side too: at ERL 0 a half-closed connection is useless

    def pause_writing(self) -> None:
        if self._flow is not None:
            self._flow.pause("write buffer full")

    def resume_writing(self) -> None:
        if self._flow is not None:
            self._flow.resume("write buffer full")

    def connection_lost(self, exc: Exception | None) -> None:
        if self.sender is not None:
            self.sender.lost()
        self._drop_held()
        conn = self.conn
        if conn is not None:
            self._handle(conn.receive_eof())
        self._nexus_lost()
        self._closing = True
        self.server.connections.discard(self)
        if not self.closed.done():
            self.closed.set_result(None)

    def end_session(self, reason: str) -> None:
        """End this connection now, its session with it (session reinstatement, or a
        host seen gone while a write waited for room): the events held back never run
        and its I_T nexus is lost at once, before a new session's first command; what it
        sent is not read, what it was sent is not."""
        log.info("closing iSCSI connection: %s", reason)
        self._drop_held()
        self._nexus_lost()
        self.abort()

    def _drop_held(self) -> None:
        """The connection's tasks are gone (ERL 0), the held writes with them: nothing
        waits for room for them any more."""
        self._held = None
        if self._room_wait is not None:
            lu, room = self._room_wait
            self._room_wait = None
            lu.cancel_room_wait(room)

    # --- events -----------------------------------------------------------------------------

    def _handle(self, events: Sequence[Event]) -> None:
        if self._held is not None:  # behind the write held back (module docstring)
            self._held.extend(events)
            return
        for i, event in enumerate(events):
            if isinstance(event, ExecuteCommand):
                if not self._execute(event):
                    self._hold(events[i:], cast(LogicalUnit, event.lu))
                    return
            elif isinstance(event, LoginComplete):
                conn = self.conn
                assert conn is not None
                self._nexus = conn.nexus
                self._luns = cast(Mapping[int, LogicalUnit], conn.luns)
                self.server.reinstate(self)
            elif isinstance(event, TaskManagement):
                self._task_management(event)
            elif isinstance(event, LoggedOut):
                self._nexus_lost()
            elif isinstance(event, CloseConnection):
                log.debug("closing iSCSI connection: %s", event.reason)
                self._closing = True
            # TasksAborted: a flush in a thread cannot be stopped; its late ``complete`` is
            # ignored by the connection (RFC 7143 section 4.2.3.2: no response ever).

    def _execute(self, event: ExecuteCommand) -> bool:
        """Run the command; False, having done nothing, for a write that would wait for
        room in its volume's write buffer."""
        conn = self.conn
        assert conn is not None
        command = event.command
        lu = cast(LogicalUnit | None, event.lu)  # the server built the LUN map
        if lu is None:
            conn.complete(event.task_tag, execute_without_lu(command, sorted(self._luns)))
            return True
        if lu.waits_for_room(command):
            return False
        response = lu.execute(command)  # inline on the loop, by design (module docstring)
        if not response.flush_before_status:
            conn.complete(event.task_tag, response)
            return True
        future = asyncio.wrap_future(
            self.server.flush_pool.submit(lu.complete_flush, command, response)
        )
        self.flushing.add(future)
        if len(self.flushing) > MAX_FLUSHING and self._flow is not None:
            self._flow.pause(_FLUSHES)
        future.add_done_callback(
            lambda f: self._flushed(event.task_tag, command, f)
        )
        return True

    def _hold(self, events: Sequence[Event], lu: LogicalUnit) -> None:
        """Hold ``events`` back, the first a write that waits for room in ``lu``'s
        write buffer, and stop reading until the LU calls back (module docstring)."""
        self._held = list(events)
        if self._flow is not None:
            self._flow.pause(_ROOM)
        loop = asyncio.get_running_loop()

        def room() -> None:  # in the volume's committer, as a rule
            with contextlib.suppress(RuntimeError):  # the loop is closed: nothing waits
                loop.call_soon_threadsafe(self._release_held)

        self._room_wait = (lu, room)
        lu.when_room(room)

    def _release_held(self) -> None:
        """Room in the write buffer: run the held events, in order, until one waits
        again."""
        events, self._held = self._held, None
        self._room_wait = None
        conn = self.conn
        if events is None or self._closing or conn is None:
            return
        # A task management function in the same receive may have aborted some of them
        # (its response is already out): those must not run now.
        self._handle([e for e in events if not isinstance(e, ExecuteCommand)
                      or conn.awaits_completion(e.task_tag)])  # fmt: skip
        if self._held is None and self._flow is not None:
            self._flow.resume(_ROOM)
        self._send()

    def _flushed(self, task_tag: int, command: ScsiCommand,
                 future: asyncio.Future[ScsiResponse]) -> None:
        self.flushing.discard(future)
        if len(self.flushing) <= MAX_FLUSHING // 2 and self._flow is not None:
            self._flow.resume(_FLUSHES)
        conn = self.conn
        if conn is None or future.cancelled():
            return
        error = future.exception()
        if error is not None:  # complete_flush never raises; a dead pool can (shutdown)
            log.error("flush for task %#x failed outside the LU: %r", task_tag, error)
            self.close()
            return
        conn.complete(task_tag, future.result())
        self._send()

    def _task_management(self, event: TaskManagement) -> None:
        """The TMF response is already queued; carry out the effect on the LU(s)."""
        if event.function not in (TaskFunction.LOGICAL_UNIT_RESET,
                                  TaskFunction.TARGET_WARM_RESET):  # fmt: skip
            return  # ABORT TASK SET / CLEAR TASK SET: the connection dropped the tasks
        lu = cast(LogicalUnit | None, event.lu)
        for unit in self._luns.values() if lu is None else (lu,):
            unit.reset()

    def _nexus_lost(self) -> None:
        """Logout or connection loss: the I_T nexus is gone on every LU of the target."""
        nexus, self._nexus = self._nexus, None
        if nexus is None:
            return
        for lu in self._luns.values():
            lost = getattr(lu, "nexus_lost", None)
            if lost is not None:
                lost(nexus)

    # --- output -----------------------------------------------------------------------------

    def _send(self) -> int:
        """Send what the connection queued (sending.py). Returns the number of buffers."""
        conn, sender = self.conn, self.sender
        assert conn is not None and sender is not None
        spans = conn.spans_queued
        buffers = conn.data_to_send()
        sender.send(buffers, spans)
        if self._closing:
            self.close()
        return len(buffers)

    def close(self) -> None:
        """Close once everything queued is sent."""
        self._closing = True
        if self.sender is not None:
            self.sender.close()

    def abort(self) -> None:
        """Drop the connection now, with whatever it had still to send."""
        self._closing = True
        if self._transport is not None:
            self._transport.abort()

    def shutdown(self) -> None:
        """Server shutdown, first step: read no more commands."""
        if self._flow is not None:
            self._flow.pause("server shutting down")  # never resumed

    def tick(self, now: float) -> None:
        conn = self.conn
        if conn is None or self._closing:
            return
        flow = self._flow
        if self._held is not None and self.sender is not None and self.sender.peer_closed():
            # Reading is paused, so the loss would go unseen until room comes, and the
            # write the host gave up would land then.
            self.end_session("the host closed the connection while a write waited for room")
            return
        self._handle(conn.tick(now, idle=flow is None or not flow.paused_for(_ROOM, _FLUSHES)))
        self._send()


def _inline(lu: object, command: ScsiCommand) -> ScsiResponse | None:
    """The connection's inline lane: a plain READ/WRITE runs on the loop as it arrives
    (``LogicalUnit.fast_io`` declines anything else, having done nothing)."""
    return cast(LogicalUnit, lu).fast_io(command)


class IscsiServer:
    """The listening portal and its connections. Create with ``start_server``."""

    def __init__(self, targets: Iterable[Target], *, nop: NopPolicy | None = None,
                 grace: float = DEFAULT_GRACE, cmd_window: int = 128,
                 discovery_chap: ChapConfig | None = None, file_spans: bool = True,
                 poll_window: float = DEFAULT_POLL_WINDOW) -> None:
        self._cmd_window = cmd_window
        self.poll_window = poll_window
        self._poll_until = 0.0
        self._polling = False
        # Large reads go out with sendfile straight from the page cache (FileSpan).
        self.file_spans = file_spans
        self.set_targets(targets, discovery_chap=discovery_chap)
        self.nop = nop
        self.grace = grace
        self.connections: set[IscsiProtocol] = set()
        self.flush_pool = ThreadPoolExecutor(FLUSH_THREADS, thread_name_prefix="iscsi-flush")
        self.closing = False
        self._tsih = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._port = 0
        self._closed: asyncio.Task[None] | None = None

    def set_targets(self, targets: Iterable[Target], *,
                    discovery_chap: ChapConfig | None = None) -> None:
        """Replace what this portal exports. New logins and discovery see the change at
        once; sessions already logged in keep their target's LUN map object (so a map
        changed in place reaches them too) until they log out or are dropped."""
        self.targets: dict[str, Target] = {t.iqn.lower(): t for t in targets}
        self.portal = PortalConfig(
            targets={name: TargetEntry(t.iqn, t.alias, t.chap,
                                       None if t.allowed_initiators is None else
                                       frozenset(i.lower() for i in t.allowed_initiators),
                                       {k.lower(): v for k, v in t.acl_chap.items()})
                     for name, t in self.targets.items()},
            cmd_window=self._cmd_window,
            discovery_chap=discovery_chap,
        )  # fmt: skip

    def sessions(self) -> list[Nexus]:
        """The I_T nexus of every logged-in normal session on this portal."""
        return [p.nexus for p in self.connections if p.nexus is not None]

    def reinstate(self, new: IscsiProtocol) -> None:
        """``new`` logged in as the initiator port of a live session (InitiatorName and
        ISID, to the same target): session reinstatement (RFC 7143 section 6.3.5). The
        host has given the old session up, usually after a timeout it did not see the
        end of; its tasks end now, so that a write it held back for room cannot land
        after the host moved on."""
        nexus = new.nexus
        if nexus is None:
            return
        for old in [p for p in self.connections if p is not new and p.nexus == nexus]:
            old.end_session(f"session reinstated by a new login of {nexus.initiator_name}"
                            f" (ISID {nexus.isid.hex()})")

    def drop_sessions(self, target_iqn: str) -> int:
        """Close every connection logged in to ``target_iqn`` (a forced offline: hosts
        log in again and find the LU as it is now); returns how many."""
        name = target_iqn.lower()
        dropped = [p for p in self.connections
                   if p.nexus is not None and p.nexus.target_name.lower() == name]
        for protocol in dropped:
            protocol.close()
        return len(dropped)

    @property
    def port(self) -> int:
        """The TCP port listened on (useful after binding port 0)."""
        return self._port

    # --- what connections ask ---------------------------------------------------------------

    def luns_of(self, target_name: str) -> Mapping[int, object]:
        target = self.targets.get(target_name.lower())
        return target.luns if target is not None else {}

    def visible_to(self, initiator: str, local: object) -> list[VisibleTarget]:
        """SendTargets: the targets this initiator may log in to, at the address it used."""
        portals: tuple[Portal, ...] = ()
        if isinstance(local, tuple) and len(local) >= 2:
            portals = (Portal(str(local[0]), int(local[1]), self.portal.portal_group_tag),)
        who = initiator.lower()
        return [
            VisibleTarget(t.name, portals) for t in self.portal.targets.values()
            if t.allowed_initiators is None or who in t.allowed_initiators
        ]  # fmt: skip

    def allocate_tsih(self) -> int:
        return (next(self._tsih) - 1) % 0xFFFF + 1  # 16 bits, never 0 (RFC 7143 11.12.6)

    # --- lifecycle --------------------------------------------------------------------------

    async def _listen(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: IscsiProtocol(self), host, port,
                                                reuse_address=True)  # fmt: skip
        self._port = int(self._server.sockets[0].getsockname()[1])
        self._ticker = loop.call_later(TICK_SECONDS, self._tick)

    def keep_polling(self) -> None:
        """Keep the loop polling for ``poll_window`` seconds from now (DEFAULT_POLL_WINDOW):
        a callback that re-queues itself makes each loop iteration poll with no timeout."""
        if self.poll_window <= 0:
            return
        self._poll_until = time.perf_counter() + self.poll_window
        if not self._polling:
            self._polling = True
            asyncio.get_running_loop().call_soon(self._poll)

    def _poll(self) -> None:
        if not self.closing and time.perf_counter() < self._poll_until:
            asyncio.get_running_loop().call_soon(self._poll)
        else:
            self._polling = False

    @property
    def polling(self) -> bool:
        """Whether the loop is polling now (keep_polling)."""
        return self._polling

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        for protocol in list(self.connections):
            protocol.tick(now)
        if not self.closing:
            self._ticker = loop.call_later(TICK_SECONDS, self._tick)

    def close(self) -> None:
        """Stop accepting connections and reading commands; ``wait_closed`` finishes."""
        if self.closing:
            return
        self.closing = True
        if self._server is not None:
            self._server.close()
        if self._ticker is not None:
            self._ticker.cancel()
        for protocol in list(self.connections):
            protocol.shutdown()
        self._closed = asyncio.get_running_loop().create_task(self._shutdown())

    async def wait_closed(self) -> None:
        if self._closed is None:
            self.close()
        assert self._closed is not None
        await asyncio.shield(self._closed)

    async def _shutdown(self) -> None:
        flushing = {f for p in self.connections for f in p.flushing}
        if flushing:  # their status goes out from their done callbacks
            await asyncio.wait(flushing, timeout=self.grace)
        await asyncio.sleep(0)  # let those callbacks run
        waiting = [p.closed for p in list(self.connections)]
        for protocol in list(self.connections):
            protocol.close()
        if waiting:
            await asyncio.wait(waiting, timeout=self.grace)
        # A host that reads nothing would hold its connection open for ever: close() waits
        # for the answers queued for it to be sent.
        stuck = [p for p in self.connections if not p.closed.done()]
        for protocol in stuck:
            protocol.abort()
        if stuck:
            await asyncio.wait([p.closed for p in stuck], timeout=self.grace)
        if self._server is not None:
            await self._server.wait_closed()
        # Threads still in an fsync are left to finish; the volume's close waits for them.
        self.flush_pool.shutdown(wait=False)

    async def __aenter__(self) -> IscsiServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


async def start_server(targets: Iterable[Target], host: str = "127.0.0.1", port: int = 3260, *,
                       nop: NopPolicy | None = None, grace: float = DEFAULT_GRACE,
                       discovery_chap: ChapConfig | None = None, file_spans: bool = True,
                       poll_window: float = DEFAULT_POLL_WINDOW,
                       ) -> IscsiServer:  # fmt: skip
    """Listen on ``host:port`` (0 picks a free port: see ``IscsiServer.port``).

    ``discovery_chap``: CHAP that discovery sessions must pass (none by default).
    ``file_spans``: send large reads with sendfile (module docstring).
    ``poll_window``: seconds the loop keeps polling after a receive (DEFAULT_POLL_WINDOW)."""
    server = IscsiServer(targets, nop=nop, grace=grace, discovery_chap=discovery_chap,
                         file_spans=file_spans, poll_window=poll_window)
    await server._listen(host, port)
    return server
