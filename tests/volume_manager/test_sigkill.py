"""Crash tests with real processes: a child writing to a protected volume is SIGKILLed.

A child process (``crash_child.py``) opens a small protected volume on real
files, with the background committer running and small log segments so they
roll, and issues a deterministic stream of writes, unmaps and markers,
flushing every few operations and logging each acknowledgement. The parent
kills it with SIGKILL at a random moment, reopens the volume in-process (so
recovery runs) and checks:

(a) no acknowledged write was lost (``vol.seq`` >= the last acknowledged seq),
    and, since SIGKILL keeps the page cache, no completed record either: only
    the operation in flight may be missing;
(b) the live volume reads exactly as the model image at ``vol.seq`` (replaying
    the deterministic op stream 1..seq), and so do the primary file's own
    bytes: recovery redid the log tail onto the primary;
(c) the recovery report is a list of strings (printed, not required empty);
(d) the markers are exactly those of the marker records kept, and they read
    back exactly through ``vol.view`` (a sample each round, all in the last);
(e) every few rounds, on a copy of the volume (so the main chain continues
    untouched), a rewind to a marker or to a plain seq (both in the last
    round) gives the model image there, and undoing it restores the image
    before the rewind.

Some rounds also kill a second child while it is opening the crashed volume,
i.e. most likely in the middle of recovery. Then the parent closes the volume
and starts the next child, which continues the stream from ``vol.seq + 1``.
Every op is a pure function of (seed, seq), so the expected image at any seq
is known without trusting the child.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from volume_manager import Volume, VolumeOptions

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
CHILD = HERE / "crash_child.py"

_spec = importlib.util.spec_from_file_location("sigkill_crash_child", CHILD)
assert _spec is not None and _spec.loader is not None
cc = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cc
_spec.loader.exec_module(cc)

START_TIMEOUT = 120.0  # seconds for a child to start and open the volume (loaded machine)
KILL_DELAY = (0.05, 0.6)  # seconds after the child is ready


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    old = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + old if old else "")
    return env


def _options(cfg: dict) -> VolumeOptions:
    return VolumeOptions(segment_bytes=cfg["segment_bytes"])


def _primary_bytes(cfg: dict, path: str) -> bytes:
    size = cfg["num_blocks"] * cfg["block_size"]
    with open(path, "rb") as f:
        data = f.read()
    assert len(data) == size, f"primary is {len(data)} bytes, expected {size}"
    return data


def _assert_image(cfg: dict, got: bytes, want: bytes, what: str) -> None:
    if got == want:
        return
    bs = cfg["block_size"]

    def block(data: bytes, b: int) -> bytes:
        return data[b * bs : (b + 1) * bs]

    bad = [b for b in range(len(want) // bs) if block(got, b) != block(want, b)]
    lines = [
        f"block {b}: holds {cc.describe_block(cfg, block(got, b))},"
        f" expected {cc.describe_block(cfg, block(want, b))}"
        for b in bad[:8]
    ]
    pytest.fail(f"{what}: {len(bad)} blocks differ\n" + "\n".join(lines))


@dataclass
class ChildRun:
    killed: bool  # SIGKILLed (False: it finished on its own)
    ready: bool  # it had opened the volume (recovery done) when it died
    start_seq: int | None  # vol.seq it started writing from
    open_seconds: float | None  # how long its Volume.open took


class _Child:
    """One child process and its stdout lines.

    It is started ahead of time and waits, imports done, until :meth:`go`.
    """

    def __init__(self, cfg_path: str, err_path: str) -> None:
        self.err_path = err_path
        with open(err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, str(CHILD), cfg_path],
                cwd=str(REPO_ROOT),
                env=_child_env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                bufsize=0,
            )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.stdout = self.proc.stdout
        self.lines: list[str] = []
        self._buf = b""

    def go(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # expect() reports a dead child
            self.stdin.write(b"go\n")
            self.stdin.close()

    def _read(self, timeout: float | None) -> bool:
        """Read what the child printed into the buffer; False at end of file."""
        ready, _, _ = select.select([self.stdout], [], [], timeout)
        if not ready:
            return True
        chunk = os.read(self.stdout.fileno(), 4096)
        self._buf += chunk
        return bool(chunk)

    def expect(self, word: str) -> list[str]:
        """Wait for the next stdout line, which must start with ``word``."""
        deadline = time.monotonic() + START_TIMEOUT
        while b"\n" not in self._buf and time.monotonic() < deadline:
            if not self._read(deadline - time.monotonic()):
                break
        line, nl, rest = self._buf.partition(b"\n")
        text = line.decode() if nl else ""
        self._buf = rest if nl else self._buf
        if not text.startswith(word):
            self.proc.kill()
            self.proc.wait()
            pytest.fail(
                f"child did not say {word!r} (rc={self.proc.returncode}, said {text!r}):\n"
                + Path(self.err_path).read_text()
            )
        self.lines.append(text)
        return text.split()

    def kill(self) -> ChildRun:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        while self._read(None):
            pass
        self.lines += self._buf.decode().splitlines()
        self._buf = b""
        rc = self.proc.returncode
        if rc != -signal.SIGKILL:
            assert rc == 0, f"child failed (rc={rc}):\n" + Path(self.err_path).read_text()
        ready = [ln.split() for ln in self.lines if ln.startswith("ready ")]
        return ChildRun(
            killed=rc == -signal.SIGKILL,
            ready=bool(ready),
            start_seq=int(ready[0][1]) if ready else None,
            open_seconds=float(ready[0][2]) if ready else None,
        )

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stdin.close()
        self.stdout.close()


class _Chain:
    """One volume killed over and over, with the parent's model of its contents."""

    def __init__(self, tmp: Path, cfg: dict, seed: int) -> None:
        self.tmp = tmp
        self.cfg = dict(
            cfg,
            seed=seed,
            volume_dir=str(tmp / "secondary"),
            primary=str(tmp / "primary.img"),
            progress=str(tmp / "progress"),
            journal=str(tmp / "journal"),
            max_seconds=30.0,
        )
        self.model = cc.Model(self.cfg)
        self.snaps: dict[int, object] = {}  # marker seq -> owner snapshot
        self.rng = random.Random(seed)
        self.open_seconds = 0.05
        self.kills = 0  # children killed while writing
        self.recovery_kills = 0  # children killed while opening (recovering)
        self.cfg_path = str(tmp / "child.json")
        self._spare: _Child | None = None
        self.copy_checks = 0
        self._spawned = 0

    def _child(self, cfg: dict) -> _Child:
        """A started child (the one spawned ahead, if any), told to go with ``cfg``."""
        Path(self.cfg_path).write_text(json.dumps(cfg))
        child, self._spare = self._spare, None
        if child is None:
            child = self._spawn()
        child.go()
        return child

    def _spawn(self) -> _Child:
        self._spawned += 1
        return _Child(self.cfg_path, str(self.tmp / f"stderr.{self._spawned}"))

    def spawn_spare(self) -> None:
        """Start the next child now, so its imports overlap the parent's checks."""
        if self._spare is None:
            self._spare = self._spawn()

    def close(self) -> None:
        if self._spare is not None:
            self._spare.cleanup()
            self._spare = None

    def advance(self, to_seq: int) -> None:
        while self.model.seq < to_seq:
            (op,) = self.model.advance(self.model.seq + 1)
            if op.kind == cc.MARK:
                self.snaps[op.seq] = self.model.snapshot()

    def image_at(self, seq: int) -> bytes:
        if seq == self.model.seq:
            return self.model.image()
        if seq in self.snaps:
            return self.model.image(self.snaps[seq])  # type: ignore[arg-type]
        return self.model.image(self.model.owner_at(seq))

    # ------------------------------------------------------------ one round
    def round(
        self, n: int, *, child_cfg: dict, recovery_kill: bool, copy_check: bool, last: bool
    ) -> None:
        cfg = dict(self.cfg, **child_cfg)
        prev_seq = self.model.seq
        journal_before = len(cc.read_journal(cfg["journal"]))
        # a child that writes until it is killed at a random moment
        child = self._child(cfg)
        try:
            child.expect("opening")
            ready = child.expect("ready ")
            self.open_seconds = float(ready[2])
            self.spawn_spare()
            time.sleep(self.rng.uniform(*KILL_DELAY))
            run = child.kill()
        finally:
            child.cleanup()
        assert run.start_seq == prev_seq, "the child did not start where the last round ended"
        self.kills += run.killed
        writers = 1
        # then perhaps one killed while it opens the crashed volume (recovery)
        if recovery_kill:
            child = self._child(cfg)
            try:
                child.expect("opening")
                time.sleep(self.rng.uniform(0, 1.5 * self.open_seconds))
                second = child.kill()
            finally:
                child.cleanup()
            # (not counted as a kill while writing even if it got that far)
            self.recovery_kills += second.killed and not second.ready
            writers += second.ready
        self.spawn_spare()
        self.check_reopen(
            n, prev_seq, cfg, cc.read_journal(cfg["journal"])[journal_before:], last=last,
            writers=writers,
        )
        if copy_check:
            self.copy_checks += 1
            kinds = ("marker", "seq") if last else ("marker", "seq")[self.copy_checks % 2 :][:1]
            self.check_rewinds_on_copy(n, kinds)

    def check_reopen(
        self, n: int, prev_seq: int, cfg: dict, issued: list[int], *, last: bool,
        writers: int = 1,
    ) -> None:
        vol = Volume.open(cfg["volume_dir"], options=_options(cfg))
        try:
            report = vol.recovery_report
            assert isinstance(report, list) and all(isinstance(r, str) for r in report)
            seq = vol.seq
            acked = max(cc.read_acks(cfg["progress"]), default=0)
            in_flight = issued[-1] if issued else prev_seq
            print(
                f"round {n}: seq {prev_seq}->{seq} acked={acked} in-flight={in_flight}"
                f" markers={len(vol.markers)} write_cache={cfg['write_cache']} report={report}"
            )
            # (a) nothing acknowledged is lost. Writes not yet flushed may be: with
            # the write cache on, records still in the engine's write buffer
            # (volume_manager/logbuf.py) die with the process, as a power cut
            # would take them; without it, each is durable when it returns, so
            # at most the one operation in flight may be missing.
            assert seq >= acked, f"acknowledged seq:{acked} lost, log ends at seq:{seq}"
            assert seq >= prev_seq
            assert seq <= in_flight, (
                f"log ends at seq:{seq} but the child was issuing seq:{in_flight}"
            )
            if not cfg["write_cache"]:
                assert in_flight - 1 <= seq, (
                    f"log ends at seq:{seq} but the child was issuing seq:{in_flight}"
                )
            if issued and not cfg["write_cache"] and in_flight - writers > prev_seq:
                # every operation a child completed is durable when it returns, and
                # acknowledged, except that the kill may fall between the two: each
                # child that wrote may leave its last completed op unacknowledged (the
                # recovery-kill child can get far enough to write on a busy machine).
                # A child killed in its first operation completed none, and the newest
                # ack may be an earlier round's (which may have had the write cache on)
                assert acked >= in_flight - writers
            # (b) the live volume and the primary file equal the log's image
            self.advance(seq)
            want = self.model.image()
            nb = cfg["num_blocks"]
            _assert_image(cfg, vol.read(0, nb), want, f"round {n}: live volume")
            _assert_image(
                cfg,
                _primary_bytes(cfg, vol.primary_path),
                want,
                f"round {n}: primary file after recovery",
            )
            # (d) markers: exactly the marker records kept, each readable
            expect = {f"mk{s}": s for s in self.snaps if s <= seq}
            assert {m.name: m.seq for m in vol.markers.values()} == expect
            names = sorted(vol.markers, key=lambda k: vol.markers[k].seq)
            if last:
                todo = names
            else:  # the newest marker and a few others
                todo = names[-1:] + self.rng.sample(names[:-1], min(3, len(names[:-1])))
            for name in todo:
                with vol.view(name) as v:
                    _assert_image(
                        cfg,
                        v.read(0, nb),
                        self.image_at(vol.markers[name].seq),
                        f"round {n}: view of marker {name}",
                    )
        finally:
            vol.close()
        # closing made everything durable: the next child starts from here
        _assert_image(
            cfg, _primary_bytes(cfg, cfg["primary"]), want, f"round {n}: primary after close"
        )

    def check_rewinds_on_copy(self, n: int, kinds: tuple[str, ...]) -> None:
        """(e) rewinds on a copy of the volume, leaving the main chain untouched."""
        cfg = self.cfg
        nb = cfg["num_blocks"]
        copy = self.tmp / "copy"
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir()
        sec = copy / "secondary"
        prim = copy / "primary.img"
        shutil.copytree(cfg["volume_dir"], sec)
        shutil.copyfile(cfg["primary"], prim)
        # the catalog names the primary by absolute path: point the copy at its own
        db = sqlite3.connect(sec / "catalog.db")
        try:
            with db:
                db.execute("UPDATE meta SET value=? WHERE key='primary'", (str(prim),))
        finally:
            db.close()
        seq = self.model.seq
        now = self.model.image()
        vol = Volume.open(str(sec), options=_options(cfg))
        try:
            assert vol.primary_path == str(prim)
            assert vol.seq == seq
            _assert_image(cfg, vol.read(0, nb), now, f"round {n}: copy")
            marks = [k for k in vol.markers if k.startswith("mk")]
            points: list[str] = []
            if marks and ("marker" in kinds or seq <= 1):
                points.append(self.rng.choice(marks))
            if seq > 1 and ("seq" in kinds or not marks):
                points.append(f"seq:{self.rng.randrange(1, seq)}")
            for point in points:
                before_seq = vol.seq
                before = vol.read(0, nb)
                target = vol.resolve(point)
                res = vol.rewind(point)
                assert res.point_seq == target
                want = self.image_at(target)
                _assert_image(
                    cfg, vol.read(0, nb), want, f"round {n}: after rewind to {point} (seq:{target})"
                )
                assert vol.markers[res.before_marker].seq == before_seq + 1
                with vol.view(res.after_marker) as v:
                    _assert_image(cfg, v.read(0, nb), want, f"round {n}: {res.after_marker}")
                with vol.view(res.before_marker) as v:
                    _assert_image(cfg, v.read(0, nb), before, f"round {n}: {res.before_marker}")
                undo = vol.rewind(res.before_marker)
                assert undo.point_seq == before_seq + 1
                _assert_image(
                    cfg, vol.read(0, nb), before, f"round {n}: after undoing the rewind to {point}"
                )
            _assert_image(cfg, vol.read(0, nb), now, f"round {n}: copy after rewinds and undos")
        finally:
            vol.close()
        _assert_image(cfg, _primary_bytes(cfg, str(prim)), now, f"round {n}: copy's primary")
        # the copy reopens cleanly, as rewound and undone
        vol = Volume.open(str(sec), options=_options(cfg))
        try:
            assert vol.recovery_report == []
            _assert_image(cfg, vol.read(0, nb), now, f"round {n}: copy reopened")
        finally:
            vol.close()
        shutil.rmtree(copy)


def _kill_rounds(
    tmp: Path, cfg: dict, *, seed: int, kills: int, child_cfg: Callable[[random.Random], dict]
) -> _Chain:
    """Run rounds until ``kills`` children were killed while writing."""
    seed = int(os.environ.get("CDP_SIGKILL_SEED", seed))  # to soak with other seeds
    print(f"seed {seed}")
    chain = _Chain(tmp, cfg, seed)
    rounds = 0
    t0 = time.monotonic()
    try:
        while chain.kills < kills:
            assert rounds < kills + 10, f"only {chain.kills} of {rounds} children were killed"
            last = chain.kills == kills - 1
            chain.round(
                rounds,
                child_cfg=child_cfg(chain.rng),
                recovery_kill=rounds % 4 == 3,
                copy_check=last or rounds % 6 == 5,
                last=last,
            )
            rounds += 1
    finally:
        chain.close()
    print(
        f"{chain.kills} kills while writing, {chain.recovery_kills} while recovering,"
        f" {rounds} rounds, final seq:{chain.model.seq}, {len(chain.snaps)} markers,"
        f" {time.monotonic() - t0:.1f}s"
    )
    assert chain.model.seq > 0
    return chain


BASE_CFG = {
    "block_size": 512,
    "num_blocks": 8192,  # 4 MiB
    "segment_bytes": 256 << 10,  # segments roll every ~60 writes
    "max_count": 16,
    "mark_every": 40,
    "unmap_every": 12,
    "flush_every": 6,
    "fua_every": 0,
    "write_cache": True,
    "commit_interval": 0.5,
}


@pytest.mark.slow
def test_sigkill_small_writes(tmp_path: Path) -> None:
    """30 kills of a child doing 1-16 block writes, unmaps, markers and flushes."""
    chain = _kill_rounds(tmp_path, BASE_CFG, seed=20240611, kills=30, child_cfg=lambda rng: {})
    assert chain.kills == 30


@pytest.mark.slow
def test_sigkill_big_writes_fua_and_no_write_cache(tmp_path: Path) -> None:
    """25 kills with 4 KiB blocks, writes up to 128 KiB, FUA writes, and runs that
    alternate between write cache on and off (every write durable on return)."""
    cfg = dict(
        BASE_CFG,
        block_size=4096,
        num_blocks=1024,
        segment_bytes=512 << 10,
        max_count=32,
        mark_every=30,
        unmap_every=10,
        flush_every=8,
        fua_every=5,
    )
    chain = _kill_rounds(
        tmp_path,
        cfg,
        seed=77,
        kills=25,
        child_cfg=lambda rng: {
            "write_cache": rng.random() < 0.5,
            "commit_interval": rng.choice([0.5, 0.05]),
        },
    )
    assert chain.kills == 25
