"""Prometheus metrics: the text exposition format (version 0.0.4) and a minimal HTTP
endpoint serving it on the address the configuration names (``metrics.listen``).

The numbers come from ``Switch.metric_samples`` at scrape time; nothing is kept here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

__all__ = ["Metric", "MetricsServer", "render", "start_metrics_server"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Metric:
    name: str
    kind: str  # counter | gauge
    help: str
    samples: tuple[tuple[dict[str, str], float], ...]


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in sorted(labels.items()))
    return "{" + body + "}"


def render(metrics: Iterable[Metric]) -> str:
    lines: list[str] = []
    for m in metrics:
        lines.append(f"# HELP {m.name} {m.help}")
        lines.append(f"# TYPE {m.name} {m.kind}")
        for labels, value in m.samples:
            number = repr(float(value)) if value != int(value) else str(int(value))
            lines.append(f"{m.name}{_labels(labels)} {number}")
    return "\n".join(lines) + "\n"


class MetricsServer:
    def __init__(self, server: asyncio.Server) -> None:
        self._server = server

    @property
    def port(self) -> int:
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()


async def start_metrics_server(host: str, port: int,
                               collect: Callable[[], Awaitable[Iterable[Metric]]]
                               ) -> MetricsServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            line = request.split(b"\r\n", 1)[0].decode("latin-1").split()
            if len(line) < 2 or line[0] != "GET":
                status, body, ctype = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif line[1].split("?", 1)[0] != "/metrics":
                status, body, ctype = "404 Not Found", b"see /metrics\n", "text/plain"
            else:
                status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
                body = render(await collect()).encode()
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                         + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError):
            pass
        except Exception:  # a bug in a collector must not kill the endpoint
            log.exception("metrics scrape failed")
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port, reuse_address=True)
    return MetricsServer(server)
