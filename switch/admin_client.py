"""A blocking admin API client over a plain unix socket (``cdpswitch shell`` uses it).

One :class:`AdminClient` holds one connection, opened at the first call and reopened after
it breaks, and runs one call at a time (it is not thread-safe). A KeyboardInterrupt during a
call does not abandon the request: the client sends ``cancel`` for it and keeps waiting for
its final answer, so Ctrl-C on a rewind leaves the volume as it was. A second Ctrl-C while
waiting drops the connection, which makes the daemon cancel the request anyway.
"""

from __future__ import annotations

import os
import shlex
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from switch.admin_protocol import (
    AdminError,
    ErrorAnswer,
    ErrorKind,
    ProgressAnswer,
    ProgressFn,
    ResultAnswer,
    decode_answer,
    encode_request,
)

__all__ = ["SOCKET_NAME", "AdminClient", "socket_path"]

SOCKET_NAME = "admin.sock"
_RECV_SIZE = 1 << 16


def socket_path(data_dir: str | os.PathLike[str]) -> str:
    """The admin socket of the daemon using ``data_dir``."""
    return os.fspath(Path(data_dir) / SOCKET_NAME)


class AdminClient:
    """Calls admin API methods on the daemon listening on ``path``.

    ``timeout`` bounds the wait for each line from the daemon (progress lines count, so a
    long operation that reports progress does not time out); None waits forever.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float | None = None) -> None:
        self._path = os.fspath(path)
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._next_id = 1
        # Ids whose answers nobody waits for any more (our own cancel requests).
        self._ignored: set[int] = set()

    @property
    def path(self) -> str:
        return self._path

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._buf.clear()
        self._ignored.clear()

    # -- connection --------------------------------------------------------------------------

    def _unavailable(self) -> AdminError:
        data_dir = "DIR"
        if os.path.basename(self._path) == SOCKET_NAME:
            data_dir = shlex.quote(os.path.dirname(self._path) or ".")
        return AdminError(
            ErrorKind.UNAVAILABLE,
            f"no cdpswitch daemon on {self._path}: "
            f"start it with `cdpswitch serve --data-dir {data_dir}`",
        )

    def _connect(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._timeout)
        try:
            sock.connect(self._path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            raise self._unavailable() from e
        except PermissionError as e:
            sock.close()
            raise AdminError(
                ErrorKind.UNAVAILABLE,
                f"not allowed to use {self._path} (mode 0600: run as the daemon's user)",
            ) from e
        except OSError as e:
            sock.close()
            raise AdminError(ErrorKind.UNAVAILABLE, f"cannot connect to {self._path}: {e}") from e
        self._sock = sock
        return sock

    def _lost(self, why: str) -> AdminError:
        self.close()
        return AdminError(ErrorKind.UNAVAILABLE, f"{why} ({self._path})")

    def _send(self, line: bytes) -> None:
        sock = self._connect()
        try:
            sock.sendall(line)
        except TimeoutError as e:
            raise self._lost("the daemon does not take requests") from e
        except OSError as e:
            raise self._lost(f"lost the connection to the daemon: {e}") from e
        except BaseException:
            # Interrupted half-way through a line: the stream cannot be trusted any more.
            self.close()
            raise

    def _read_line(self) -> bytes:
        sock = self._connect()
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                line = bytes(self._buf[:end])
                del self._buf[: end + 1]
                return line
            try:
                data = sock.recv(_RECV_SIZE)
            except TimeoutError as e:
                raise self._lost(f"no answer from the daemon within {self._timeout} s") from e
            except OSError as e:
                raise self._lost(f"lost the connection to the daemon: {e}") from e
            if not data:
                raise self._lost("the daemon closed the connection")
            self._buf += data

    def _take_id(self) -> int:
        request_id = self._next_id
        self._next_id += 1
        return request_id

    # -- calls -------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        params: Mapping[str, Any] | None = None,
        on_progress: ProgressFn | None = None,
    ) -> Any:
        """Call ``method`` and return its result; raises AdminError with the daemon's kind.

        ``on_progress(what, done, total)`` is called for each progress line. On
        KeyboardInterrupt the request is cancelled and this still returns or raises its
        final answer (normally AdminError of kind ``cancelled``).
        """
        request_id = self._take_id()
        self._send(encode_request(request_id, method, params))
        cancel_sent = False
        while True:
            try:
                answer = decode_answer(self._read_line())
                if answer.id is None and isinstance(answer, ErrorAnswer):
                    # About the connection rather than one request (a line we sent was
                    # malformed or too long); the daemon may close the connection next.
                    self.close()
                    raise answer.exception()
                if answer.id != request_id:
                    if answer.id in self._ignored and not isinstance(answer, ProgressAnswer):
                        self._ignored.discard(answer.id)
                    continue
                if isinstance(answer, ResultAnswer):
                    return answer.result
                if isinstance(answer, ErrorAnswer):
                    raise answer.exception()
                if on_progress is not None:
                    on_progress(answer.what, answer.done, answer.total)
            except KeyboardInterrupt:
                if cancel_sent:
                    self.close()  # the daemon cancels the requests of a closed connection
                    raise
                cancel_sent = True
                self._cancel(request_id)

    def _cancel(self, request_id: int) -> None:
        cancel_id = self._take_id()
        self._ignored.add(cancel_id)
        self._send(encode_request(cancel_id, "cancel", {"request": request_id}))
