#!/usr/bin/env python3
"""Benchmarks of the CDP engine (``volume_manager``), each against a peer measured
in the same run on the same data.

Sections:

a   durable writes: sequential 1 MiB and random 4 KiB writes through the engine,
    with a flush every batch, as a throughput ratio to plain ``os.pwrite`` +
    ``os.fdatasync`` of the same buffers at the same offsets and sync points
    (target >= 0.45; the physical bound is 0.5 for large writes since the engine
    writes every byte twice: log, then primary). Plus the engine's CPU time per
    4 KiB write without fsync (target <= 15 us; the records written to the log
    file, not durably, included), next to plain ``os.pwrite``'s.
b   rewind after K random 4 KiB writes on a 1 GiB and an 8 GiB volume: the two
    times should differ by < 20% (the cost follows K, not the volume size).
c   point-in-time reads with 1, 100 and 10,000 delta maps: view creation time,
    median and p99 latency of random 4 KiB reads, against ``os.pread`` of the
    same offsets of a plain file holding the same data. Also the cost of
    ``mark()``, which builds the maps.
d   metadata overhead per 4 KiB write: (log + map bytes - data bytes) / data
    bytes, from file sizes on disk (target <= 2%).

Method (bench/README.md): engine and peer alternate within every round, on fresh
files; the figures are medians over ``--rounds``. CPU time is ``time.process_time``
(the whole process, so the engine's committer thread counts). Absolute rates are
noisy and machine-specific; compare ratios and CPU per I/O. The exit status is 0
whatever the verdicts: benchmarks report, tests assert.

Files are deleted between measurements, outside the timings. On a file system
mounted with online ``discard`` that is slow for files with many scattered
blocks (0.15 to 1.2 ms per extent seen, worse on a busy disk), which is why the
CPU runs never commit and (c) and (d) write to compact block ranges; the durable
random runs cannot avoid it.

    python bench/engine.py --quick          # CI smoke, < 60 s
    python bench/engine.py --json out.json  # full run, a few minutes
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Run from a checkout without relying on how the package was installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.report_format import number
from volume_manager import Volume, VolumeOptions

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
BLOCK = 512          # the engine's default block size
IO4K = 4 * KiB


@dataclass(frozen=True)
class Sizes:
    seq_total: int = 64 * MiB       # (a) sequential: bytes written per run
    seq_io: int = 1 * MiB           #     size of one write
    seq_flush: int = 8 * MiB        #     flush / fdatasync after this many bytes
    rand_writes: int = 16384        # (a) random 4 KiB writes per run
    rand_flush: int = 1024          #     flush / fdatasync after this many writes
    rand_volume: int = 1 * GiB
    cpu_writes: int = 50000         # (a') 4 KiB writes for the CPU figure
    cpu_chunk: int = 2048           #     also reported per chunk (8 MiB: the overlay soft limit)
    rewind_k: int = 4096            # (b) writes undone by the rewind
    rewind_sizes: tuple[int, ...] = (1 * GiB, 8 * GiB)
    rewind_pairs: int = 3           #     (1 GiB, 8 GiB) pairs per round
    pit_maps: tuple[int, ...] = (1, 100, 10000)  # (c) delta maps per volume
    pit_writes: int = 40000         #     writes spread over those maps (same for every volume),
    pit_hot: int = 10000            #     at random among this many 4 KiB blocks (a hot set)
    pit_reads: int = 2000           #     timed reads per view per round
    meta_writes: int = 16384        # (d) 4 KiB writes (distinct blocks, random order)
    meta_mark_every: int = 16       #     the info variant: a marker every this many writes


FULL = Sizes()
QUICK = Sizes(seq_total=16 * MiB, rand_writes=1024, rand_flush=256, cpu_writes=10240, rewind_k=512,
              pit_maps=(1, 100, 1000), pit_writes=4000, pit_hot=1000, pit_reads=1000,
              meta_writes=4096)


# ----------------------------------------------------------------- reporting
@dataclass
class Row:
    metric: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None  # None: information only
    note: str = ""

    @property
    def verdict(self) -> str:
        return "" if self.ok is None else ("PASS" if self.ok else "MISS")


@dataclass
class Section:
    key: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    elapsed: float = 0.0

    def add(self, *args: object, **kw: object) -> Row:
        row = Row(*args, **kw)  # type: ignore[arg-type]
        self.rows.append(row)
        return row


def print_section(sec: Section) -> None:
    print(f"\n({sec.key}) {sec.title}")
    w = max([52, *(len(r.metric) for r in sec.rows)])
    print(f"  {'metric':<{w}} {'value':>10} {'unit':<7} {'target':<10} verdict")
    for r in sec.rows:
        line = f"  {r.metric:<{w}} {number(r.value):>10} {r.unit:<7} {r.target:<10} {r.verdict}"
        print(line.rstrip() + (f"   {r.note}" if r.note else ""))
    for n in sec.notes:
        print(f"  note: {n}")
    print(f"  ({sec.elapsed:.1f} s)")
    sys.stdout.flush()


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


# ------------------------------------------------------------------- helpers
class Workdir:
    """Fresh names under one temporary directory; everything is removed at the end."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._n = 0

    def fresh(self, stem: str) -> str:
        self._n += 1
        return os.path.join(self.root, f"{stem}-{self._n}")


def new_volume(wd: Workdir, size: int, options: VolumeOptions | None = None) -> Volume:
    base = wd.fresh("vol")
    return Volume.create(base + ".sec", base + ".img", size=size, options=options)


def drop_volume(vol: Volume) -> None:
    """Close a volume and delete its secondary store and primary."""
    directory, primary = vol.directory, vol.primary_path
    vol.close()
    shutil.rmtree(directory, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(primary)


@contextmanager
def peer_file(wd: Workdir, size: int) -> Iterator[int]:
    """A plain sparse file of ``size`` bytes, made durable untimed, like Volume.create."""
    path = wd.fresh("peer") + ".img"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.ftruncate(fd, size)
        os.fdatasync(fd)
        yield fd
    finally:
        os.close(fd)
        os.unlink(path)


@dataclass
class Timing:
    wall: float
    cpu: float


@contextmanager
def timed() -> Iterator[Timing]:
    t = Timing(0.0, 0.0)
    w0, c0 = time.perf_counter(), time.process_time()
    yield t
    t.wall = time.perf_counter() - w0
    t.cpu = time.process_time() - c0


def alternate(r: int, pair: tuple[Callable[[], None], Callable[[], None]]) -> None:
    """Run the two measurements in turn, swapping who goes first every round."""
    first, second = pair if r % 2 == 0 else (pair[1], pair[0])
    first()
    second()


# ------------------------------------------------------- (a) durable writes
def _durable(wd: Workdir, rounds: int, size: int, ops: list[tuple[int, bytes]],
             flush_every: int, label: str) -> dict[str, list[float]]:
    """Time ops (byte offset, data) with a flush every ``flush_every`` ops and at the end."""
    out: dict[str, list[float]] = {k: [] for k in ("eng_wall", "eng_cpu", "peer_wall",
                                                   "peer_cpu")}

    def engine() -> None:
        vol = new_volume(wd, size)
        try:
            with timed() as t:
                for i, (off, data) in enumerate(ops, 1):
                    vol.write(off // BLOCK, data)
                    if i % flush_every == 0:
                        vol.flush()
                vol.flush()
        finally:
            drop_volume(vol)
        out["eng_wall"].append(t.wall)
        out["eng_cpu"].append(t.cpu)

    def peer() -> None:
        with peer_file(wd, size) as fd, timed() as t:
            for i, (off, data) in enumerate(ops, 1):
                os.pwrite(fd, data, off)
                if i % flush_every == 0:
                    os.fdatasync(fd)
            os.fdatasync(fd)
        out["peer_wall"].append(t.wall)
        out["peer_cpu"].append(t.cpu)

    for r in range(rounds):
        alternate(r, (peer, engine))
        progress(f"{label} round {r + 1}/{rounds}: engine {out['eng_wall'][-1]:.3f} s,"
                 f" pwrite {out['peer_wall'][-1]:.3f} s")
    return out


def _durable_rows(sec: Section, name: str, res: dict[str, list[float]], n_ops: int,
                  nbytes: int) -> None:
    ratios = [p / e for p, e in zip(res["peer_wall"], res["eng_wall"], strict=True)]
    ratio = median(ratios)
    sec.add(f"{name}: engine/pwrite throughput ratio", ratio, "x", ">= 0.45", ratio >= 0.45,
            note="rounds: " + " ".join(f"{x:.2f}" for x in ratios))
    sec.add(f"{name}: engine throughput", nbytes / median(res["eng_wall"]) / MiB, "MiB/s")
    sec.add(f"{name}: pwrite+fdatasync throughput", nbytes / median(res["peer_wall"]) / MiB,
            "MiB/s")
    sec.add(f"{name}: engine CPU per write", median(res["eng_cpu"]) / n_ops * 1e6, "us")
    sec.add(f"{name}: pwrite CPU per write", median(res["peer_cpu"]) / n_ops * 1e6, "us")


def _cpu_per_write(wd: Workdir, rounds: int, sz: Sizes, rng: random.Random,
                   sec: Section) -> None:
    n = sz.cpu_writes
    size = sz.rand_volume
    chunk = sz.cpu_chunk
    buf = os.urandom(IO4K)
    slots = size // IO4K
    offs = [rng.randrange(slots) * IO4K for _ in range(n)]
    big = 256 * MiB
    assert n * IO4K <= big, "the overlay must hold every write: no commit inside the loop"
    opts = VolumeOptions(commit_interval=None, pending_soft_bytes=big, pending_hard_bytes=big)
    eng: list[float] = []
    first: list[float] = []
    last: list[float] = []
    peer_cpu: list[float] = []
    user: list[float] = []
    system: list[float] = []
    out_cpu: list[float] = []

    def engine() -> None:
        vol = new_volume(wd, size, opts)
        chunks = []
        try:
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            for a in range(0, n, chunk):
                with timed() as t:
                    for off in offs[a: a + chunk]:
                        vol.write(off // BLOCK, buf)
                chunks.append((t.cpu, min(chunk, n - a)))
            # The records wait in the write buffer: writing them to the log file
            # (not durably) is part of the cost of a write.
            with timed() as t:
                vol.write_out()
            out_cpu.append(t.cpu / n)
            r1 = resource.getrusage(resource.RUSAGE_SELF)
            user.append((r1.ru_utime - r0.ru_utime) / n)
            system.append((r1.ru_stime - r0.ru_stime) / n)
        finally:
            # Nothing was committed: drop the volume unflushed, so the primary
            # never gets the writes (freeing scattered blocks is slow on some disks).
            directory, primary = vol.directory, vol.primary_path
            vol.abandon()
            shutil.rmtree(directory, ignore_errors=True)
            os.unlink(primary)
        eng.append(sum(c for c, _ in chunks) / n + out_cpu[-1])
        first.append(chunks[0][0] / chunks[0][1])
        last.append(chunks[-1][0] / chunks[-1][1])

    def peer() -> None:
        # Never synced: deleting it right away drops the dirty pages unallocated.
        with peer_file(wd, size) as fd, timed() as t:
            for off in offs:
                os.pwrite(fd, buf, off)
        peer_cpu.append(t.cpu / n)

    for r in range(rounds):
        alternate(r, (peer, engine))
        progress(f"cpu/write round {r + 1}/{rounds}: engine {eng[-1] * 1e6:.1f} us"
                 f" (first {first[-1] * 1e6:.1f}, last {last[-1] * 1e6:.1f}),"
                 f" pwrite {peer_cpu[-1] * 1e6:.1f} us")
    e = median(eng) * 1e6
    p = median(peer_cpu) * 1e6
    sec.add(f"engine CPU per 4 KiB write, no fsync ({n} writes)", e, "us", "<= 15", e <= 15)
    sec.add(f"  first {chunk} writes (overlay <= {chunk * IO4K // MiB} MiB)",
            median(first) * 1e6, "us")
    sec.add(f"  last {chunk} writes (overlay ~{n * IO4K // MiB} MiB)", median(last) * 1e6,
            "us")
    sec.add("  of which writing the log out (write_out, no fsync)", median(out_cpu) * 1e6, "us")
    sec.add("  of which user time (the engine's Python)", median(user) * 1e6, "us")
    sec.add("  of which system time (mostly writing the log out)",
            median(system) * 1e6, "us")
    sec.add("  fastest round (this figure swings between rounds on a shared VM)",
            min(eng) * 1e6, "us")
    sec.add("  os.pwrite CPU per 4 KiB write, same offsets", p, "us")
    sec.add("  engine/pwrite CPU ratio", e / p, "x")


def bench_writes(wd: Workdir, rounds: int, sz: Sizes, rng: random.Random) -> Section:
    sec = Section("a", "durable write throughput vs os.pwrite + fdatasync; CPU per write")
    # Sequential 1 MiB writes; a few distinct buffers so no two writes look alike.
    bufs = [os.urandom(sz.seq_io) for _ in range(4)]
    n_seq = sz.seq_total // sz.seq_io
    seq_ops = [(i * sz.seq_io, bufs[i % len(bufs)]) for i in range(n_seq)]
    res = _durable(wd, rounds, sz.seq_total, seq_ops, sz.seq_flush // sz.seq_io, "seq 1 MiB")
    _durable_rows(sec, "seq 1 MiB", res, n_seq, sz.seq_total)
    sec.notes.append(f"seq: {sz.seq_total // MiB} MiB as {sz.seq_io // KiB} KiB writes, flush"
                     f" every {sz.seq_flush // MiB} MiB; bound 0.5 (every byte written twice)")

    small = [os.urandom(IO4K) for _ in range(16)]
    slots = sz.rand_volume // IO4K
    rand_ops = [(rng.randrange(slots) * IO4K, small[i % len(small)])
                for i in range(sz.rand_writes)]
    res = _durable(wd, rounds, sz.rand_volume, rand_ops, sz.rand_flush, "rand 4 KiB")
    _durable_rows(sec, "rand 4 KiB", res, sz.rand_writes, sz.rand_writes * IO4K)
    sec.notes.append(f"rand: {sz.rand_writes} writes at random 4 KiB offsets of a"
                     f" {sz.rand_volume // GiB} GiB sparse volume, flush every {sz.rand_flush}")

    _cpu_per_write(wd, rounds, sz, rng, sec)
    sec.notes.append("CPU per write without fsync: VolumeOptions(commit_interval=None,"
                     " pending 256 MiB), the write() calls and one write_out() of their"
                     " records to the log file timed, nothing is committed; the durable runs"
                     " above show the CPU with commits")
    return sec


# ------------------------------------------------------------------ (b) rewind
def bench_rewind(wd: Workdir, rounds: int, sz: Sizes, seed: int) -> Section:
    sec = Section("b", f"rewind after K={sz.rewind_k} random 4 KiB writes vs volume size")
    k = sz.rewind_k
    a, b = os.urandom(IO4K), os.urandom(IO4K)
    wall: dict[int, list[float]] = {s: [] for s in sz.rewind_sizes}
    cpu: dict[int, list[float]] = {s: [] for s in sz.rewind_sizes}

    def one(size: int, r: int) -> None:
        rng = random.Random(seed * 1000 + r)
        vol = new_volume(wd, size)
        try:
            # K distinct blocks spread over the whole volume: data ``a`` at the
            # marker, ``b`` after it, so the rewind writes real data back.
            lbas = [x * (IO4K // BLOCK) for x in rng.sample(range(size // IO4K), k)]
            for lba in lbas:
                vol.write(lba, a)
            vol.mark("base")
            for lba in lbas:
                vol.write(lba, b)
            vol.flush()
            with timed() as t:
                res = vol.rewind("base")
            if res.blocks_rewritten != k * IO4K // BLOCK or vol.read(lbas[0], 8) != a:
                raise SystemExit(f"rewind check failed: {res}")
        finally:
            drop_volume(vol)
        wall[size].append(t.wall)
        cpu[size].append(t.cpu)

    sizes = sz.rewind_sizes
    # A rewind is short and its few fsyncs make it noisy: several pairs per round.
    pairs = rounds * sz.rewind_pairs
    for r in range(pairs):
        order = sizes if r % 2 == 0 else tuple(reversed(sizes))
        for s in order:
            one(s, r)
        progress(f"rewind pair {r + 1}/{pairs}: " + ", ".join(
            f"{s // GiB} GiB {wall[s][-1]:.3f} s" for s in sizes))
    for s in sizes:
        sec.add(f"rewind time, {s // GiB} GiB volume", median(wall[s]) * 1e3, "ms",
                note="runs: " + " ".join(f"{x * 1e3:.0f}" for x in wall[s]))
        sec.add(f"  rewind CPU, {s // GiB} GiB volume", median(cpu[s]) * 1e3, "ms")
    lo, hi = sizes[0], sizes[-1]
    # Each pair runs both sizes back to back, so compare them pairwise: the
    # median of the per-pair ratios is steadier than a ratio of medians when the
    # machine's load (and fsync latency) drifts.
    ratios = [h / max(lo_, 1e-9) for h, lo_ in zip(wall[hi], wall[lo], strict=True)]
    diff = abs(median(ratios) - 1)
    sec.add(f"time difference {hi // GiB} GiB vs {lo // GiB} GiB", diff * 100, "%", "< 20",
            diff < 0.20, note=f"{hi // GiB}/{lo // GiB} GiB per pair: "
            + " ".join(f"{x:.2f}" for x in ratios))
    cratios = [h / max(lo_, 1e-9) for h, lo_ in zip(cpu[hi], cpu[lo], strict=True)]
    sec.add(f"  CPU difference {hi // GiB} GiB vs {lo // GiB} GiB",
            abs(median(cratios) - 1) * 100, "%")
    sec.add("  rewind time per block rewritten (4 KiB)",
            median([x for s in sizes for x in wall[s]]) / k * 1e6, "us")
    sec.notes.append("K distinct 4 KiB blocks at random over the whole volume; the timed"
                     " rewind includes its two markers and its flush (about ten fsyncs, which"
                     f" dominate at small K on a busy disk); {sz.rewind_pairs} pairs per round;"
                     " difference = |median of per-pair time ratios - 1|")
    return sec


# ------------------------------------------------------- (c) point-in-time reads
@dataclass
class _PitVolume:
    maps: int
    vol: Volume
    build_s: float
    mark_wall: list[float]
    mark_cpu: list[float]
    reopen_s: float
    newest: str


def _build_pit(wd: Workdir, maps: int, lbas: list[int], data: list[bytes]) -> \
        _PitVolume:
    per = max(1, len(lbas) // maps)
    vol = new_volume(wd, GiB)
    mark_wall: list[float] = []
    mark_cpu: list[float] = []
    t0 = time.perf_counter()
    i = 0
    for m in range(maps):
        chunk = lbas[i: i + per] if m < maps - 1 else lbas[i:]
        for j, lba in enumerate(chunk):
            vol.write(lba, data[(i + j) % len(data)])
        i += len(chunk)
        with timed() as t:
            vol.mark(f"p{m}")
        mark_wall.append(t.wall)
        mark_cpu.append(t.cpu)
        if (m + 1) % 1000 == 0:
            progress(f"  {m + 1}/{maps} markers, {median(mark_wall[-1000:]) * 1e3:.1f} ms/mark")
    build = time.perf_counter() - t0
    directory = vol.directory
    vol.close()
    with timed() as t:
        vol = Volume.open(directory)
    if len(vol.maps) != maps:
        raise SystemExit(f"expected {maps} maps, found {len(vol.maps)}")
    return _PitVolume(maps, vol, build, mark_wall, mark_cpu, t.wall, f"p{maps - 1}")


def bench_pit(wd: Workdir, rounds: int, sz: Sizes, seed: int) -> Section:
    sec = Section("c", "point-in-time reads vs number of delta maps (view at newest marker)")
    rng = random.Random(seed)
    slots = GiB // IO4K
    # Every volume gets the same writes in the same order, so all hold the same
    # data at their newest marker; only how many maps the history is cut into differs.
    # The writes hit a hot set of blocks scattered over the first 4x its size.
    hot = rng.sample(range(4 * sz.pit_hot), sz.pit_hot)
    lbas = [rng.choice(hot) * (IO4K // BLOCK) for _ in range(sz.pit_writes)]
    data = [os.urandom(IO4K) for _ in range(64)]
    vols: list[_PitVolume] = []
    try:
        for m in sz.pit_maps:
            progress(f"building a volume with {m} maps ({sz.pit_writes} writes)")
            vols.append(_build_pit(wd, m, lbas, data))
        create: dict[int, list[float]] = {v.maps: [] for v in vols}
        lat: dict[int, list[float]] = {v.maps: [] for v in vols}
        cpu: dict[int, list[float]] = {v.maps: [] for v in vols}
        peer_lat: list[float] = []
        peer_cpu: list[float] = []
        written = sorted(set(lbas))
        peer_fd = os.open(vols[0].vol.primary_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for r in range(rounds):
                # Half the reads hit blocks the history wrote, half are anywhere.
                rr = random.Random(seed * 1000 + r)
                reads = [rr.choice(written) if i % 2 else rr.randrange(slots) * (IO4K // BLOCK)
                         for i in range(sz.pit_reads)]
                order = vols if r % 2 == 0 else list(reversed(vols))
                for pv in order:
                    with timed() as t:
                        view = pv.vol.view(pv.newest)
                    create[pv.maps].append(t.wall)
                    try:
                        ns, c = _time_reads(lambda lba, v=view: v.read(lba, 8), reads)
                    finally:
                        view.close()
                    lat[pv.maps].extend(ns)
                    cpu[pv.maps].append(c / len(reads))
                    ns, c = _time_reads(lambda lba: os.pread(peer_fd, IO4K, lba * BLOCK), reads)
                    peer_lat.extend(ns)
                    peer_cpu.append(c / len(reads))
                progress(f"pit round {r + 1}/{rounds}: " + ", ".join(
                    f"{m} maps {median(lat[m][-len(reads):]) / 1e3:.1f} us" for m in lat))
            # Same data check: the view and the plain file agree (outside the timing).
            with vols[-1].vol.view(vols[-1].newest) as view:
                for lba in written[:: max(1, len(written) // 200)]:
                    if view.read(lba, 8) != os.pread(peer_fd, IO4K, lba * BLOCK):
                        raise SystemExit(f"view and primary differ at lba {lba}")
        finally:
            os.close(peer_fd)
        p_med = median(peer_lat) / 1e3
        for pv in vols:
            m = pv.maps
            med = median(lat[m]) / 1e3
            sec.add(f"{m} maps: view creation", median(create[m]) * 1e3, "ms")
            sec.add(f"{m} maps: read latency median", med, "us", note=f"{med / p_med:.1f}x pread")
            sec.add(f"{m} maps: read latency p99", pct(lat[m], 0.99) / 1e3, "us")
            sec.add(f"{m} maps: CPU per read", median(cpu[m]) * 1e6, "us")
        sec.add("peer os.pread latency median", p_med, "us")
        sec.add("peer os.pread latency p99", pct(peer_lat, 0.99) / 1e3, "us")
        sec.add("peer os.pread CPU per read", median(peer_cpu) * 1e6, "us")
        for pv in vols:
            p99 = pct(pv.mark_wall, 0.99) * 1e3
            sec.add(f"build: mark() wall, {pv.maps} maps (median)",
                    median(pv.mark_wall) * 1e3, "ms", note=f"p99 {p99:.1f} ms")
            sec.add(f"build: mark() CPU, {pv.maps} maps", median(pv.mark_cpu) * 1e3, "ms")
            sec.add(f"build: whole volume, {pv.maps} maps", pv.build_s, "s")
            sec.add(f"reopen (recovery loads every map), {pv.maps} maps", pv.reopen_s * 1e3,
                    "ms")
        sec.notes.append(f"{sz.pit_writes} random 4 KiB writes per volume (a hot set of"
                         f" {sz.pit_hot} blocks), cut into N maps by N markers;"
                         f" {sz.pit_reads} reads/round, half of them in the written blocks,"
                         " warm page cache; latency percentiles over all reads of all rounds;"
                         " the peer preads the live primary (same data as the view)")
    finally:
        for pv in vols:
            drop_volume(pv.vol)
    return sec


def _time_reads(read: Callable[[int], bytes], lbas: list[int]) -> tuple[list[float], float]:
    out = []
    clock = time.perf_counter_ns
    c0 = time.process_time()
    for lba in lbas:
        t0 = clock()
        read(lba)
        out.append(clock() - t0)
    return out, time.process_time() - c0


# ---------------------------------------------------------- (d) metadata overhead
def _on_disk(vol: Volume) -> dict[str, int]:
    def total(d: str, suffix: str) -> int:
        return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d)
                   if f.endswith(suffix))

    cat = sum(os.path.getsize(os.path.join(vol.directory, f)) for f in os.listdir(vol.directory)
              if f.startswith("catalog.db"))
    return {"log": total(vol.log_dir, ".seg"), "maps": total(vol.map_dir, ".dmap"),
            "catalog": cat}


def _overhead(wd: Workdir, n: int, mark_every: int, rng: random.Random) -> dict[str, float]:
    vol = new_volume(wd, GiB)
    buf = os.urandom(IO4K)
    # n distinct blocks in random order (an overwrite would shrink the map and
    # flatter the figure); the format's cost per write does not depend on where.
    order = rng.sample(range(n), n)
    try:
        for i, slot in enumerate(order, 1):
            vol.write(slot * (IO4K // BLOCK), buf)
            if i % mark_every == 0:
                vol.mark()
        if n % mark_every:
            vol.mark()
        vol.flush()
        sizes = _on_disk(vol)
        marks = len(vol.markers)
    finally:
        drop_volume(vol)
    data = n * IO4K
    return {"overhead": (sizes["log"] + sizes["maps"] - data) / data, "marks": marks,
            **sizes, "data": data}


def bench_meta(wd: Workdir, sz: Sizes, rng: random.Random) -> Section:
    sec = Section("d", "metadata overhead per 4 KiB write")
    n = sz.meta_writes
    one = _overhead(wd, n, n, rng)
    ov = one["overhead"] * 100
    sec.add(f"(log + maps - data) / data, {n} writes, 1 marker", ov, "%", "<= 2", ov <= 2)
    sec.add("  log bytes per write", one["log"] / n, "B")
    sec.add("  map bytes per write", one["maps"] / n, "B")
    sec.add("  catalog.db* bytes (not counted)", one["catalog"], "B")
    many = _overhead(wd, n // 4, sz.meta_mark_every, rng)
    sec.add(f"  same, {n // 4} writes, a marker every {sz.meta_mark_every} writes",
            many["overhead"] * 100, "%", note=f"{many['marks']} maps")
    sec.notes.append("distinct 4 KiB blocks written in random order; per write: 40-byte"
                     " record header + one 32-byte extent = 72 B (1.76%); each marker adds a"
                     " MARK record and a 64-byte map header")
    return sec


# ----------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes for CI (< 60 s)")
    ap.add_argument("--dir", help="where the temporary files go (default: the current"
                    " directory, so they land on the real disk, not tmpfs)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per measurement (median)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--only", default="abcd", help="sections to run, e.g. 'ad' (default abcd)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    if set(args.only) - set("abcd"):
        ap.error("--only takes letters from 'abcd'")
    sz = QUICK if args.quick else FULL
    parent = args.dir or os.getcwd()
    root = tempfile.mkdtemp(prefix=".bench-engine-", dir=parent)
    wd = Workdir(root)
    rng = random.Random(args.seed)
    load = os.getloadavg()
    print(f"bench/engine.py: {'quick' if args.quick else 'full'} run, {args.rounds} rounds,"
          f" python {platform.python_version()}, {os.cpu_count()} CPUs,"
          f" load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print("figures are medians over rounds; engine and peer alternate within each round")
    sections: list[Section] = []
    t0 = time.perf_counter()
    try:
        runs: dict[str, Callable[[], Section]] = {
            "a": lambda: bench_writes(wd, args.rounds, sz, rng),
            "b": lambda: bench_rewind(wd, args.rounds, sz, args.seed),
            "c": lambda: bench_pit(wd, args.rounds, sz, args.seed),
            "d": lambda: bench_meta(wd, sz, rng),
        }
        for key, run in runs.items():
            if key in args.only:
                t1 = time.perf_counter()
                sections.append(run())
                sections[-1].elapsed = time.perf_counter() - t1
                print_section(sections[-1])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    verdicts = [r for s in sections for r in s.rows if r.ok is not None]
    missed = [f"({s.key}) {r.metric}" for s in sections for r in s.rows if r.ok is False]
    print(f"\n{len(verdicts) - len(missed)}/{len(verdicts)} targets met in {elapsed:.0f} s"
          + (": missed " + "; ".join(missed) if missed else ""))
    if args.json:
        doc = {
            "mode": "quick" if args.quick else "full", "rounds": args.rounds,
            "seed": args.seed, "elapsed_s": elapsed, "sizes": asdict(sz),
            "python": platform.python_version(), "cpus": os.cpu_count(), "loadavg": load,
            "sections": [{"key": s.key, "title": s.title, "notes": s.notes,
                          "elapsed_s": s.elapsed,
                          "rows": [{**asdict(r), "verdict": r.verdict or None}
                                   for r in s.rows]} for s in sections],
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2, default=float)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
