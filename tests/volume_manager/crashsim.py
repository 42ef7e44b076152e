"""A power-loss crash simulator for the engine's file layer.

THIS IS A FAKE. :class:`CrashSimFiles` implements the
:class:`volume_manager.fileio.FileLayer` protocol entirely in memory and is used
only by the power-loss tests. It is the one fake the test suite permits, for a
reason of principle: a power cut cannot be produced for real here. Killing the
process (SIGKILL) leaves the kernel's page cache intact, so every write the
engine made reaches the disk anyway and a broken write-ahead order goes
unseen. To see what a power cut leaves behind, the file operations have to be
recorded and the states a disk may hold afterwards constructed, the way
CrashMonkey and ALICE do it.

Durability model (the one documented in ``volume_manager/fileio.py``):

* ``pwrite``/``pwritev``/``punch_hole`` data and ``truncate`` are volatile until
  ``fdatasync`` of that file, which makes every earlier data operation on the
  file durable (an ``fdatasync`` is a durability barrier for its file);
* creating (``open(create=True)`` of a new name), unlinking and renaming a name,
  and creating a directory, are volatile until ``fsync_dir`` of the parent
  directory (a barrier for every earlier name operation in that directory);
* ``rename`` is atomic: after a crash either the old or the new name holds;
* a catalog commit is one atomic, durable step. The catalog is SQLite on the
  real disk (``<volume>/catalog.db``); SQLite is trusted for its own
  durability. The engine calls ``catalog_hook`` after every commit, and
  :meth:`CrashSimFiles.catalog_hook` records a snapshot of the database
  (``Connection.serialize()``) as an operation in the same ordered log, so the
  order between catalog commits and file operations is what gets tested.

A *crash state* at crash point ``k`` (the first ``k`` operations were issued,
then the power went) is built as follows. Each file starts from its content at
its last ``fdatasync`` before ``k``; each later data operation on it is kept or
lost at random, and a kept write may be torn at 512-byte sector boundaries
(only a prefix of its sectors reaches the disk, or any subset of them:
CrashMonkey's model). Name operations after the last ``fsync_dir`` of their
directory are kept or lost at random too, respecting order per name (once an
operation on a name is lost, every later one on that name is lost as well, and
nothing is created inside a directory that does not exist). The catalog is the
snapshot of the last commit before ``k``. A *process crash* state (SIGKILL)
keeps every issued operation, but the ones not yet durable stay volatile in the
new simulator, so a power cut during or after the next recovery can still lose
them.

Paths: the volume directory must exist on the real disk (SQLite opens the
catalog there); the simulator holds every other file. ``makedirs`` of a
directory that exists on the real disk records it as durable; ``exists`` answers
for the simulator's names and falls back to the real disk for names it does not
hold (that is how ``exists(<volume>/catalog.db)`` sees the real catalog);
``listdir`` lists the simulator's names only.

Fault injection (the other permitted use): :meth:`set_space_limit` makes writes
that would grow the files under a directory past a byte limit fail with
``ENOSPC``, to simulate a full secondary store.
"""

from __future__ import annotations

import bisect
import errno
import os
import random
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["SECTOR", "CrashSimFiles", "CrashState"]

SECTOR = 512
Op = tuple[Any, ...]  # one recorded operation: (kind, ...)

# Operation kinds of the log (tuples, first element is the kind):
W = "write"  # (W, ino, offset, data)
P = "punch"  # (P, ino, offset, length)
T = "truncate"  # (T, ino, size)
S = "fdatasync"  # (S, ino, snapshot of the whole file after the sync)
C = "create"  # (C, path, ino)
U = "unlink"  # (U, path)
R = "rename"  # (R, src, dst)
M = "mkdir"  # (M, path)
D = "fsync_dir"  # (D, path)
DB = "catalog"  # (DB, serialized database)
_DATA_OPS = (W, P, T)
_NAME_OPS = (C, U, R, M)


def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


def _parents(op: Op) -> tuple[str, ...]:
    if op[0] == R:
        return (os.path.dirname(op[1]), os.path.dirname(op[2]))
    return (os.path.dirname(op[1]),)


def _touched(op: Op) -> tuple[str, ...]:
    return (op[1], op[2]) if op[0] == R else (op[1],)


def _sectors(offset: int, length: int) -> list[tuple[int, int]]:
    """Split [offset, offset+length) at 512-byte boundaries of the file."""
    out = []
    pos, end = offset, offset + length
    while pos < end:
        nxt = min(end, (pos // SECTOR + 1) * SECTOR)
        out.append((pos, nxt))
        pos = nxt
    return out


def _apply_data(
    buf: bytearray,
    op: Op,
    pieces: list[tuple[int, int]] | None = None,
) -> None:
    """Apply a data operation (or only the given sector pieces of it) to ``buf``."""
    kind = op[0]
    if kind == T:
        size = op[2]
        if size < len(buf):
            del buf[size:]
        else:
            buf.extend(bytes(size - len(buf)))
        return
    if kind == W:
        _, _, off, data = op
        for a, b in pieces if pieces is not None else [(off, off + len(data))]:
            if a > len(buf):
                buf.extend(bytes(a - len(buf)))
            buf[a:b] = data[a - off : b - off]
        return
    if kind == P:  # FALLOC_FL_KEEP_SIZE: never extends the file
        _, _, off, length = op
        for a, b in pieces if pieces is not None else [(off, off + length)]:
            b = min(b, len(buf))
            if a < b:
                buf[a:b] = bytes(b - a)
        return
    raise AssertionError(f"not a data operation: {kind}")


@dataclass
class CrashState:
    """One simulated crash: a fresh simulator holding what survived, and where."""

    k: int  # crash point: the first k operations were issued
    files: CrashSimFiles  # the surviving state (durable, or volatile for a process crash)
    directory: str  # the volume directory of the state (catalog written there)
    has_catalog: bool
    label: str  # for assertion messages


class CrashSimFiles:
    """In-memory FileLayer that records every operation for crash simulation. A FAKE."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        # current (volatile) state
        self._data: dict[int, bytearray] = {}
        self._names: dict[str, int] = {}
        self._dirs: set[str] = set()
        self._handles: dict[int, tuple[int, bool]] = {}  # fh -> (ino, read_only)
        self._next_fh = 3
        self._next_ino = 1
        # durable state at the start of the log
        self._base_data: dict[int, bytes] = {}
        self._base_names: dict[str, int] = {}
        self._base_dirs: set[str] = set()
        self._base_catalog: bytes | None = None
        # indexes into ops
        self._ino_ops: dict[int, list[int]] = {}
        self._ino_syncs: dict[int, list[int]] = {}
        self._name_ops: list[int] = []
        self._dir_syncs: dict[str, list[int]] = {}
        self._catalog_ops: list[int] = []
        self._space: tuple[str, int] | None = None
        self._reserved: dict[int, int] = {}  # ino -> bytes reserved (reserve), volatile
        self.catalog_commits = 0

    # ------------------------------------------------------------- recording
    def _log(self, op: Op) -> None:
        i = len(self.ops)
        self.ops.append(op)
        kind = op[0]
        if kind in _DATA_OPS or kind == S:
            self._ino_ops.setdefault(op[1], []).append(i)
            if kind == S:
                self._ino_syncs.setdefault(op[1], []).append(i)
        elif kind in _NAME_OPS:
            self._name_ops.append(i)
        elif kind == D:
            self._dir_syncs.setdefault(op[1], []).append(i)
        elif kind == DB:
            self._catalog_ops.append(i)

    def catalog_hook(self, conn: sqlite3.Connection) -> None:
        """Pass as ``catalog_hook``: records each catalog commit as one durable step."""
        self.catalog_commits += 1
        self._log((DB, conn.serialize()))

    def set_space_limit(self, directory: str | None, limit: int = 0) -> None:
        """FAULT INJECTION: writes growing the files under ``directory`` past
        ``limit`` bytes fail with ENOSPC. ``None`` lifts the limit."""
        self._space = None if directory is None else (_norm(directory), limit)

    def _held(self, ino: int) -> int:
        return max(len(self._data[ino]), self._reserved.get(ino, 0))

    def _used(self, directory: str) -> int:
        pre = directory + os.sep
        return sum(self._held(ino) for p, ino in self._names.items() if p.startswith(pre))

    def _check_space(self, ino: int, end: int) -> None:
        if self._space is None:
            return
        directory, limit = self._space
        pre = directory + os.sep
        if not any(i == ino and p.startswith(pre) for p, i in self._names.items()):
            return
        grow = end - self._held(ino)
        if grow > 0 and self._used(directory) + grow > limit:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def _fh(self, fh: int, write: bool = False) -> int:
        try:
            ino, read_only = self._handles[fh]
        except KeyError:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF)) from None
        if write and read_only:
            raise OSError(errno.EBADF, "handle is read-only")
        return ino

    def _isdir(self, path: str) -> bool:
        if path in self._dirs:
            return True
        if os.path.isdir(path):  # a real directory (outside the simulation): durable
            self._dirs.add(path)
            self._base_dirs.add(path)
            return True
        return False

    # ---------------------------------------------------------- the FileLayer
    def open(self, path: str, *, create: bool = False, read_only: bool = False,
             direct: bool = False) -> int:
        # direct: the same handle (durability does not depend on the page cache here)
        path = _norm(path)
        ino = self._names.get(path)
        if ino is None:
            if not create:
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
            if not self._isdir(os.path.dirname(path)):
                raise FileNotFoundError(errno.ENOENT, "no such directory (simulated)", path)
            ino = self._next_ino
            self._next_ino += 1
            self._data[ino] = bytearray()
            self._names[path] = ino
            self._log((C, path, ino))
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = (ino, read_only)
        return fh

    def close(self, fh: int) -> None:
        self._fh(fh)
        del self._handles[fh]

    def pread(self, fh: int, length: int, offset: int) -> bytes:
        return bytes(self._data[self._fh(fh)][offset : offset + length])

    def readinto(self, fh: int, buf: memoryview, offset: int) -> int:
        data = self.pread(fh, buf.nbytes, offset)
        buf[: len(data)] = data
        return len(data)

    def pwrite(self, fh: int, data: bytes | memoryview, offset: int) -> int:
        ino = self._fh(fh, write=True)
        data = bytes(data)
        self._check_space(ino, offset + len(data))
        op = (W, ino, offset, data)
        _apply_data(self._data[ino], op)
        self._log(op)
        return len(data)

    def pwritev(self, fh: int, buffers: list[bytes | memoryview], offset: int) -> int:
        return self.pwrite(fh, b"".join(bytes(b) for b in buffers), offset)

    def fdatasync(self, fh: int) -> None:
        ino = self._fh(fh)
        self._log((S, ino, bytes(self._data[ino])))

    def truncate(self, fh: int, size: int) -> None:
        ino = self._fh(fh, write=True)
        self._check_space(ino, size)
        if self._reserved.get(ino, 0) > size:  # as ext4: space past the new end is freed
            self._reserved[ino] = size
        op = (T, ino, size)
        _apply_data(self._data[ino], op)
        self._log(op)

    def size(self, fh: int) -> int:
        return len(self._data[self._fh(fh)])

    def punch_hole(self, fh: int, offset: int, length: int) -> None:
        if length <= 0:
            return
        ino = self._fh(fh, write=True)
        op = (P, ino, offset, length)
        _apply_data(self._data[ino], op)
        self._log(op)

    def data_extents(self, fh: int) -> list[tuple[int, int]]:
        n = len(self._data[self._fh(fh)])
        return [(0, n)] if n else []

    def reserve(self, fh: int, offset: int, length: int) -> None:
        # Only the space accounting (set_space_limit): a reservation writes nothing,
        # and which crash states exist does not depend on it.
        ino = self._fh(fh, write=True)
        self._check_space(ino, offset + length)
        self._reserved[ino] = max(self._reserved.get(ino, 0), offset + length)

    def start_writeback(self, fh: int, offset: int, length: int) -> None:
        self._fh(fh)  # a hint with no effect on durability: nothing to record

    def advise_random(self, fh: int) -> None:
        self._fh(fh)  # a caching hint: nothing to record

    def prefetch(self, fh: int, offset: int, length: int) -> None:
        self._fh(fh)  # a caching hint: nothing to record

    def drop_cache(self, fh: int, offset: int, length: int) -> None:
        self._fh(fh)  # a caching hint: nothing to record

    def fsync_dir(self, path: str) -> None:
        path = _norm(path)
        if not self._isdir(path):
            raise FileNotFoundError(errno.ENOENT, "no such directory (simulated)", path)
        self._log((D, path))

    def unlink(self, path: str) -> None:
        path = _norm(path)
        if path not in self._names:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        del self._names[path]
        self._log((U, path))

    def rename(self, src: str, dst: str) -> None:
        src, dst = _norm(src), _norm(dst)
        if src not in self._names:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), src)
        if not self._isdir(os.path.dirname(dst)):
            raise FileNotFoundError(errno.ENOENT, "no such directory (simulated)", dst)
        self._names[dst] = self._names.pop(src)
        self._log((R, src, dst))

    def listdir(self, path: str) -> list[str]:
        path = _norm(path)
        if not self._isdir(path):
            raise FileNotFoundError(errno.ENOENT, "no such directory (simulated)", path)
        out = [os.path.basename(p) for p in self._names if os.path.dirname(p) == path]
        out += [os.path.basename(d) for d in self._dirs if os.path.dirname(d) == path and d != path]
        return sorted(out)

    def exists(self, path: str) -> bool:
        path = _norm(path)
        if path in self._names or path in self._dirs:
            return True
        # Names the simulator does not hold: the real disk (the SQLite catalog).
        return os.path.exists(path)

    def makedirs(self, path: str) -> None:
        path = _norm(path)
        missing = []
        p = path
        while not self._isdir(p):
            missing.append(p)
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent
        for d in reversed(missing):
            if d in self._names:
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), d)
            self._dirs.add(d)
            self._log((M, d))

    def free_bytes(self, path: str) -> int:
        if self._space is not None:
            directory, limit = self._space
            return max(0, limit - self._used(directory))
        return 1 << 40

    # ------------------------------------------------------------- inspection
    def read_file(self, path: str) -> bytes:
        """Current content of a file (for checks)."""
        return bytes(self._data[self._names[_norm(path)]])

    def names(self) -> list[str]:
        return sorted(self._names)

    def barriers(self) -> list[int]:
        """Indexes of the operations that make something durable."""
        return [i for i, op in enumerate(self.ops) if op[0] in (S, D, DB)]

    # --------------------------------------------------------- crash states
    def _last_before(self, idx: list[int] | None, k: int) -> int:
        if not idx:
            return -1
        j = bisect.bisect_left(idx, k) - 1
        return idx[j] if j >= 0 else -1

    def _decide_pieces(
        self, op: Op, rng: random.Random, tear: float
    ) -> list[tuple[int, int]] | None:
        """None: the whole operation; else the sector pieces that reach the disk."""
        if op[0] == T or rng.random() >= tear:
            return None
        length = len(op[3]) if op[0] == W else op[3]
        pieces = _sectors(op[2], length)
        if len(pieces) < 2 and rng.random() < 0.5:
            return []
        if rng.random() < 0.5:  # a prefix of the sectors
            return pieces[: rng.randrange(len(pieces) + 1)]
        return [p for p in pieces if rng.random() < 0.5]  # any subset

    def crash_state(
        self,
        k: int,
        rng: random.Random,
        new_dir: str,
        *,
        old_dir: str | None = None,
        keep: float = 0.5,
        tear: float = 0.3,
        process_crash: bool = False,
        label: str = "",
    ) -> CrashState:
        """The state left by a power cut (or a SIGKILL) after the first ``k`` ops.

        Unsynced operations survive with probability ``keep``; a surviving
        write is torn with probability ``tear``. Paths under ``old_dir`` are
        moved to ``new_dir`` (a real, empty directory), where the catalog
        snapshot is written.
        """
        assert 0 <= k <= len(self.ops)
        ops = self.ops
        old = None if old_dir is None else _norm(old_dir)
        new = _norm(new_dir)

        def remap(p: str) -> str:
            if old is not None and (p == old or p.startswith(old + os.sep)):
                return new + p[len(old) :]
            return p

        volatile: list[int] = []
        # names
        names = dict(self._base_names)
        dirs = set(self._base_dirs)
        lost: set[str] = set()
        for i in self._name_ops:
            if i >= k:
                break
            op = ops[i]
            durable = all(
                self._last_before(self._dir_syncs.get(par), k) > i for par in _parents(op)
            )
            if durable:
                ok = True
            elif process_crash:
                volatile.append(i)
                continue
            else:
                ok = not (set(_touched(op)) | set(_parents(op))) & lost and rng.random() < keep
            if ok and not all(par in dirs for par in _parents(op)):
                ok = False
            if not ok:
                lost.update(_touched(op))
                continue
            kind = op[0]
            if kind == C:
                names[op[1]] = op[2]
            elif kind == U:
                names.pop(op[1], None)
            elif kind == R:
                if op[1] in names:
                    names[op[2]] = names.pop(op[1])
            elif kind == M:
                dirs.add(op[1])
        # data
        inos = set(self._data) if process_crash else set(names.values())
        contents: dict[int, bytes] = {}
        for ino in inos:
            idx = self._ino_ops.get(ino, [])
            s = self._last_before(self._ino_syncs.get(ino), k)
            buf = bytearray(ops[s][2] if s >= 0 else self._base_data.get(ino, b""))
            for i in idx[bisect.bisect_right(idx, s) :]:
                if i >= k:
                    break
                op = ops[i]
                if process_crash:
                    volatile.append(i)
                elif rng.random() < keep:
                    _apply_data(buf, op, self._decide_pieces(op, rng, tear))
            contents[ino] = bytes(buf)
        c = self._last_before(self._catalog_ops, k)
        catalog = ops[c][1] if c >= 0 else self._base_catalog

        sim = CrashSimFiles()
        sim._next_ino = self._next_ino
        sim._base_data = contents
        sim._data = {ino: bytearray(b) for ino, b in contents.items()}
        sim._base_names = {remap(p): ino for p, ino in names.items()}
        sim._names = dict(sim._base_names)
        sim._base_dirs = {remap(d) for d in dirs}
        sim._dirs = set(sim._base_dirs)
        sim._base_catalog = catalog
        sim._dirs.add(new)
        sim._base_dirs.add(new)
        for i in sorted(volatile):  # a process crash: the page cache survives
            sim._replay(ops[i], remap)
        if catalog is not None:
            with open(os.path.join(new, "catalog.db"), "wb") as f:
                f.write(catalog)
        mode = "sigkill" if process_crash else f"keep={keep:.2f} tear={tear:.2f}"
        return CrashState(
            k, sim, new, catalog is not None, f"{label} crash point {k}/{len(ops)} ({mode})"
        )

    def _replay(self, op: Op, remap: Callable[[str], str]) -> None:
        """Apply an operation of another simulator's log here, as volatile."""
        kind = op[0]
        if kind in _DATA_OPS:
            _apply_data(self._data[op[1]], op)
            self._log(op)
        elif kind == C:
            path = remap(op[1])
            self._names[path] = op[2]
            self._log((C, path, op[2]))
        elif kind == U:
            path = remap(op[1])
            self._names.pop(path, None)
            self._log((U, path))
        elif kind == R:
            src, dst = remap(op[1]), remap(op[2])
            if src in self._names:
                self._names[dst] = self._names.pop(src)
            self._log((R, src, dst))
        elif kind == M:
            path = remap(op[1])
            self._dirs.add(path)
            self._log((M, path))
        else:
            raise AssertionError(f"cannot replay {kind}")

    def crash_points(
        self, rng: random.Random, n: int, lo: int = 0, hi: int | None = None
    ) -> list[int]:
        """``n`` crash points in [lo, hi]: half next to a durability barrier
        (just before and just after it, where ordering mistakes show), half
        uniform."""
        hi = len(self.ops) if hi is None else hi
        near = [b + d for b in self.barriers() for d in (0, 1) if lo <= b + d <= hi]
        out = []
        for _ in range(n):
            if near and rng.random() < 0.5:
                out.append(rng.choice(near))
            else:
                out.append(rng.randint(lo, hi))
        return out

    def crash_states(
        self,
        rng: random.Random,
        n: int,
        make_dir: Callable[[int], str],
        *,
        old_dir: str | None = None,
        lo: int = 0,
        hi: int | None = None,
        label: str = "",
    ) -> Iterator[CrashState]:
        """``n`` sampled crash states with varied loss models.

        ``make_dir(i)`` returns a new, empty real directory for state ``i``.
        """
        for i, k in enumerate(self.crash_points(rng, n, lo, hi)):
            mode = rng.random()
            if mode < 0.2:
                keep, tear = 0.0, 0.0  # only what was made durable
            elif mode < 0.3:
                keep, tear = 1.0, 0.0  # everything issued (a clean cut)
            else:
                keep, tear = rng.random(), rng.choice((0.0, 0.3, 0.8))
            yield self.crash_state(
                k,
                rng,
                make_dir(i),
                old_dir=old_dir,
                keep=keep,
                tear=tear,
                label=f"{label} state {i}",
            )
