"""The admin API server: a unix stream socket speaking ``switch.admin_protocol``.

Theory of operation. :func:`start_admin_server` binds the socket (mode 0600 from the start)
and serves every connection with a :class:`_Connection`: a loop that reads one line at a
time and dispatches it. Each request runs as its own asyncio task, so a long rewind does not
hold up a ``status`` on the same connection; ``cancel`` is answered by the server itself by
cancelling the task of the named request. Every request gets exactly one final line:

- the method's return value -> ``result``;
- :class:`AdminError` -> ``error`` with its kind;
- ``asyncio.CancelledError`` (``cancel``, client gone, server closing) -> kind ``cancelled``;
- any other exception -> kind ``internal``, logged with its traceback; the daemon goes on.

Methods report progress by calling the ``ProgressFn`` they are given, from the event loop or
from a worker thread; :class:`_ProgressThrottle` sends at most one line per
``PROGRESS_INTERVAL`` per request and always sends the last value before the final line.

A client that disconnects (EOF) has its in-flight requests cancelled. Lines longer than
``MAX_LINE`` close the connection after an error line (the rest of the line cannot be told
apart from the next request).
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import math
import os
import socket
import stat
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from switch.admin_protocol import (
    MAX_LINE,
    AdminError,
    ErrorKind,
    MalformedRequest,
    MethodFn,
    Request,
    decode_request,
    encode_error,
    encode_progress,
    encode_result,
    redact_params,
    redact_text,
    secret_values,
)

__all__ = ["CANCEL_METHOD", "PROGRESS_INTERVAL", "AdminServer", "start_admin_server"]

log = logging.getLogger(__name__)

CANCEL_METHOD = "cancel"
# At most ten progress lines a second per request: enough for a smooth progress bar, little
# enough that a client reading slowly is not buried.
PROGRESS_INTERVAL = 0.1
# How long to wait for a daemon that may already be listening on the path.
_PROBE_TIMEOUT = 2.0
# At shutdown, how long a peer gets to read its last lines before its connection is cut.
_CLOSE_GRACE = 2.0

_Update = tuple[str, int, int]


class _ProgressThrottle:
    """The ``ProgressFn`` handed to a method: thread-safe, rate-limited, last value kept.

    ``__call__`` only records the newest value and, if no send is pending, arms one on the
    event loop (directly, or with ``call_soon_threadsafe`` from a worker thread). A send at
    least ``interval`` after the previous one happens at once; an earlier one waits for the
    interval to pass, taking whatever value is newest by then. :meth:`close` sends a value
    still pending and ignores later calls (a worker thread may outlive its request).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        send: Callable[[str, int, int], None],
        interval: float = PROGRESS_INTERVAL,
    ) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._send = send
        self._interval = interval
        self._lock = threading.Lock()
        self._pending: _Update | None = None
        self._armed = False
        self._closed = False
        self._last_sent = -math.inf
        self._timer: asyncio.TimerHandle | None = None

    def __call__(self, what: str, done: int, total: int) -> None:
        update = (str(what), int(done), int(total))
        with self._lock:
            if self._closed:
                return
            self._pending = update
            if self._armed:
                return
            self._armed = True
        if threading.get_ident() == self._loop_thread:
            self._arm()
        else:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
                self._loop.call_soon_threadsafe(self._arm)

    def _arm(self) -> None:
        if self._closed:
            return
        delay = self._last_sent + self._interval - self._loop.time()
        if delay <= 0:
            self._flush()
        else:
            self._timer = self._loop.call_later(delay, self._flush)

    def _flush(self) -> None:
        self._timer = None
        with self._lock:
            update, self._pending = self._pending, None
            self._armed = False
            if self._closed:
                return
        if update is not None:
            self._last_sent = self._loop.time()
            self._send(*update)

    def close(self) -> None:
        """Send the value still pending, if any; later calls do nothing. Loop thread only."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        with self._lock:
            update, self._pending = self._pending, None
            self._closed = True
        if update is not None:
            self._send(*update)


class _InFlight:
    """One request running on a connection."""

    __slots__ = ("answered", "cancelling", "request", "task")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.task: asyncio.Task[None] | None = None
        self.answered = False  # its final line is written: too late to cancel
        self.cancelling = False

    def cancel(self) -> bool:
        """Cancel the task once: a second cancel would interrupt the method's undo."""
        if self.answered or self.task is None:
            return False
        if not self.cancelling:
            self.cancelling = True
            self.task.cancel()
        return True


def _describe(request: Request) -> str:
    return f"{request.method} #{request.id}"


class _Connection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        methods: Mapping[str, MethodFn],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._methods = methods
        self._loop = asyncio.get_running_loop()
        self._inflight: dict[int, _InFlight] = {}
        self.closing = False  # the server is shutting down: no more waiting on the peer

    # -- output ------------------------------------------------------------------------------

    def _write(self, line: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(line)

    async def _drain(self) -> None:
        # While the server shuts down, lines stay buffered until the transport is closed
        # (which flushes them) so that a peer that does not read cannot hold shutdown up.
        if self.closing:
            return
        with contextlib.suppress(ConnectionError):
            await self._writer.drain()

    def _write_error(
        self, request_id: int | None, kind: ErrorKind, message: str, secrets: list[str]
    ) -> None:
        self._write(encode_error(request_id, kind, redact_text(message, secrets)))

    # -- input -------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Read and dispatch lines until EOF or an oversized line."""
        while True:
            try:
                line = await self._reader.readline()
            except ValueError:  # longer than the reader's limit (MAX_LINE)
                log.warning("admin: request line longer than %d bytes; closing", MAX_LINE)
                self._write(
                    encode_error(
                        None,
                        ErrorKind.INVALID,
                        f"request line longer than {MAX_LINE} bytes; closing the connection",
                    )
                )
                await self._drain()
                return
            except ConnectionError:
                return
            if not line.endswith(b"\n"):  # EOF, perhaps after an unterminated line
                return
            if line.strip():
                self._dispatch(line)
                await self._drain()

    def _dispatch(self, line: bytes) -> None:
        try:
            request = decode_request(line)
        except MalformedRequest as e:
            log.info("admin: malformed request: %s", e.message)
            self._write(encode_error(e.request_id, e.kind, e.message))
            return
        secrets = secret_values(request.params)
        log.debug("admin: %s params=%s", _describe(request), redact_params(request.params))
        if request.method == CANCEL_METHOD:
            self._cancel(request)
            return
        fn = self._methods.get(request.method)
        if fn is None:
            self._write_error(
                request.id, ErrorKind.INVALID, self._unknown_method(request.method), secrets
            )
            return
        if request.id in self._inflight:
            self._write_error(
                request.id,
                ErrorKind.INVALID,
                f"request id {request.id} is already in flight on this connection",
                secrets,
            )
            return
        entry = _InFlight(request)
        entry.task = asyncio.create_task(
            self._run(entry, fn, secrets), name=f"admin {_describe(request)}"
        )
        self._inflight[request.id] = entry
        entry.task.add_done_callback(lambda _t: self._finished(entry))

    def _unknown_method(self, name: str) -> str:
        names = [*self._methods, CANCEL_METHOD]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        return f"unknown method {name!r}{hint}"

    def _cancel(self, request: Request) -> None:
        target = request.params.get("request")
        if not isinstance(target, int) or isinstance(target, bool):
            self._write(
                encode_error(
                    request.id, ErrorKind.INVALID, "cancel needs params.request: an integer id"
                )
            )
            return
        entry = self._inflight.get(target)
        cancelled = entry is not None and entry.cancel()
        if cancelled and entry is not None:
            log.info("admin: cancelling %s", _describe(entry.request))
        self._write(encode_result(request.id, {"cancelled": cancelled}))

    # -- requests ----------------------------------------------------------------------------

    async def _run(self, entry: _InFlight, fn: MethodFn, secrets: list[str]) -> None:
        request = entry.request
        started = time.monotonic()

        def send_progress(what: str, done: int, total: int) -> None:
            self._write(encode_progress(request.id, redact_text(what, secrets), done, total))

        progress = _ProgressThrottle(self._loop, send_progress)
        try:
            try:
                result = await fn(request.params, progress)
            finally:
                progress.close()  # the last progress line goes out before the final one
            line = encode_result(request.id, result)
        except AdminError as e:
            message = redact_text(e.message, secrets)
            log.info("admin: %s failed (%s): %s", _describe(request), e.kind.value, message)
            line = encode_error(request.id, e.kind, message)
        except asyncio.CancelledError:
            log.info("admin: %s cancelled", _describe(request))
            line = self._cancelled_line(request)
        except Exception as e:
            line = self._internal_error(request, e, secrets)
        else:
            log.debug("admin: %s ok in %.3f s", _describe(request), time.monotonic() - started)
        entry.answered = True
        self._write(line)
        await self._drain()

    @staticmethod
    def _cancelled_line(request: Request) -> bytes:
        return encode_error(
            request.id, ErrorKind.CANCELLED, f"request {request.id} ({request.method}) cancelled"
        )

    @staticmethod
    def _internal_error(request: Request, exc: BaseException, secrets: list[str]) -> bytes:
        # The traceback is formatted here, not passed as exc_info, so that secrets in the
        # exception's message can be taken out of the log line too.
        trace = redact_text("".join(traceback.format_exception(exc)), secrets)
        log.error(
            "admin: %s raised a bug (params=%s):\n%s",
            _describe(request),
            redact_params(request.params),
            trace.rstrip(),
        )
        message = redact_text(f"{type(exc).__name__}: {exc}", secrets)
        return encode_error(
            request.id,
            ErrorKind.INTERNAL,
            f"internal error (a bug in cdpswitch) in {request.method}: {message}",
        )

    def _finished(self, entry: _InFlight) -> None:
        request = entry.request
        if self._inflight.get(request.id) is entry:
            del self._inflight[request.id]
        task = entry.task
        if entry.answered or task is None:
            return
        # The task ended without writing its final line: it was cancelled before it first
        # ran (so its body never started), or the method's own cleanup failed badly.
        entry.answered = True
        if task.cancelled():
            self._write(self._cancelled_line(request))
        else:
            exc = task.exception()
            if exc is not None:
                self._write(self._internal_error(request, exc, []))

    # -- shutdown ----------------------------------------------------------------------------

    def request_tasks(self) -> list[asyncio.Task[None]]:
        return [e.task for e in self._inflight.values() if e.task is not None]

    def cancel_requests(self) -> list[asyncio.Task[None]]:
        """Cancel every request in flight; returns their tasks, to be waited for."""
        tasks = self.request_tasks()
        if tasks:
            log.info("admin: cancelling %d request(s) of a closing connection", len(tasks))
        for entry in self._inflight.values():
            entry.cancel()
        return tasks

    def close_transport(self, abort: bool = False) -> None:
        if abort:
            self._writer.transport.abort()
        else:
            self._writer.close()  # sends what is buffered first; the reader then sees EOF

    async def close(self) -> None:
        """Cancel what is in flight, wait for the final lines, then close the stream."""
        tasks = self.cancel_requests()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._drain()
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()


class AdminServer:
    """A running admin API server; use :func:`start_admin_server` to make one."""

    def __init__(
        self, path: str, methods: Mapping[str, MethodFn], sock: socket.socket, inode: int
    ) -> None:
        self._path = path
        self._methods = methods
        self._sock = sock
        self._inode = inode
        self._server: asyncio.AbstractServer | None = None
        self._connections: dict[asyncio.Task[Any], _Connection] = {}
        self._closing = False

    @property
    def path(self) -> str:
        return self._path

    async def _start(self) -> None:
        self._server = await asyncio.start_unix_server(
            self._handle, sock=self._sock, limit=MAX_LINE
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(reader, writer, self._methods)
        if self._closing:
            await conn.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = conn
        log.debug("admin: client connected")
        try:
            await conn.serve()
        finally:
            try:
                await conn.close()
            finally:
                del self._connections[task]
                log.debug("admin: client disconnected")

    def close(self) -> None:
        """Stop accepting connections (connections already open keep being served)."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()

    async def wait_closed(self) -> None:
        """Close, cancel every request in flight, close every connection, remove the socket.

        Cancelled requests are waited for without a time limit (a cancelled rewind must be
        allowed to undo its work) and their final lines are sent; only a peer that does not
        read them is cut off, after ``_CLOSE_GRACE`` seconds.
        """
        self.close()
        conns = dict(self._connections)
        requests: list[asyncio.Task[None]] = []
        for conn in conns.values():
            conn.closing = True
            requests.extend(conn.cancel_requests())
        await asyncio.gather(*requests, return_exceptions=True)
        for conn in conns.values():
            conn.close_transport()
        if conns:
            _done, pending = await asyncio.wait(conns, timeout=_CLOSE_GRACE)
            for task in pending:
                conns[task].close_transport(abort=True)
            await asyncio.gather(*conns, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        _remove_socket_if_ours(self._path, self._inode)

    async def __aenter__(self) -> AdminServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.wait_closed()


def _remove_socket_if_ours(path: str, inode: int) -> None:
    # A newer daemon may have replaced a socket we no longer own: leave that one alone.
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass


async def _refuse_if_live(path: str) -> None:
    """Raise if something answers on ``path``; remove a stale socket left by a crash."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AdminError(ErrorKind.CONFLICT, f"{path} exists and is not a socket; not touching it")
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(path), timeout=_PROBE_TIMEOUT
        )
    except (ConnectionRefusedError, FileNotFoundError):
        log.info("admin: removing stale socket %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    except TimeoutError as e:  # a listener whose backlog is full is still a listener
        raise AdminError(
            ErrorKind.CONFLICT, f"a cdpswitch daemon already listens on {path} (busy)"
        ) from e
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    raise AdminError(ErrorKind.CONFLICT, f"a cdpswitch daemon is already running on {path}")


def _bind_private(path: str) -> tuple[socket.socket, int]:
    """A listening unix socket at ``path`` that is mode 0600 from the moment it exists."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # bind() creates the file with the process umask applied; 0177 leaves rw for the
        # owner only, so there is no moment when anyone else may connect. The umask is
        # process-wide, so it is restored at once; the chmod fixes the mode regardless.
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        os.chmod(path, 0o600)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
        return sock, os.lstat(path).st_ino
    except BaseException:
        sock.close()
        raise


async def start_admin_server(path: str, methods: Mapping[str, MethodFn]) -> AdminServer:
    """Serve ``methods`` on the unix socket ``path``.

    ``methods`` maps method names (``"volume.rewind"``) to coroutine functions taking
    ``(params, progress)``; it is read at each request, so it may be filled in later.
    ``cancel`` is the server's own. Raises AdminError (kind ``conflict``) when a daemon
    already answers on ``path`` or the path is something other than a socket.
    """
    if CANCEL_METHOD in methods:
        raise ValueError(f"{CANCEL_METHOD!r} is handled by the admin server itself")
    path = os.fspath(path)
    await _refuse_if_live(path)
    sock, inode = _bind_private(path)
    server = AdminServer(path, methods, sock, inode)
    try:
        await server._start()
    except BaseException:
        sock.close()
        _remove_socket_if_ours(path, inode)
        raise
    log.info("admin: listening on %s", path)
    return server
