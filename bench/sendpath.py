"""The three ways a target can put cached file data on a TCP socket, measured against each
other in the same run: ``os.sendfile`` (what the native target does for reads of 64 KiB
and more: FileSpan), ``sendmsg`` of a view of a shared mapping of the file (what it does
below that: FileMap), and ``pread`` into bytes then ``send`` (what tgtd does). When the
system's TCP congestion control is one that paces (bbr), sendfile and the view are
measured once more on sockets set to cubic, which does not.

A sender process writes 1 MiB pieces of a cached file to 127.0.0.1, where a child process
reads them as fast as it can; the methods alternate over the rounds. Printed per method:
the median rate, the sender's CPU time per MiB (utime + stime; over loopback that
includes the TCP receive processing the send runs), and its ratio to sendfile's.

Why it is here: the native target's 1 MiB reads cost 190-210 us of CPU each in a fast
hour of these shared VMs and 400-800 in slow ones, against a smaller rise for tgtd, and
most of it is sendfile. In isolation, in one slow stretch (2026-11-28), sendfile cost
413-622 us per MiB and the mapped view 208-293; through the target the view still cost
more (250-325 against 190-265 us per read, alternating). A good part of the hour's swing is
the congestion control's: these VMs run bbr without the fq qdisc, so the kernel paces each
socket itself with a high-resolution timer, and programming timers is what a busy host
makes slow for a guest. Here sendfile cost 382-489 us per MiB with bbr and 99-185 with
cubic in the same runs; through the target, a switch to cubic gave 1.07x (fast hour)
and 1.34x (slow stretch) the read throughput. The target keeps the system's choice, as
tgtd and LIO do: it is the administrator's. (With the fq qdisc, bbr leaves pacing to
the qdisc; not measured here, where the kernel has no fq.)

    python bench/sendpath.py [--rounds 5] [--mib 1024] [--dir DIR]
"""

from __future__ import annotations

import argparse
import mmap
import os
import resource
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

MiB = 1 << 20
FILE_MIB = 256  # the file the pieces come from, kept in the page cache


@dataclass(frozen=True)
class Sample:
    mib_per_s: float
    cpu_us_per_mib: float


def _receive(port: int, total: int) -> None:
    """In the child: read ``total`` bytes and exit."""
    conn = socket.create_connection(("127.0.0.1", port))
    buf = bytearray(MiB)
    got = 0
    while got < total:
        n = conn.recv_into(buf)
        if not n:
            break
        got += n
    os._exit(0 if got >= total else 1)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(send: Callable[[socket.socket, int], None], pieces: int) -> Sample:
    """Send ``pieces`` MiB with ``send(sock, offset)`` to a reading child process."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    pid = os.fork()
    if pid == 0:  # the child
        listener.close()
        _receive(port, pieces * MiB)
    sock, _ = listener.accept()
    listener.close()
    cpu0, t0 = _cpu(), time.perf_counter()
    for i in range(pieces):
        send(sock, (i % FILE_MIB) * MiB)
    sock.close()
    _, status = os.waitpid(pid, 0)
    cpu1, t1 = _cpu(), time.perf_counter()
    if status != 0:
        raise RuntimeError("the receiver did not get every byte")
    return Sample(pieces / (t1 - t0), (cpu1 - cpu0) / pieces * 1e6)


def methods(fd: int, view: memoryview) -> dict[str, Callable[[socket.socket, int], None]]:
    def by_sendfile(sock: socket.socket, offset: int) -> None:
        done = 0
        while done < MiB:
            done += os.sendfile(sock.fileno(), fd, offset + done, MiB - done)

    def by_mapped_view(sock: socket.socket, offset: int) -> None:
        sock.sendall(view[offset : offset + MiB])

    def by_pread(sock: socket.socket, offset: int) -> None:
        sock.sendall(os.pread(fd, MiB, offset))

    ways: dict[str, Callable[[socket.socket, int], None]] = {
        "sendfile": by_sendfile, "mapped view": by_mapped_view, "pread + send": by_pread}
    if _pacing_default():
        ways["sendfile, cubic"] = _on_cubic(by_sendfile)
        ways["mapped view, cubic"] = _on_cubic(by_mapped_view)
    return ways


def _congestion(name: str) -> str:
    return Path(f"/proc/sys/net/ipv4/tcp_{name}").read_text().strip()


def _pacing_default() -> bool:
    """The system's congestion control paces (bbr) and cubic can be chosen instead."""
    try:
        default = _congestion("congestion_control")
        available = _congestion("available_congestion_control").split()
    except OSError:
        return False
    try:
        allowed = "cubic" in _congestion("allowed_congestion_control").split()
    except OSError:
        allowed = False
    # Choosing one not in the allowed list takes CAP_NET_ADMIN (root, here).
    return default.startswith("bbr") and "cubic" in available and (allowed or os.geteuid() == 0)


def _on_cubic(send: Callable[[socket.socket, int], None]) -> Callable[[socket.socket, int], None]:
    """``send`` on a socket switched to cubic before its first piece."""
    switched: set[socket.socket] = set()

    def on_cubic(sock: socket.socket, offset: int) -> None:
        if sock not in switched:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, b"cubic")
            switched.add(sock)
        send(sock, offset)

    return on_cubic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mib", type=int, default=1024, help="MiB per method and round")
    parser.add_argument("--dir", help="where the file goes (default: a new directory here)")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="cdpswitch-sendpath-", dir=args.dir or "."))
    path = workdir / "data"
    try:
        with path.open("wb") as f:
            for _ in range(FILE_MIB):
                f.write(os.urandom(MiB))
        fd = os.open(path, os.O_RDONLY)
        mapping = mmap.mmap(fd, FILE_MIB * MiB, prot=mmap.PROT_READ)
        view = memoryview(mapping)
        try:
            for offset in range(0, FILE_MIB * MiB, MiB):  # into the cache, and mapped
                os.pread(fd, MiB, offset)
                bytes(view[offset : offset + 1])
            ways = methods(fd, view)
            samples: dict[str, list[Sample]] = {name: [] for name in ways}
            for r in range(args.rounds):
                order = list(ways) if r % 2 == 0 else list(reversed(ways))
                for name in order:
                    samples[name].append(measure(ways[name], args.mib))
                print(f"  .. round {r + 1}/{args.rounds}: " + ", ".join(
                    f"{n} {samples[n][-1].cpu_us_per_mib:.0f} us/MiB" for n in ways),
                    flush=True)  # fmt: skip
        finally:
            view.release()
            mapping.close()
            os.close(fd)
    finally:
        path.unlink(missing_ok=True)
        workdir.rmdir()
    base = statistics.median(s.cpu_us_per_mib for s in samples["sendfile"])
    print(f"\nsender CPU per MiB over 127.0.0.1 (median of {args.rounds} alternating rounds)")
    print(f"  {'method':18s} {'MiB/s':>7s} {'us/MiB':>7s} {'vs sendfile':>12s}")
    for name, got in samples.items():
        rate = statistics.median(s.mib_per_s for s in got)
        cpu = statistics.median(s.cpu_us_per_mib for s in got)
        print(f"  {name:18s} {rate:7.0f} {cpu:7.0f} {cpu / base:11.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
