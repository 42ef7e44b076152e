"""Child process of the SIGKILL crash tests (test_sigkill.py), and the model they share.

Run as ``python crash_child.py CONFIG_JSON``. After its imports the child waits
for a line on stdin (the parent starts it ahead of time), then prints ``opening``,
opens the protected volume named in the config (running recovery; creating the
volume on the very first run), prints ``ready <seq> <seconds the open took>``
on stdout, then issues operations until it is killed (or, if nobody kills it,
until ``max_seconds`` have passed; then it closes the volume and exits 0).

The operation stream is a pure function of ``(seed, seq)``: the record that
gets sequence number ``s`` is always :func:`op_for(cfg, s) <op_for>`, whatever
run issues it. A run resumes at ``vol.seq + 1`` of the reopened volume, so the
parent can rebuild the expected image at any seq by replaying ops ``1..seq``
without trusting anything the child wrote.

Each block a write puts down is :func:`block_bytes`:
a header naming the write (seed, seq, its first lba and block count, this
block's lba and index in the write) plus a keyed hash of that header, repeated
to fill the block. So any block read back can be checked and attributed.

Files the child keeps beside the volume:

* ``progress``: one JSON line per acknowledgement, appended and fsynced after
  ``flush()`` (or a FUA write, a marker, or any write when ``write_cache`` is
  off) returns: ``{"seq": s}`` means every record up to ``s`` was acknowledged
  durable.
* ``journal``: one line ``<seq> <kind> <lba> <count> .`` written (not
  fsynced) just before each operation is issued. A SIGKILL keeps the page
  cache, so the parent can tell which operation was in flight when the child
  died.

A kill can tear the line being appended; the next run closes it off with a
newline and the readers skip lines that are not well formed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import sys
import time
from array import array
from collections import OrderedDict
from dataclasses import dataclass

if __name__ == "__main__":  # make ``import volume_manager`` work from the repo root
    _ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if _ROOT not in sys.path:
        sys.path.insert(0, _ROOT)

WRITE, UNMAP, MARK = "write", "unmap", "mark"
_MAGIC = b"CDPKILL1"
_BLOCK_HDR = struct.Struct("<8sQQQIQI")  # magic seed seq first_lba count lba index


@dataclass(frozen=True, slots=True)
class Op:
    seq: int
    kind: str
    lba: int
    count: int
    fua: bool
    flush_after: bool

    @property
    def marker(self) -> str:
        return f"mk{self.seq}"


def op_for(cfg: dict, seq: int) -> Op:
    """The operation that gets sequence number ``seq`` (pure function of seed and seq)."""
    d = hashlib.blake2b(struct.pack("<QQ", cfg["seed"], seq), digest_size=32).digest()
    r = [int.from_bytes(d[i : i + 8], "little") for i in range(0, 32, 8)]
    flush_after = r[3] % cfg["flush_every"] == 0
    if r[0] % cfg["mark_every"] == 0:
        return Op(seq, MARK, 0, 0, False, flush_after)
    count = 1 + r[1] % cfg["max_count"]
    lba = r[2] % (cfg["num_blocks"] - count + 1)
    if (r[0] >> 16) % cfg["unmap_every"] == 0:
        return Op(seq, UNMAP, lba, count, False, flush_after)
    fua = bool(cfg["fua_every"]) and (r[0] >> 32) % cfg["fua_every"] == 0
    return Op(seq, WRITE, lba, count, fua, flush_after)


def block_bytes(cfg: dict, seq: int, lba: int, first_lba: int, count: int) -> bytes:
    """The content write ``seq`` (covering first_lba..+count) puts in block ``lba``."""
    hdr = _BLOCK_HDR.pack(_MAGIC, cfg["seed"], seq, first_lba, count, lba, lba - first_lba)
    digest = hashlib.blake2b(hdr, digest_size=32, key=b"cdp-sigkill").digest()
    unit = hdr + digest
    bs = cfg["block_size"]
    return (unit * (bs // len(unit) + 1))[:bs]


def write_payload(cfg: dict, op: Op) -> bytes:
    return b"".join(block_bytes(cfg, op.seq, op.lba + i, op.lba, op.count) for i in range(op.count))


def describe_block(cfg: dict, data: bytes) -> str:
    """What a block read back holds, for failure messages."""
    if data == bytes(len(data)):
        return "zeros"
    try:
        magic, seed, seq, first, count, lba, idx = _BLOCK_HDR.unpack_from(data)
    except struct.error:
        return "garbage"
    if magic != _MAGIC:
        return "garbage (no magic)"
    ok = data == block_bytes(cfg, seq, lba, first, count)
    return (
        f"write seq:{seq} (lba {first}+{count}) block {idx} for lba {lba}"
        f"{'' if ok else ' CORRUPT'}{'' if seed == cfg['seed'] else ' OTHER SEED'}"
    )


class Model:
    """Expected volume contents: which write (its seq; 0 = zeros) owns each block.

    Since an op is a pure function of its seq, the owner array alone determines
    the image; :meth:`snapshot` is that array, cheap enough to keep one per marker.
    """

    PAYLOAD_CACHE_BYTES = 32 << 20

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.seq = 0
        self.owner = self._blank()
        self._ops: dict[int, Op] = {}
        self._payloads: OrderedDict[int, bytes] = OrderedDict()
        self._payload_bytes = 0

    def _blank(self) -> array:
        return array("Q", bytes(8 * self.cfg["num_blocks"]))

    def op(self, seq: int) -> Op:
        op = self._ops.get(seq)
        if op is None:
            op = self._ops[seq] = op_for(self.cfg, seq)
        return op

    def _apply(self, owner: array, op: Op) -> None:
        if op.kind != MARK:
            value = op.seq if op.kind == WRITE else 0
            owner[op.lba : op.lba + op.count] = array("Q", [value]) * op.count

    def advance(self, to_seq: int) -> list[Op]:
        """Apply ops seq+1..to_seq; returns them."""
        done = []
        while self.seq < to_seq:
            op = self.op(self.seq + 1)
            self._apply(self.owner, op)
            self.seq += 1
            done.append(op)
        return done

    def snapshot(self) -> array:
        return array("Q", self.owner)

    def owner_at(self, seq: int) -> array:
        """The owner array at any seq, replayed from the start."""
        owner = self._blank()
        for s in range(1, seq + 1):
            self._apply(owner, self.op(s))
        return owner

    def payload(self, seq: int) -> bytes:
        data = self._payloads.get(seq)
        if data is not None:
            self._payloads.move_to_end(seq)
            return data
        data = write_payload(self.cfg, self.op(seq))
        self._payloads[seq] = data
        self._payload_bytes += len(data)
        while self._payload_bytes > self.PAYLOAD_CACHE_BYTES:
            self._payload_bytes -= len(self._payloads.popitem(last=False)[1])
        return data

    def image(self, snap: array | None = None) -> bytes:
        """The volume's bytes for an owner array (default: the current one)."""
        owner = self.owner if snap is None else snap
        bs = self.cfg["block_size"]
        out = []
        a = 0
        n = len(owner)
        while a < n:
            o = owner[a]
            b = a + 1
            while b < n and owner[b] == o:
                b += 1
            if o == 0:
                out.append(bytes((b - a) * bs))
            else:
                first = self.op(o).lba
                out.append(self.payload(o)[(a - first) * bs : (b - first) * bs])
            a = b
        return b"".join(out)


# ------------------------------------------------------------------- the child
_JOURNAL_LINE = re.compile(r"(\d+) (write|unmap|mark) (\d+) (\d+) \.")


def read_acks(path: str) -> list[int]:
    """Seqs acknowledged in a progress file (whole, well-formed lines only)."""
    out = []
    for line in _lines(path):
        try:
            out.append(int(json.loads(line)["seq"]))
        except (ValueError, KeyError, TypeError):
            continue  # a line torn by the kill, closed off by the next run
    return out


def read_journal(path: str) -> list[int]:
    """Seqs of the operations a journal says were issued (whole lines only)."""
    return [
        int(m.group(1)) for line in _lines(path) if (m := _JOURNAL_LINE.fullmatch(line)) is not None
    ]


def _lines(path: str) -> list[str]:
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    return [line.decode(errors="replace") for line in data.split(b"\n")[:-1]]


def _open_log(path: str) -> int:
    """Open an append-only text file; close off a line a kill left torn."""
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    size = os.fstat(fd).st_size
    if size and os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")
    return fd


def _ack(fd: int, seq: int) -> None:
    os.write(fd, (json.dumps({"seq": seq}) + "\n").encode())
    os.fsync(fd)


def main(config_path: str) -> int:
    from volume_manager import Volume, VolumeOptions

    # Started ahead of time (imports are slow on a busy machine), the child
    # waits for the parent's go: one line on stdin; end of file means stand down.
    if not sys.stdin.readline():
        return 0
    with open(config_path) as f:
        cfg = json.load(f)
    opts = VolumeOptions(
        segment_bytes=cfg["segment_bytes"],
        commit_interval=cfg["commit_interval"],
        write_cache=cfg["write_cache"],
    )
    vdir, primary = cfg["volume_dir"], cfg["primary"]
    progress = _open_log(cfg["progress"])
    journal = _open_log(cfg["journal"])
    exists = os.path.exists(os.path.join(vdir, "catalog.db"))
    sys.stdout.write("opening\n")  # the parent may kill us during recovery
    sys.stdout.flush()
    t0 = time.monotonic()
    if exists:
        vol = Volume.open(vdir, options=opts)
    else:
        vol = Volume.create(
            vdir,
            primary,
            size=cfg["num_blocks"] * cfg["block_size"],
            block_size=cfg["block_size"],
            options=opts,
        )
    sys.stdout.write(f"ready {vol.seq} {time.monotonic() - t0:.6f}\n")
    sys.stdout.flush()
    deadline = time.monotonic() + cfg["max_seconds"]
    durable_every_op = not cfg["write_cache"]
    while time.monotonic() < deadline:
        op = op_for(cfg, vol.seq + 1)
        os.write(journal, f"{op.seq} {op.kind} {op.lba} {op.count} .\n".encode())
        if op.kind == WRITE:
            got = vol.write(op.lba, write_payload(cfg, op), fua=op.fua)
        elif op.kind == UNMAP:
            got = vol.unmap(op.lba, op.count)
        else:
            got = vol.mark(op.marker).seq  # a marker's record is durable once mark returns
        if got != op.seq:
            raise SystemExit(f"op for seq:{op.seq} got seq:{got}")
        if op.flush_after:
            vol.flush()
            _ack(progress, op.seq)
        elif op.kind == MARK or op.fua or durable_every_op:
            _ack(progress, op.seq)
    vol.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
