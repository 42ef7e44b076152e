"""Power-loss tests: the write-ahead rule and recovery under simulated power cuts.

The engine runs on :class:`crashsim.CrashSimFiles` (a FAKE file layer, the one
the suite permits: a power cut cannot be produced for real, and SIGKILL keeps
the page cache). Each workload records every file operation and catalog
commit; afterwards crash states are sampled from the record (any subset of the
writes not yet made durable lost, writes torn at 512-byte boundaries, name
operations lost past the last directory sync) and the volume is opened on each,
which runs recovery. After recovery each state must hold:

(a) every write acknowledged as durable before the crash point (by a flush, a
    FUA write, a marker, a write with the write cache off): ``vol.seq`` is at
    least its seq, and at most the newest record issued before the crash;
(b) the live volume reads as the reference model's image at ``vol.seq``;
(c) every marker left reads back exactly (``vol.view``), so do the baseline and
    sampled ``seq:N`` points inside granular history; every acknowledged marker
    is still there unless a merge or fade-out that removes it had started;
(d) the primary file itself equals that image (redo happened).

Some states are SIGKILL states (the page cache survives) followed by a power
cut during or after recovery, and some power-loss states are cut again during
their recovery: recovery must itself obey the write-ahead rule.

The reference model is independent of the engine: block images per sequence
number, built from the data the test wrote and the seq each call returned. The
``Observed`` subclass only reports to the model what the engine's public calls
returned (rewind issues its writes through them); it changes no behaviour.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from crashsim import CrashSimFiles, CrashState  # tests/volume_manager/ (pytest puts it on sys.path)

from volume_manager.catalog import MarkerRow
from volume_manager.errors import SecondaryFullError
from volume_manager.records import RecordFlag
from volume_manager.volume import Volume, VolumeOptions

BS = 512
MIN_STATES = 1000
_counted: dict[str, int] = {}


# ------------------------------------------------------------------- the model
@dataclass
class Recorder:
    """What the test did and what the engine acknowledged, by op-log index."""

    sim: CrashSimFiles
    nblocks: int
    bs: int
    base: bytes
    records: dict[int, tuple[Any, ...]] = field(default_factory=dict)  # seq -> record
    acks: list[tuple[int, int]] = field(default_factory=list)  # (op index after return, seq)
    starts: list[tuple[int, int]] = field(default_factory=list)  # (op index at call, seq)
    markers: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (seq, ack idx)
    removals: list[tuple[int, set[str]]] = field(default_factory=list)  # (job start, removed)
    fades: list[tuple[int, int, int]] = field(default_factory=list)  # (start, end, target seq)
    spans: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, call)
    images: list[bytes] = field(default_factory=list)

    def now(self) -> int:
        return len(self.sim.ops)

    def build_images(self) -> None:
        buf = bytearray(self.base)
        top = max(self.records, default=0)
        self.images = [bytes(buf)]
        for s in range(1, top + 1):
            r = self.records[s]
            if r[0] == "w":
                buf[r[1] * self.bs : r[1] * self.bs + len(r[2])] = r[2]
            elif r[0] == "u":
                buf[r[1] * self.bs : (r[1] + r[2]) * self.bs] = bytes(r[2] * self.bs)
            self.images.append(bytes(buf))

    def image(self, seq: int) -> bytes:
        return self.images[seq]

    def acked(self, k: int) -> int:
        return max((s for i, s in self.acks if i <= k), default=0)

    def issued(self, k: int) -> int:
        return max((s for i, s in self.starts if i < k), default=0)


class Observed(Volume):
    """The real engine; only reports what its public calls returned to the model."""

    rec: Recorder

    def write(
        self,
        lba: int,
        data: bytes | memoryview,
        *,
        fua: bool = False,
        flags: RecordFlag = RecordFlag.NONE,
    ) -> int:
        start = self.rec.now()
        seq = super().write(lba, data, fua=fua, flags=flags)
        self.rec.records[seq] = ("w", lba, bytes(data))
        self.rec.starts.append((start, seq))
        if fua or not self.options.write_cache:
            self.rec.acks.append((self.rec.now(), seq))
        return seq

    def unmap(self, lba: int, count: int, *, flags: RecordFlag = RecordFlag.NONE) -> int:
        start = self.rec.now()
        seq = super().unmap(lba, count, flags=flags)
        self.rec.records[seq] = ("u", lba, count)
        self.rec.starts.append((start, seq))
        if not self.options.write_cache:
            self.rec.acks.append((self.rec.now(), seq))
        return seq

    def flush(self) -> None:
        seq = self.seq
        super().flush()
        self.rec.acks.append((self.rec.now(), seq))

    def mark(self, name: str | None = None, *, pinned: bool = False) -> MarkerRow:
        start = self.rec.now()
        m = super().mark(name, pinned=pinned)
        self.rec.records[m.seq] = ("m", m.name)
        self.rec.starts.append((start, m.seq))
        self.rec.acks.append((self.rec.now(), m.seq))
        self.rec.markers[m.name] = (m.seq, self.rec.now())
        self.rec.spans.append((start, self.rec.now(), "mark"))
        return m


class WriteAheadViolator(Observed):
    """A deliberately BROKEN engine for the harness self-test: its group commit
    writes and syncs the primary before it syncs the log."""

    def _commit(self, *, sync_primary: bool) -> None:
        with self._commit_lock:
            with self._lock:
                target = self._seq
                segs = [self._segments[s] for s in sorted(self._unsynced)
                        if s != self._active.id] + [self._active]
                self._unsynced.clear()
                dir_dirty, self._dir_dirty = self._dir_dirty, False
                self._apply(self._pending.take_upto(target), list(self._slabs),
                            self._spilled_seq)
            self.files.fdatasync(self._primary)  # primary first: the bug
            self._primary_synced = target
            self.write_out()
            for s in segs:
                if s is not self._active and s.wfh >= 0:
                    self.files.truncate(s.fh, s.end)
                self.files.fdatasync(s.fh)
            if dir_dirty:
                self.files.fsync_dir(self.log_dir)
            self._durable_seq = max(self._durable_seq, target)
            self._ck_taken = self._ck_done = self._ck_asked
            with self._lock:
                self._release_slabs(target)


# ------------------------------------------------------------------ workloads
@dataclass(frozen=True)
class Workload:
    name: str
    seed: int
    steps: int
    nblocks: int = 96
    segment_bytes: int = 16 << 10
    pending_soft: int = 4 << 10
    pending_hard: int = 12 << 10
    write_cache: bool = True
    max_write: int = 16
    block_size: int = BS
    prefill: bool = False
    history: float = 1.0  # weight of marks/merges/fades/rewinds
    reserve: int = 4 << 20  # VolumeOptions.reserve_bytes
    states: int = 260


@dataclass
class Run:
    w: Workload
    sim: CrashSimFiles
    rec: Recorder
    vol_dir: str
    primary: str
    k0: int  # first op index after Volume.create returned


def _options(w: Workload, commit_interval: float | None = None) -> VolumeOptions:
    return VolumeOptions(
        segment_bytes=w.segment_bytes,
        pending_soft_bytes=w.pending_soft,
        pending_hard_bytes=w.pending_hard,
        commit_interval=commit_interval,
        write_cache=w.write_cache,
        reserve_bytes=w.reserve,
        # The smallest write buffer: past two slabs, records are let go before
        # they are applied and read back from the log (Volume._spill).
        buffer_bytes=0,
    )

def _sim_volume(d: Path, w: Workload, n: int) -> tuple[CrashSimFiles, Volume, Path]:
    """A new n-block volume on a fresh crash simulator, under directory d."""
    vol_dir = d / "vol"
    vol_dir.mkdir(parents=True)
    sim = CrashSimFiles()
    vol = Volume.create(str(vol_dir), str(d / "primary.img"), size=n * BS, files=sim,
                        options=_options(w), catalog_hook=sim.catalog_hook)
    return sim, vol, vol_dir



def _point(vol: Volume, seq: int) -> str:
    for m in vol.markers.values():
        if m.seq == seq:
            return m.name
    return f"seq:{seq}"


def _boundaries(vol: Volume) -> list[int]:
    return [vol.baseline_seq] + [m.to_seq for m in vol.maps]


def _try_merge(vol: Observed, rng: random.Random) -> None:
    b = _boundaries(vol)
    cands = []
    for i in range(len(b)):
        for j in range(i + 2, min(len(b), i + 6)):
            if not any(b[i] < m.seq < b[j] and m.pinned for m in vol.markers.values()):
                cands.append((b[i], b[j]))
    if not cands:
        return
    lo, hi = rng.choice(cands)
    before = set(vol.markers)
    start = vol.rec.now()
    vol.merge(_point(vol, lo), _point(vol, hi))
    vol.rec.removals.append((start, before - set(vol.markers)))
    vol.rec.spans.append((start, vol.rec.now(), "merge"))


def _try_fade(vol: Observed, rng: random.Random) -> None:
    b = _boundaries(vol)[1:]
    cands = [
        s
        for s in b[: max(1, len(b) // 2)]
        if not any(m.seq < s and m.pinned for m in vol.markers.values())
    ]
    if not cands:
        return
    p = rng.choice(cands)
    before = set(vol.markers)
    start = vol.rec.now()
    vol.fade(_point(vol, p))
    vol.rec.removals.append((start, before - set(vol.markers)))
    vol.rec.fades.append((start, vol.rec.now(), p))
    vol.rec.spans.append((start, vol.rec.now(), "fade"))


def _try_rewind(vol: Observed, rng: random.Random) -> None:
    pts: list[str] = [m.name for m in vol.markers.values()]
    for m in vol.maps:
        if m.granular and m.to_seq - m.from_seq > 1:
            pts.append(f"seq:{rng.randint(m.from_seq + 1, m.to_seq)}")
    if not pts:
        return
    start = vol.rec.now()
    vol.rewind(rng.choice(pts))
    vol.rec.spans.append((start, vol.rec.now(), "rewind"))


def run_workload(tmp: Path, w: Workload, vol_cls: type[Observed] = Observed) -> Run:
    rng = random.Random(w.seed)
    sim = CrashSimFiles()
    vol_dir = tmp / "vol"
    vol_dir.mkdir()
    primary = str(tmp / "primary.img")
    bs = w.block_size
    size = w.nblocks * bs
    base = bytearray(size)
    if w.prefill:
        sim.makedirs(str(tmp))
        fh = sim.open(primary, create=True)
        sim.truncate(fh, size)
        for _ in range(w.nblocks // 4):
            lba = rng.randrange(w.nblocks)
            data = rng.randbytes(bs)
            sim.pwrite(fh, data, lba * bs)
            base[lba * bs : (lba + 1) * bs] = data
        sim.fdatasync(fh)
        sim.close(fh)
        sim.fsync_dir(str(tmp))
    rec = Recorder(sim, w.nblocks, bs, bytes(base))
    vol = vol_cls.create(
        str(vol_dir),
        primary,
        size=size,
        block_size=bs,
        files=sim,
        options=_options(w),
        catalog_hook=sim.catalog_hook,
    )
    assert isinstance(vol, vol_cls)
    vol.rec = rec
    k0 = rec.now()
    h = w.history
    kinds = ["write", "unmap", "flush", "fua", "mark", "merge", "fade", "rewind"]
    weights = [50, 8, 7, 5, 10 * h, 4 * h, 2 * h, 1.5 * h]
    for step in range(w.steps):
        kind = rng.choices(kinds, weights)[0]
        if kind in ("write", "fua"):
            count = rng.choice((1, 1, 2, 3, 4, 7, 8, w.max_write))
            lba = rng.randrange(w.nblocks - count + 1)
            vol.write(lba, rng.randbytes(count * bs), fua=kind == "fua")
        elif kind == "unmap":
            count = rng.randint(1, 12)
            vol.unmap(rng.randrange(w.nblocks - count + 1), count)
        elif kind == "flush":
            vol.flush()
        elif kind == "mark":
            name = f"mk{step}" if rng.random() < 0.6 else None
            vol.mark(name, pinned=rng.random() < 0.05)
        elif kind == "merge":
            _try_merge(vol, rng)
        elif kind == "fade":
            _try_fade(vol, rng)
        else:
            _try_rewind(vol, rng)
    vol.write(0, rng.randbytes(bs))  # an unacknowledged write, then a clean close
    rec.build_images()
    assert vol.read(0, w.nblocks) == rec.image(vol.seq), "the model disagrees with the engine"
    vol.close()
    return Run(w, sim, rec, str(vol_dir), primary, k0)


# -------------------------------------------------------------------- checking
def check_state(
    run: Run, st: CrashState, k: int, rng: random.Random, *, catalog_hook: bool = False
) -> Volume:
    """Open the crash state (recovery) and check (a)-(d). Returns the open volume."""
    rec = run.rec
    n = run.w.nblocks
    msg = f"[seed {run.w.seed} {st.label}]"
    assert st.has_catalog, msg
    vol = Volume.open(
        st.directory,
        files=st.files,
        options=_options(run.w),
        catalog_hook=st.files.catalog_hook if catalog_hook else None,
    )
    msg += f" recovered seq:{vol.seq} report={vol.recovery_report}"
    try:
        acked, issued = rec.acked(k), rec.issued(k)
        # (a) nothing acknowledged is lost, nothing never written appears
        assert vol.seq >= acked, f"{msg}: acknowledged seq:{acked} was lost"
        assert vol.seq <= issued, f"{msg}: seq past the last issued record seq:{issued}"
        want = rec.image(vol.seq)
        # (d) redo reached the primary file itself
        raw = st.files.read_file(run.primary)
        raw += bytes(n * run.w.block_size - len(raw))
        assert raw == want, (
            f"{msg}: primary file differs from the image at seq:{vol.seq}"
            f" in sectors {_diff(raw, want)}"
        )
        # (b) the live volume is the image of the recovered log
        got = vol.read(0, n)
        assert got == want, f"{msg}: live volume differs in sectors {_diff(got, want)}"
        # structure: contiguous maps, every marker on a map boundary
        prev = vol.baseline_seq
        for m in vol.maps:
            assert m.from_seq == prev, f"{msg}: maps not contiguous at seq:{prev}"
            prev = m.to_seq
        assert prev <= vol.seq, msg
        bounds = {vol.baseline_seq} | {m.to_seq for m in vol.maps}  # a fade keeps its marker
        # (c) retained points read back exactly
        fades_started = [f for f in rec.fades if f[0] < k]
        done = [f[2] for f in fades_started if f[1] <= k]
        assert vol.baseline_seq in {0} | {f[2] for f in fades_started}, msg
        assert vol.baseline_seq >= max(done, default=0), f"{msg}: a finished fade-out undone"
        points = {f"seq:{vol.baseline_seq}": vol.baseline_seq}
        for name, mk in vol.markers.items():
            assert name in rec.markers and rec.markers[name][0] == mk.seq, (
                f"{msg}: unknown marker {name!r} at seq:{mk.seq}"
            )
            assert mk.seq in bounds, f"{msg}: marker {name} is not on a map boundary"
            points[name] = mk.seq
        removable = set().union(*(r for i, r in rec.removals if i < k))
        for name, (seq, ack) in rec.markers.items():
            if ack <= k and name not in removable and seq > vol.baseline_seq:
                assert name in vol.markers, f"{msg}: acknowledged marker {name} was lost"
        spans = [(m.from_seq, m.to_seq) for m in vol.maps if m.granular]
        last = vol.maps[-1].to_seq if vol.maps else vol.baseline_seq
        if vol.seq > last:
            spans.append((last, vol.seq))
        for lo, hi in rng.sample(spans, min(2, len(spans))):
            s = rng.randint(lo + 1, hi) if hi > lo else hi
            points[f"seq:{s}"] = s
        for point, seq in points.items():
            with vol.view(point) as v:
                got = v.read(0, n)
            want = rec.image(seq)
            assert got == want, (
                f"{msg}: point {point} (seq:{seq}) differs in sectors {_diff(got, want)}"
            )
    except BaseException:
        vol.abandon()
        raise
    return vol


def _diff(a: bytes, b: bytes) -> list[int]:
    """Indexes of the 512-byte sectors that differ."""
    return [i for i in range(len(b) // BS) if a[i * BS : (i + 1) * BS] != b[i * BS : (i + 1) * BS]]


def _keeps_working(run: Run, vol: Volume, st: CrashState, rng: random.Random) -> None:
    """A recovered volume takes writes, flushes, marks, and reopens cleanly."""
    n = run.w.nblocks
    img = bytearray(vol.read(0, n))
    lba = rng.randrange(n - 4)
    bs = run.w.block_size
    data = rng.randbytes(4 * bs)
    vol.write(lba, data)
    img[lba * bs : (lba + 4) * bs] = data
    m = vol.mark(f"after-crash-{rng.randrange(1 << 30)}")
    vol.close()
    vol = Volume.open(st.directory, files=st.files, options=_options(run.w))
    try:
        assert vol.read(0, n) == bytes(img), f"[{st.label}] write after recovery lost"
        with vol.view(m.name) as v:
            assert v.read(0, n) == bytes(img), f"[{st.label}] marker after recovery"
    finally:
        vol.close()


def _tally(stats: Counter[str], run: Run, st: CrashState, vol: Volume) -> None:
    """What the crash states exercised (printed, to show the sampling is not idle)."""
    k = st.k
    stats["unacknowledged records lost"] += vol.seq < run.rec.issued(k)
    stats["acknowledged records only"] += vol.seq == run.rec.acked(k)
    for key, text in (
        ("log truncated", "log truncated"),
        ("marker restored", "restored marker"),
        ("fade-out finished", "fade-out"),
        ("segment deleted", "deleted log"),
    ):
        stats[key] += any(text in line for line in vol.recovery_report)
    for a, b, call in run.rec.spans:
        if a < k < b:
            stats[f"during {call}"] += 1


def crash_and_check(run: Run, tmp: Path, n_states: int, seed: int, stats: Counter[str]) -> int:
    """Sample crash states of a workload and check each; returns how many."""
    rng = random.Random(seed)
    counter = iter(range(1 << 30))

    def fresh(_i: int = 0) -> str:  # a new, empty real directory for one crash state
        d = tmp / f"crash{next(counter)}"
        d.mkdir()
        return str(d)

    checked = 0
    for st in run.sim.crash_states(
        rng, n_states, fresh, old_dir=run.vol_dir, lo=run.k0, label=run.w.name
    ):
        roll = rng.random()
        vol = check_state(run, st, st.k, rng, catalog_hook=roll < 0.25)
        checked += 1
        _tally(stats, run, st, vol)
        if roll < 0.15:
            _second_crash(run, st, st.k, vol, rng, fresh)
        elif roll < 0.25:
            vol.close()
        elif roll < 0.32:
            _keeps_working(run, vol, st, rng)
        else:
            vol.abandon()
        shutil.rmtree(st.directory, ignore_errors=True)
    # SIGKILL states: the page cache survives the crash, then the power fails
    # during or after recovery, with the unsynced data still volatile.
    for _ in range(max(1, n_states // 10)):
        k = rng.randint(run.k0, len(run.sim.ops))
        st = run.sim.crash_state(
            k, rng, fresh(), old_dir=run.vol_dir, process_crash=True, label=f"{run.w.name} sigkill"
        )
        vol = check_state(run, st, k, rng, catalog_hook=True)
        checked += 1
        _tally(stats, run, st, vol)
        _second_crash(run, st, k, vol, rng, fresh)
        shutil.rmtree(st.directory, ignore_errors=True)
    return checked


def _second_crash(
    run: Run, st: CrashState, k: int, vol: Volume, rng: random.Random, fresh: Callable[[], str]
) -> None:
    """Power fails again during (or just after) the recovery of ``st``."""
    vol.close()
    sim = st.files
    for k2 in sim.crash_points(rng, 2):
        st2 = sim.crash_state(
            k2,
            rng,
            fresh(),
            old_dir=st.directory,
            keep=rng.random(),
            tear=0.3,
            label=f"{st.label} then power cut at {k2}/{len(sim.ops)}",
        )
        check_state(run, st2, k, rng).abandon()
        shutil.rmtree(st2.directory, ignore_errors=True)


# ----------------------------------------------------------------------- tests
@pytest.fixture
def work_dir(tmp_path: Path) -> Iterator[Path]:
    """Where the volumes and crash states live. Each state's real SQLite catalog
    syncs on every commit, which costs far more than the test on a shared disk;
    that durability is not under test (SQLite is trusted, the simulator snapshots
    each commit), so they go on tmpfs when there is one."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="powerloss-", dir=shm))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


WORKLOADS = [
    Workload(
        "mixed-8k-segments",
        seed=1101,
        steps=170,
        segment_bytes=8 << 10,
        pending_soft=2 << 10,
        pending_hard=6 << 10,
        max_write=8,
        states=320,
    ),
    Workload("history-jobs", seed=2202, steps=190, history=2.5, segment_bytes=12 << 10, states=320),
    Workload(
        "prefilled-no-write-cache",
        seed=3303,
        steps=120,
        prefill=True,
        write_cache=False,
        segment_bytes=32 << 10,
        nblocks=64,
        states=240,
    ),
    Workload(
        "big-writes",
        seed=4404,
        steps=140,
        nblocks=160,
        max_write=40,
        segment_bytes=32 << 10,
        pending_soft=8 << 10,
        pending_hard=24 << 10,
        states=300,
    ),
    Workload(  # writes to the primary torn inside a block
        "4k-blocks",
        seed=5505,
        steps=130,
        block_size=4096,
        nblocks=24,
        max_write=4,
        prefill=True,
        segment_bytes=32 << 10,
        pending_soft=8 << 10,
        pending_hard=24 << 10,
        states=300,
    ),
]


@pytest.mark.parametrize("w", WORKLOADS, ids=lambda w: w.name)
def test_power_loss_states(work_dir: Path, w: Workload) -> None:
    t = time.perf_counter()
    run = run_workload(work_dir, w)
    ops = len(run.sim.ops)
    stats: Counter[str] = Counter()
    n = crash_and_check(run, work_dir, w.states, seed=w.seed * 7 + 1, stats=stats)
    _counted[w.name] = n
    print(
        f"\n{w.name}: {ops} ops, {run.sim.catalog_commits} catalog commits,"
        f" {n} crash states checked in {time.perf_counter() - t:.1f}s; {dict(stats)}"
    )
    assert n >= w.states


def test_power_loss_state_count() -> None:
    """The workloads sample at least 1,000 crash states between them (each test
    above asserts it checked its share; when they ran first, their sum too)."""
    assert sum(w.states for w in WORKLOADS) >= MIN_STATES
    if len(_counted) == len(WORKLOADS):
        assert sum(_counted.values()) >= MIN_STATES, _counted


def test_harness_catches_write_ahead_violation(work_dir: Path) -> None:
    """The checker is not vacuous: an engine that syncs the primary before the
    log fails it in some crash state."""
    w = Workload("violator", seed=6505, steps=30, history=0.0, segment_bytes=64 << 10)
    run = run_workload(work_dir, w, WriteAheadViolator)
    rng = random.Random(5)
    failures = 0
    points = range(run.k0, len(run.sim.ops) + 1)
    # only what was made durable survives: the primary's data without its log
    for i, k in enumerate(points):
        d = work_dir / f"v{i}"
        d.mkdir()
        st = run.sim.crash_state(
            k, rng, str(d), old_dir=run.vol_dir, keep=0.0, tear=0.0, label="violator"
        )
        try:
            check_state(run, st, k, rng).abandon()
        except AssertionError as exc:
            failures += 1
            assert "differs" in str(exc)
    # caught, and only where the broken order shows (between the two syncs)
    assert 0 < failures < len(points) // 2, (failures, len(points))


def test_crashsim_durability_model(work_dir: Path) -> None:
    """The simulator's own rules: unsynced data and names may vanish, synced ones stay."""
    sim = CrashSimFiles()
    d = str(work_dir)
    sim.makedirs(os.path.join(d, "sub"))
    fh = sim.open(os.path.join(d, "sub", "f"), create=True)
    sim.pwrite(fh, b"A" * 1024, 0)
    sim.fdatasync(fh)
    sim.fsync_dir(os.path.join(d, "sub"))
    sim.fsync_dir(d)
    synced = len(sim.ops)
    sim.pwrite(fh, b"B" * 1536, 512)
    g = sim.open(os.path.join(d, "sub", "g"), create=True)
    sim.pwrite(g, b"G", 0)
    sim.fdatasync(g)
    rng = random.Random(1)
    seen_f, seen_g = set(), set()
    for i in range(200):
        out = work_dir / f"s{i}"
        out.mkdir()
        st = sim.crash_state(len(sim.ops), rng, str(out), keep=rng.random(), tear=0.8)
        f = st.files.read_file(os.path.join(d, "sub", "f"))
        assert f[:512] == b"A" * 512  # synced
        for s in range(1, len(f) // 512):  # each later sector: old or new, never mixed
            assert f[s * 512 : (s + 1) * 512] in (b"A" * 512, b"B" * 512, bytes(512))
        seen_f.add(f)
        seen_g.add(st.files.exists(os.path.join(d, "sub", "g")))
        shutil.rmtree(out)
    assert b"A" * 1024 in seen_f and b"A" * 512 + b"B" * 1536 in seen_f
    assert len(seen_f) > 3  # torn variants occur
    assert seen_g == {True, False}  # the name was never made durable
    out = work_dir / "durable"
    out.mkdir()
    st = sim.crash_state(synced, rng, str(out), keep=0.0)
    assert st.files.read_file(os.path.join(d, "sub", "f")) == b"A" * 1024
    assert not st.files.exists(os.path.join(d, "sub", "g"))
    # a SIGKILL state keeps everything, volatile: a later power cut may still lose it
    out = work_dir / "kill"
    out.mkdir()
    st = sim.crash_state(len(sim.ops), rng, str(out), process_crash=True)
    assert st.files.read_file(os.path.join(d, "sub", "f")) == b"A" * 512 + b"B" * 1536
    out2 = work_dir / "kill2"
    out2.mkdir()
    st2 = st.files.crash_state(len(st.files.ops), rng, str(out2), keep=0.0)
    assert st2.files.read_file(os.path.join(d, "sub", "f")) == b"A" * 1024


def _fill_until_full(
    sim: CrashSimFiles,
    vol: Volume,
    rng: random.Random,
    n: int,
    img: bytearray,
    marks: dict[str, bytes],
) -> tuple[str, str]:
    """Write and mark until the secondary is full; returns where it filled up
    ("write", "roll": a new log segment, "mark": a delta map) and the name of the
    marker of that step. Every failure must be SecondaryFullError."""
    for i in range(4000):
        kind = "mark" if i % 2 else "write"
        try:
            if kind == "mark":
                marks[vol.mark(f"n{i}").name] = bytes(img)
            else:
                count = rng.randint(1, 4)
                lba = rng.randrange(n - count)
                data = rng.randbytes(count * BS)
                vol.write(lba, data)
                img[lba * BS : (lba + count) * BS] = data
        except SecondaryFullError:
            last = sim.ops[-2]
            if kind == "write" and last[0] == "create" and last[1].endswith(".seg"):
                return "roll", f"n{i}"
            return kind, f"n{i}"
    raise AssertionError("the secondary never filled up")


def _check_image(vol: Volume, n: int, img: bytearray, marks: dict[str, bytes], what: str) -> None:
    assert vol.read(0, n) == bytes(img), f"{what}: live volume"
    for name, want in marks.items():
        if name in vol.markers:
            with vol.view(name) as v:
                assert v.read(0, n) == want, f"{what}: marker {name}"


@pytest.mark.parametrize("free_by", ["fade", "more-space"])
def test_full_secondary(work_dir: Path, free_by: str) -> None:
    """FAULT INJECTION (ENOSPC from the simulator): a full secondary fails the write
    or the marker with SecondaryFullError, the volume and its history stay intact,
    and once space is freed (a fade-out, or more space) it works again, across a
    power cut too. The limits vary so the store fills at a record, at a segment
    roll and at a delta map."""
    # Space is reserved ahead of the log in 1 KiB steps, so a write in the middle
    # of a segment can be the one to find the store full.
    w = Workload("full", seed=6606, steps=0, segment_bytes=8 << 10, reserve=1 << 10)
    n = 64
    failed_at: set[str] = set()
    kinds = {"write", "roll", "mark"}
    # At least 16 trials, and on until the store has filled up at each kind of step
    # (with space reserved ahead of the log, a failing marker is the rarest).
    for trial in range(300):
        if trial >= 16 and failed_at == kinds:
            break
        d = work_dir / f"t{trial}"
        sim, vol, vol_dir = _sim_volume(d, w, n)
        rng = random.Random(trial)
        used = sum(len(sim.read_file(p)) for p in sim.names() if p.startswith(str(vol_dir)))
        sim.set_space_limit(str(vol_dir), used + (16 << 10) + trial * 173)
        img = bytearray(n * BS)
        marks: dict[str, bytes] = {}
        failed_at.add(_fill_until_full(sim, vol, rng, n, img, marks)[0])
        what = f"trial {trial}"
        assert marks, what
        _check_image(vol, n, img, marks, f"{what}, full")
        # still full: a flush works, another write fails the same way
        vol.flush()
        with pytest.raises(SecondaryFullError):
            for _ in range(4):
                vol.write(0, rng.randbytes(4 * BS))
        _check_image(vol, n, img, marks, f"{what}, full again")
        if free_by == "fade":
            vol.fade(list(marks)[-1])
        else:
            sim.set_space_limit(None)
        for _ in range(3):
            lba = rng.randrange(n - 4)
            data = rng.randbytes(4 * BS)
            vol.write(lba, data)
            img[lba * BS : (lba + 4) * BS] = data
        marks[vol.mark(f"after-{trial}").name] = bytes(img)
        _check_image(vol, n, img, marks, f"{what}, space freed")
        k = len(sim.ops)
        vol.abandon()
        out = d / "after"
        out.mkdir()
        st = sim.crash_state(k, rng, str(out), old_dir=str(vol_dir), keep=0.0)
        vol = Volume.open(st.directory, files=st.files, options=_options(w))
        try:
            _check_image(vol, n, img, marks, f"{what}, after a power cut")
            assert f"after-{trial}" in vol.markers
        finally:
            vol.close()
    assert failed_at == kinds, failed_at


def test_marker_retried_after_full_secondary(work_dir: Path) -> None:
    """FAULT INJECTION: a marker that failed on a full secondary leaves its MARK
    record in the log; made again under the same name once there is room, every
    crash state around the retry recovers one marker of that name, reading back
    the volume as it was at that marker's record."""
    w = Workload("full-retry", seed=7707, steps=0, segment_bytes=8 << 10, reserve=1 << 10)
    n = 64
    for trial in range(200):
        d = work_dir / f"t{trial}"
        sim, vol, vol_dir = _sim_volume(d, w, n)
        used = sum(len(sim.read_file(p)) for p in sim.names() if p.startswith(str(vol_dir)))
        sim.set_space_limit(str(vol_dir), used + (12 << 10) + trial * 53)
        img = bytearray(n * BS)
        marks: dict[str, bytes] = {}
        kind, name = _fill_until_full(sim, vol, random.Random(trial), n, img, marks)
        if kind == "mark":
            break
        vol.abandon()
    else:
        raise AssertionError("no marker ever failed")
    first = vol.seq  # the failed marker's MARK record
    assert name not in vol.markers
    at_first = bytes(img)
    sim.set_space_limit(None)
    vol.write(0, b"x" * BS)
    img[:BS] = b"x" * BS
    k0 = len(sim.ops)
    again = vol.mark(name)
    vol.abandon()
    rng = random.Random(7707)
    for i, k in enumerate(range(k0, len(sim.ops) + 1)):
        out = d / f"c{i}"
        out.mkdir()
        st = sim.crash_state(k, rng, str(out), old_dir=str(vol_dir), keep=rng.random())
        vol = Volume.open(st.directory, files=st.files, options=_options(w))
        try:
            seq = vol.markers[name].seq
            assert seq in (first, again.seq), f"{st.label}: {name} at seq:{seq}"
            with vol.view(name) as v:
                assert v.read(0, n) == (at_first if seq == first else bytes(img)), st.label
            live = bytes(img) if vol.seq > first else at_first  # the write after it survived?
            assert vol.read(0, n) == live, st.label
        finally:
            vol.close()
