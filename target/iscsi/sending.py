"""The send path of one iSCSI connection, and why its reading is paused: the I/O half of
the shell (server.py) that puts a connection's answers on its socket.

Theory of operation:

- Each batch the connection queued (a receive's answers, a tick's, a finished flush's)
  goes out in ONE ``writev`` (sendmsg) of its buffer list: payloads are never joined.
  Under asyncio's selector loop we write the socket ourselves, which is safe while the
  transport holds nothing; other loops (uvloop) get the transport's ``writelines``,
  which they implement as writev. While the transport holds bytes, later batches go
  through it too: it keeps the order.
- Large reads of applied data come as file spans (``Volume.read_span``): a batch that
  holds them is sent with ``sendmsg`` for headers (MSG_MORE, so a header leaves with its
  data) and ``os.sendfile`` for the data, straight from the page cache: one copy of each
  byte fewer, about a third of the CPU of a 1 MiB read. Under asyncio's loop and uvloop
  alike on our own duplicate of the socket, which is safe while the transport holds
  nothing.
- What our own sends leave (the socket is full) waits in the send backlog, spans as
  spans and views as views, and goes out when the socket is writable (a writer callback
  on our duplicate); later batches queue behind it. Handing it to the transport instead
  would read each span into bytes, to be copied again when sent. Reading pauses while
  the backlog is above ``BACKLOG_HIGH``: an initiator that does not read its Data-In
  must not make us queue reads without bound.
- Closing waits for the backlog to be sent, as the transport's own close waits for what
  it holds. Read data that can no longer be read (its volume closed) ends the
  connection: never another file's bytes, nor zeros with GOOD status.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import select
import socket
from collections.abc import Iterable, Sequence
from typing import cast

from volume_manager.blockdev import FileSpan, SpanSourceClosed, copy_mapped, is_mapped

from .pdu import Buffer, OutBuffer

__all__ = ["BACKLOG_HIGH", "BACKLOG_LOW", "ReadFlow", "Sender"]

log = logging.getLogger(__name__)

# Bytes of answers waiting in a connection's send backlog above which reading pauses,
# and below which it resumes: a queue depth of 8 MiB reads fits, so a host reading at
# full speed is not paused; most of it is file spans, which hold no memory.
BACKLOG_HIGH = 8 << 20
BACKLOG_LOW = 2 << 20
_BACKLOG = "send backlog"
# The peer sent FIN (RDHUP), or the connection is reset or broken (HUP, ERR: reported
# whether asked for or not).
_PEER_GONE = getattr(select, "POLLRDHUP", 0) | select.POLLHUP | select.POLLERR
_MORE = getattr(socket, "MSG_MORE", 0)  # Linux: hold a header back for the data after it
try:
    _IOV_MAX = os.sysconf("SC_IOV_MAX")
except (ValueError, OSError):  # pragma: no cover - every Linux has it
    _IOV_MAX = 1024


class ReadFlow:
    """Why reading from a connection is paused; it resumes when no reason is left (uvicorn
    ``flow_control.py``)."""

    __slots__ = ("_reasons", "_transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self._reasons and not self._transport.is_closing():
            self._transport.pause_reading()
        self._reasons.add(reason)

    def paused_for(self, *reasons: str) -> bool:
        return not self._reasons.isdisjoint(reasons)

    def resume(self, reason: str) -> None:
        if reason not in self._reasons:
            return
        self._reasons.discard(reason)
        if not self._reasons and not self._transport.is_closing():
            self._transport.resume_reading()


class Sender:
    """Puts one connection's batches on its socket (module docstring)."""

    def __init__(self, transport: asyncio.Transport, flow: ReadFlow) -> None:
        self._transport = transport
        self._flow = flow
        self._fd = -1  # the socket's descriptor when we write it directly
        self._sock: socket.socket | None = None  # our own, when spans are sent on it
        sock = transport.get_extra_info("socket")
        loop = asyncio.get_running_loop()
        plain = sock is not None and transport.get_extra_info("sslcontext") is None
        # Plain batches go to the socket directly only under asyncio's selector loop
        # (whose transport holds nothing we could overtake while its buffer is empty).
        if plain and isinstance(loop, asyncio.SelectorEventLoop):
            self._fd = sock.fileno()
        # Batches with file spans, also under uvloop, whose transport holds nothing
        # either while its write buffer size is 0.
        uvloop = type(loop).__module__.startswith("uvloop")
        # What the transport holds it may copy in user space (asyncio's join); uvloop's
        # keeps the buffers and lets the kernel read them. That decides whether views of
        # a file mapping are copied before it gets them (_materialized).
        self._copy_views = not uvloop
        if plain and (self._fd >= 0 or uvloop):
            # A socket object of our own (a duplicate descriptor): uvloop's stand-in
            # socket has no sendmsg and builds a socket object per setsockopt.
            self._sock = sock.dup()
        # What the socket did not take from our own sends, its size, whether _drain
        # waits for the socket to be writable, and whether the transport is to be
        # closed once the backlog is sent.
        self.backlog: collections.deque[OutBuffer] = collections.deque()
        self._backlog_bytes = 0
        self._writer = False
        self._close_after_backlog = False

    @property
    def spans_ok(self) -> bool:
        """Whether read data may come as file spans (we send on a socket of our own)."""
        return self._sock is not None

    @property
    def closing(self) -> bool:
        return self._transport.is_closing() or self._close_after_backlog

    def send(self, buffers: list[OutBuffer], spans: bool) -> None:
        """Send a batch, in order behind what is still waiting; ``spans``: file spans
        may be among the buffers (``Connection.spans_queued``). Dropped once closing."""
        if not buffers or self.closing:
            return
        if self.backlog:
            self._defer(buffers)
        elif spans:
            self._write_spans(buffers)
        else:
            self._write(cast(list[Buffer], buffers))

    def close(self) -> None:
        """Close the connection once everything queued is sent."""
        if self.closing:
            return
        if self.backlog:  # _drain closes the transport once the backlog is sent
            self._close_after_backlog = True
        else:
            self._transport.close()  # sends what the transport still holds, then closes

    def peer_closed(self) -> bool:
        """Whether the host has closed or reset the connection, seen without reading
        from it (reading may be paused): poll(2) on our socket, not waiting. False when
        we have no socket of our own."""
        sock = self._sock
        if sock is None:
            return False
        poller = select.poll()
        poller.register(sock.fileno(), _PEER_GONE)
        return bool(poller.poll(0))

    def lost(self) -> None:
        """The connection is gone: forget what waits, let our socket go."""
        self._drop_backlog()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # --- our own sends ----------------------------------------------------------------------

    def _write(self, buffers: list[Buffer]) -> None:
        transport, fd = self._transport, self._fd
        if fd < 0 or transport.get_write_buffer_size():
            # The transport keeps order behind bytes it holds. No span is among these
            # buffers: uvloop's (the common case) takes them as they are.
            if self._copy_views:
                self._queue(buffers)
            else:
                transport.writelines(buffers)
            return
        for start in range(0, len(buffers), _IOV_MAX):
            group = buffers[start : start + _IOV_MAX]
            try:
                # writev is sendmsg without ancillary data; asyncio's TransportSocket wrapper
                # hides sendmsg, but the descriptor is the connected, non-blocking socket.
                sent = os.writev(fd, group)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:  # let the transport meet the error and report connection_lost
                self._queue(buffers[start:])
                return
            rest = _remainder(group, sent)
            if rest:  # the socket buffer is full: the rest waits until it is writable
                self._defer([*rest, *buffers[start + _IOV_MAX :]])
                return

    def _write_spans(self, buffers: list[OutBuffer]) -> None:
        """Send a batch that holds file spans (``_push``); what the socket does not take
        waits in the backlog. A transport holding bytes keeps the order: it gets the
        batch, spans read into bytes."""
        sock = self._sock
        if sock is None or self._transport.get_write_buffer_size():
            self._queue(buffers)
            return
        queue = collections.deque(buffers)
        try:
            _push(sock, queue)
        except SpanSourceClosed as exc:  # the volume went away under the read
            self._lost_read_data(exc)
            return
        except OSError as exc:
            self._broken(exc)
            return
        if queue:
            self._defer(queue)

    def _queue(self, buffers: Sequence[OutBuffer]) -> None:
        """Leave ``buffers`` to the transport, which sends them when the socket takes
        them: as bytes it may copy (_materialized). Read data that cannot be read now
        ends the connection; the initiator's retry meets the error as a read's."""
        try:
            self._transport.writelines(_materialized(buffers, self._copy_views))
        except OSError as exc:  # SpanSourceClosed: the volume went away under the read
            self._lost_read_data(exc)

    def _lost_read_data(self, exc: OSError) -> None:
        """Read data could not be read when it was to be sent: end the connection."""
        log.warning("closing iSCSI connection: read data lost before it was sent: %s", exc)
        self._transport.abort()

    def _broken(self, exc: OSError) -> None:
        """A send of ours failed: the connection is broken."""
        log.debug("iSCSI connection broken: %s", exc)
        self._transport.abort()

    # --- the send backlog -------------------------------------------------------------------

    def _defer(self, buffers: Iterable[OutBuffer]) -> None:
        """Queue ``buffers`` behind the backlog; they go out when the socket takes them."""
        sock = self._sock
        assert sock is not None  # only our own sends leave a backlog
        backlog = self.backlog
        size = 0
        for buf in buffers:
            backlog.append(buf)
            size += buf.length if isinstance(buf, FileSpan) else memoryview(buf).nbytes
        self._backlog_bytes += size
        if not self._writer:
            self._writer = True
            asyncio.get_running_loop().add_writer(sock.fileno(), self._drain)
        if self._backlog_bytes > BACKLOG_HIGH:
            self._flow.pause(_BACKLOG)

    def _drain(self) -> None:
        """The socket is writable: send from the backlog."""
        sock = self._sock
        assert sock is not None
        try:
            self._backlog_bytes -= _push(sock, self.backlog)
        except SpanSourceClosed as exc:
            self._drop_backlog()
            self._lost_read_data(exc)
            return
        except OSError as exc:
            self._drop_backlog()
            self._broken(exc)
            return
        if not self.backlog:
            self._drop_backlog()
            if self._close_after_backlog:
                self._transport.close()
        elif self._backlog_bytes <= BACKLOG_LOW:
            self._flow.resume(_BACKLOG)

    def _drop_backlog(self) -> None:
        """Forget the backlog (sent, or the connection is gone); stop waiting to send."""
        self.backlog.clear()
        self._backlog_bytes = 0
        if self._writer:
            self._writer = False
            if self._sock is not None:
                asyncio.get_running_loop().remove_writer(self._sock.fileno())
        self._flow.resume(_BACKLOG)


def _push(sock: socket.socket, queue: collections.deque[OutBuffer]) -> int:
    """Send from the front of ``queue`` until it is empty or the socket is full, taking
    off what was sent: plain buffers with sendmsg, file spans with sendfile. Buffers
    followed by more go with MSG_MORE, so that a Data-In header and its data leave in one
    segment. Returns the bytes sent; raises OSError (SpanSourceClosed included)."""
    fd = sock.fileno()
    total = 0
    while queue:
        first = queue[0]
        if type(first) is FileSpan:
            sent = first.send(fd)
            total += sent
            if sent < first.length:
                queue[0] = first[sent:]
                return total
            queue.popleft()
            continue
        group: list[Buffer] = []
        for buf in queue:
            if type(buf) is FileSpan or len(group) == _IOV_MAX:
                break
            group.append(cast(Buffer, buf))
        try:
            sent = sock.sendmsg(group, (), _MORE if len(group) < len(queue) else 0)
        except (BlockingIOError, InterruptedError):
            return total
        total += sent
        for buf in group:
            size = memoryview(buf).nbytes
            if sent < size:  # the socket is full
                queue[0] = memoryview(buf).cast("B")[sent:]
                return total
            sent -= size
            queue.popleft()
    return total


def _materialized(buffers: Sequence[OutBuffer], copy_views: bool) -> list[Buffer]:
    """The buffers as a transport may queue them: file spans read into bytes and, for a
    transport that copies in user space (``copy_views``), views of a file mapping copied
    by the kernel (blockdev.FileMap says why). Raises OSError for data that cannot be
    read."""
    return [buf.read() if isinstance(buf, FileSpan)
            else copy_mapped(buf) if copy_views and is_mapped(buf)
            else buf for buf in buffers]  # fmt: skip


def _remainder(buffers: Sequence[Buffer], sent: int) -> list[Buffer]:
    """What ``sendmsg`` left of ``buffers`` after ``sent`` bytes."""
    for i, buf in enumerate(buffers):
        size = memoryview(buf).nbytes
        if sent < size:
            return [memoryview(buf).cast("B")[sent:], *buffers[i + 1 :]]
        sent -= size
    return []
