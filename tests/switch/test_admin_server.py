"""The admin API server and client over real unix sockets, with a small method table."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest

from switch.admin_client import AdminClient, socket_path
from switch.admin_protocol import MAX_LINE, AdminError, ErrorKind, MethodFn, ProgressFn
from switch.admin_server import AdminServer, start_admin_server

SECRET = "hunter2-chap-secret"


class Probe:
    """What the methods saw; thread-safe so the blocking-client tests can read it too."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.finished = threading.Event()


def method_table(probe: Probe) -> dict[str, MethodFn]:
    async def echo(params: dict[str, Any], progress: ProgressFn) -> Any:
        return params

    async def slow(params: dict[str, Any], progress: ProgressFn) -> Any:
        steps = int(params.get("steps", 1000))
        probe.started.set()
        try:
            for i in range(steps):
                progress("slow", i + 1, steps)
                await asyncio.sleep(float(params.get("delay", 0.01)))
        except asyncio.CancelledError:
            probe.cancelled.set()  # a real method undoes its work here
            raise
        probe.finished.set()
        return {"steps": steps}

    async def stubborn(params: dict[str, Any], progress: ProgressFn) -> Any:
        progress("work", 0, 1)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            for i in range(50):  # a slow undo that reports progress
                progress("undo", i + 1, 50)
                await asyncio.sleep(0.02)
            probe.cancelled.set()
            raise
        return None

    async def burst(params: dict[str, Any], progress: ProgressFn) -> Any:
        total = int(params["total"])
        for i in range(total):
            progress("burst", i + 1, total)
            if i % 10 == 0:
                await asyncio.sleep(0.01)
        return "done"

    async def threaded(params: dict[str, Any], progress: ProgressFn) -> Any:
        def work() -> int:
            for i in range(200):
                progress("threaded", i + 1, 200)
                time.sleep(0.001)
            return 200

        return await asyncio.to_thread(work)

    async def fails(params: dict[str, Any], progress: ProgressFn) -> Any:
        raise AdminError("not_found", f"no volume named {params.get('volume')!r}")

    async def leaks(params: dict[str, Any], progress: ProgressFn) -> Any:
        raise AdminError("refused", f"bad password {params.get('password')}")

    async def bug(params: dict[str, Any], progress: ProgressFn) -> Any:
        return {"x": 1} [params.get("key", "missing")]  # fmt: skip

    async def leaky_bug(params: dict[str, Any], progress: ProgressFn) -> Any:
        raise RuntimeError(f"login failed with {params.get('mutual_password')}")

    async def unserialisable(params: dict[str, Any], progress: ProgressFn) -> Any:
        return {"x": object()}

    return {
        "echo": echo,
        "slow": slow,
        "burst": burst,
        "stubborn": stubborn,
        "threaded": threaded,
        "fails": fails,
        "leaks": leaks,
        "bug": bug,
        "leaky_bug": leaky_bug,
        "unserialisable": unserialisable,
        "volume.rewind": slow,
    }


class Peer:
    """A raw client: sends lines, reads answers as dicts."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, path: str) -> Peer:
        reader, writer = await asyncio.open_unix_connection(path, limit=8 * MAX_LINE)
        return cls(reader, writer)

    async def send(self, message: dict[str, Any] | bytes) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode() + b"\n"
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self, timeout: float = 5.0) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), timeout)
        assert line.endswith(b"\n"), f"connection closed: {line!r}"
        answer = json.loads(line)
        assert isinstance(answer, dict)
        return answer

    async def call(self, request_id: int, method: str, **params: Any) -> dict[str, Any]:
        await self.send({"id": request_id, "method": method, "params": params})
        return await self.final(request_id)

    async def final(self, request_id: int) -> dict[str, Any]:
        while True:
            answer = await self.recv()
            if answer["id"] == request_id and "progress" not in answer:
                return answer

    async def close(self) -> None:
        self.writer.close()
        with suppress(ConnectionError):
            await self.writer.wait_closed()


@asynccontextmanager
async def serving(path: Path, probe: Probe | None = None) -> AsyncIterator[AdminServer]:
    server = await start_admin_server(str(path), method_table(probe or Probe()))
    try:
        yield server
    finally:
        await server.wait_closed()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 30))


@pytest.fixture
def sock(tmp_path: Path) -> Path:
    return tmp_path / "admin.sock"


# --- the socket ----------------------------------------------------------------------------


def test_socket_is_mode_0600_and_removed_on_close(sock: Path) -> None:
    async def scenario() -> None:
        umask = os.umask(0o022)
        try:
            async with serving(sock):
                st = os.stat(sock)
                assert stat.S_ISSOCK(st.st_mode)
                assert stat.S_IMODE(st.st_mode) == 0o600
            assert os.umask(0o022) == 0o022  # restored after the bind
        finally:
            os.umask(umask)
        assert not sock.exists()

    run(scenario)


def test_stale_socket_from_a_crash_is_replaced(sock: Path) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(sock))
    dead.close()  # the file stays, nobody listens: what a crashed daemon leaves
    assert sock.exists()

    async def scenario() -> None:
        async with serving(sock):
            peer = await Peer.open(str(sock))
            assert (await peer.call(1, "echo", a=1))["result"] == {"a": 1}
            await peer.close()

    run(scenario)


def test_second_server_on_a_live_path_is_refused(sock: Path) -> None:
    async def scenario() -> None:
        async with serving(sock):
            with pytest.raises(AdminError) as info:
                await start_admin_server(str(sock), {})
            assert info.value.kind is ErrorKind.CONFLICT
            assert "already running" in info.value.message
            peer = await Peer.open(str(sock))  # the first one is untouched
            assert (await peer.call(1, "echo"))["result"] == {}
            await peer.close()

    run(scenario)


def test_a_path_that_is_not_a_socket_is_left_alone(sock: Path) -> None:
    sock.write_text("precious")

    async def scenario() -> None:
        with pytest.raises(AdminError) as info:
            await start_admin_server(str(sock), {})
        assert info.value.kind is ErrorKind.CONFLICT

    run(scenario)
    assert sock.read_text() == "precious"


def test_cancel_is_reserved(sock: Path) -> None:
    async def scenario() -> None:
        with pytest.raises(ValueError):
            await start_admin_server(str(sock), method_table(Probe()) | {"cancel": echo_fn})

    async def echo_fn(params: dict[str, Any], progress: ProgressFn) -> Any:
        return None

    run(scenario)


# --- requests and answers ------------------------------------------------------------------


def test_results_errors_and_bugs(sock: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serving(sock):
            peer = await Peer.open(str(sock))
            assert await peer.call(1, "echo", volume="vol0") == {
                "id": 1,
                "result": {"volume": "vol0"},
            }
            await peer.send({"id": 2, "method": "echo"})
            assert await peer.final(2) == {"id": 2, "result": {}}  # params omitted
            assert await peer.call(3, "fails", volume="vol9") == {
                "id": 3,
                "error": {"kind": "not_found", "message": "no volume named 'vol9'"},
            }
            bug = (await peer.call(4, "bug"))["error"]
            assert bug["kind"] == "internal"
            assert "KeyError" in bug["message"] and "bug" in bug["message"]
            bad = (await peer.call(5, "unserialisable"))["error"]
            assert bad["kind"] == "internal" and "TypeError" in bad["message"]
            # the daemon keeps running, the connection too
            assert (await peer.call(6, "echo", x=[1]))["result"] == {"x": [1]}
            await peer.close()

    with caplog.at_level(logging.DEBUG, logger="switch.admin_server"):
        run(scenario)
    tracebacks = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(tracebacks) == 2
    assert "Traceback" in tracebacks[0].getMessage()
    assert "KeyError" in tracebacks[0].getMessage()


def test_unknown_method_names_it_and_close_matches(sock: Path) -> None:
    async def scenario() -> None:
        async with serving(sock):
            peer = await Peer.open(str(sock))
            err = (await peer.call(1, "volume.rewnd"))["error"]
            assert err["kind"] == "invalid"
            assert "'volume.rewnd'" in err["message"] and "volume.rewind" in err["message"]
            err = (await peer.call(2, "zzz"))["error"]
            assert err["kind"] == "invalid" and "'zzz'" in err["message"]
            await peer.close()

    run(scenario)


def test_malformed_lines_get_an_error_and_the_connection_stays_usable(sock: Path) -> None:
    async def scenario() -> None:
        async with serving(sock):
            peer = await Peer.open(str(sock))
            for line in (b"not json\n", b"[1,2]\n", b'{"method":"echo"}\n', b'{"id":"1"}\n'):
                await peer.send(line)
                answer = await peer.recv()
                assert answer["id"] is None
                assert answer["error"]["kind"] == "invalid"
            await peer.send(b'{"id": 9, "method": "echo", "params": [1]}\n')
            answer = await peer.recv()
            assert answer["id"] == 9 and answer["error"]["kind"] == "invalid"
            await peer.send(b"\n  \n")  # blank lines are ignored
            assert (await peer.call(10, "echo", ok=True))["result"] == {"ok": True}
            await peer.close()

    run(scenario)


def test_oversize_line_closes_the_connection(sock: Path) -> None:
    async def scenario() -> None:
        async with serving(sock):
            peer = await Peer.open(str(sock))
            # exactly MAX_LINE bytes before the newline: still accepted
            head = b'{"id": 1, "method": "echo", "params": {"pad": "'
            tail = b'"}}'
            pad = b"x" * (MAX_LINE - len(head) - len(tail))
            await peer.send(head + pad + tail + b"\n")
            assert len((await peer.final(1))["result"]["pad"]) == len(pad)
            # one byte more: an error line, then the connection is closed
            await peer.send(head + pad + b"x" + tail + b"\n")
            answer = await peer.recv()
            assert answer["id"] is None and answer["error"]["kind"] == "invalid"
            assert "longer than" in answer["error"]["message"]
            assert await asyncio.wait_for(peer.reader.read(), 5) == b""
            await peer.close()
            other = await Peer.open(str(sock))  # the server is fine
            assert (await other.call(1, "echo"))["result"] == {}
            await other.close()

    run(scenario)


def test_requests_on_one_connection_run_concurrently(sock: Path) -> None:
    async def scenario() -> None:
        async with serving(sock):
            peer = await Peer.open(str(sock))
            await peer.send({"id": 1, "method": "slow", "params": {"steps": 20}})
            await peer.send({"id": 2, "method": "echo", "params": {"n": 2}})
            assert await peer.final(2) == {"id": 2, "result": {"n": 2}}
            await peer.send({"id": 1, "method": "echo"})  # id 1 is still in flight
            dup = await peer.final(1)
            assert dup["error"]["kind"] == "invalid" and "in flight" in dup["error"]["message"]
            assert (await peer.final(1))["result"] == {"steps": 20}
            await peer.close()

    run(scenario)


# --- progress ------------------------------------------------------------------------------


def test_progress_is_rate_limited_and_the_last_one_is_sent(sock: Path) -> None:
    async def scenario() -> None:
        async with serving(sock):
            peer = await Peer.open(str(sock))
            started = time.monotonic()
            await peer.send({"id": 1, "method": "burst", "params": {"total": 500}})
            progress = []
            while True:
                answer = await peer.recv()
                if "progress" not in answer:
                    break
                progress.append(answer["progress"])
            elapsed = time.monotonic() - started
            assert answer == {"id": 1, "result": "done"}
            assert progress[-1] == {"what": "burst", "done": 500, "total": 500}
            assert progress[0]["done"] == 1  # the first one goes out at once
            assert 2 <= len(progress) <= elapsed * 10 + 2, (len(progress), elapsed)
            dones = [p["done"] for p in progress]
            assert dones == sorted(dones)
            await peer.close()

    run(scenario)


def test_progress_from_a_worker_thread(sock: Path) -> None:
    async def scenario() -> None:
        async with serving(sock):
            peer = await Peer.open(str(sock))
            await peer.send({"id": 1, "method": "threaded"})
            progress = []
            while "progress" in (answer := await peer.recv()):
                progress.append(answer["progress"]["done"])
            assert answer == {"id": 1, "result": 200}
            assert progress and progress[-1] == 200
            await peer.close()

    run(scenario)


# --- cancellation --------------------------------------------------------------------------


def test_cancel_a_request(sock: Path) -> None:
    probe = Probe()

    async def scenario() -> None:
        async with serving(sock, probe):
            peer = await Peer.open(str(sock))
            await peer.send({"id": 7, "method": "volume.rewind", "params": {"steps": 10000}})
            assert "progress" in await peer.recv()
            await peer.send({"id": 8, "method": "cancel", "params": {"request": 7}})
            answers: list[dict[str, Any]] = []
            while len(answers) < 2:
                if "progress" not in (answer := await peer.recv()):
                    answers.append(answer)
            assert answers[0] == {"id": 8, "result": {"cancelled": True}}
            assert answers[1]["id"] == 7 and answers[1]["error"]["kind"] == "cancelled"
            assert probe.cancelled.is_set() and not probe.finished.is_set()
            # a finished or unknown request: nothing to cancel
            assert await peer.call(9, "cancel", request=7) == {
                "id": 9,
                "result": {"cancelled": False},
            }
            bad = await peer.call(10, "cancel", request="7")
            assert bad["error"]["kind"] == "invalid"
            await peer.close()

    run(scenario)


def test_cancel_before_the_request_ever_ran(sock: Path) -> None:
    async def scenario() -> None:
        async with serving(sock):
            peer = await Peer.open(str(sock))
            # one write: the server reads both lines before the first task gets to run
            await peer.send(
                b'{"id": 1, "method": "slow"}\n{"id": 2, "method": "cancel", '
                b'"params": {"request": 1}}\n'
            )
            assert await peer.final(2) == {"id": 2, "result": {"cancelled": True}}
            assert (await peer.final(1))["error"]["kind"] == "cancelled"
            await peer.close()

    run(scenario)


def test_disconnect_cancels_in_flight_requests(sock: Path) -> None:
    probe = Probe()

    async def scenario() -> None:
        async with serving(sock, probe):
            peer = await Peer.open(str(sock))
            await peer.send({"id": 1, "method": "slow"})
            assert "progress" in await peer.recv()
            await peer.close()
            for _ in range(500):
                if probe.cancelled.is_set():
                    break
                await asyncio.sleep(0.01)
            assert probe.cancelled.is_set()

    run(scenario)


def test_wait_closed_cancels_requests_and_tells_the_client(sock: Path) -> None:
    probe = Probe()

    async def scenario() -> None:
        server = await start_admin_server(str(sock), method_table(probe))
        peer = await Peer.open(str(sock))
        await peer.send({"id": 1, "method": "slow"})
        assert "progress" in await peer.recv()
        server.close()
        with pytest.raises(OSError):
            await asyncio.open_unix_connection(str(sock))  # no longer accepting
        await server.wait_closed()
        assert probe.cancelled.is_set()
        assert (await peer.final(1))["error"]["kind"] == "cancelled"
        assert await peer.reader.read() == b""
        assert not sock.exists()
        await peer.close()

    run(scenario)


# --- secrets -------------------------------------------------------------------------------


def test_secrets_stay_out_of_errors_and_logs(sock: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with serving(sock):
            peer = await Peer.open(str(sock))
            leaked = await peer.call(1, "leaks", password=SECRET)
            assert leaked["error"] == {"kind": "refused", "message": "bad password ***"}
            bug = await peer.call(2, "leaky_bug", iqn="iqn.x", mutual_password=SECRET)
            assert bug["error"]["kind"] == "internal"
            assert "login failed with ***" in bug["error"]["message"]
            await peer.close()

    with caplog.at_level(logging.DEBUG):
        run(scenario)
    messages = [r.getMessage() for r in caplog.records]
    assert any("login failed with ***" in m and "Traceback" in m for m in messages)
    assert all(SECRET not in m for m in messages)


# --- the blocking client -------------------------------------------------------------------


@contextmanager
def served(path: Path, probe: Probe) -> Iterator[None]:
    """The server on an event loop in a background thread, for the blocking client."""
    loop = asyncio.new_event_loop()
    started: dict[str, AdminServer] = {}
    ready = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        started["server"] = loop.run_until_complete(
            start_admin_server(str(path), method_table(probe))
        )
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=main, name="admin-server")
    thread.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        asyncio.run_coroutine_threadsafe(started["server"].wait_closed(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_socket_path() -> None:
    assert socket_path("/var/lib/cdp") == "/var/lib/cdp/admin.sock"
    assert socket_path(Path("d")) == "d/admin.sock"


def test_client_without_a_daemon(tmp_path: Path) -> None:
    path = socket_path(tmp_path)
    with AdminClient(path) as client, pytest.raises(AdminError) as info:
        client.call("status")
    assert info.value.kind is ErrorKind.UNAVAILABLE
    assert info.value.message == (
        f"no cdpswitch daemon on {path}: start it with `cdpswitch serve --data-dir {tmp_path}`"
    )
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # a stale socket file: refused, same message
    with AdminClient(path) as client, pytest.raises(AdminError) as info:
        client.call("status")
    assert info.value.kind is ErrorKind.UNAVAILABLE and "no cdpswitch daemon" in info.value.message


def test_client_calls(sock: Path) -> None:
    probe = Probe()
    with served(sock, probe), AdminClient(sock) as client:
        assert client.call("echo", {"a": [1, 2]}) == {"a": [1, 2]}
        with pytest.raises(AdminError) as info:
            client.call("fails", {"volume": "vol9"})
        assert info.value.kind is ErrorKind.NOT_FOUND
        assert info.value.message == "no volume named 'vol9'"
        seen: list[tuple[str, int, int]] = []
        result = client.call(
            "slow", {"steps": 30, "delay": 0.005}, on_progress=lambda *a: seen.append(a)
        )
        assert result == {"steps": 30}
        assert seen[0] == ("slow", 1, 30) and seen[-1] == ("slow", 30, 30)
        assert client.call("echo") == {}  # the same connection, still in step


def test_ctrl_c_during_a_call_cancels_it(sock: Path) -> None:
    probe = Probe()

    def interrupt(what: str, done: int, total: int) -> None:
        if done == 1:
            raise KeyboardInterrupt  # what Ctrl-C does while the client waits

    with served(sock, probe), AdminClient(sock) as client:
        with pytest.raises(AdminError) as info:
            client.call("slow", {"steps": 10000}, on_progress=interrupt)
        assert info.value.kind is ErrorKind.CANCELLED
        assert probe.cancelled.is_set()
        # the answer to the cancel request is skipped, the connection stays usable
        assert client.call("echo", {"after": 1}) == {"after": 1}
        assert client.call("echo", {"after": 2}) == {"after": 2}


def test_second_ctrl_c_drops_the_connection(sock: Path) -> None:
    probe = Probe()

    def interrupt(what: str, done: int, total: int) -> None:
        raise KeyboardInterrupt

    with served(sock, probe), AdminClient(sock) as client:
        # the first Ctrl-C sends cancel; the second, during the undo, gives up waiting
        with pytest.raises(KeyboardInterrupt):
            client.call("stubborn", on_progress=interrupt)
        assert client.call("echo", {"n": 1}) == {"n": 1}  # reconnects
        assert probe.cancelled.wait(5)


def test_client_timeout(sock: Path) -> None:
    probe = Probe()
    with served(sock, probe), AdminClient(sock, timeout=0.2) as client:
        with pytest.raises(AdminError) as info:
            client.call("slow", {"steps": 3, "delay": 1.0})
        assert info.value.kind is ErrorKind.UNAVAILABLE
        assert "within 0.2 s" in info.value.message
        assert client.call("echo", {"n": 2}) == {"n": 2}  # reconnects
        for _ in range(500):
            if probe.cancelled.is_set():
                break
            time.sleep(0.01)
        assert probe.cancelled.is_set()  # dropping the connection cancelled the request
