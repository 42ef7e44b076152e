"""A guided tour of a protected volume, run by ``cdpswitch serve`` until the daemon exists.

It protects a 1 GiB thin volume ``vol0`` under the data directory (creating it
on first run), writes two versions of a small "file", marks the first, rewinds
to it, undoes the rewind, clones the past into an image file and prints what
happened at each step, so a new user sees the engine work end to end.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from volume_manager import Volume
from volume_manager.errors import EngineError

VOLUME_SIZE = 1 << 30
BLOCK = 512


def _pattern(tag: str, blocks: int) -> bytes:
    line = f"{tag} written at {time.strftime('%H:%M:%S')}\n".encode()
    return (line * (blocks * BLOCK // len(line) + 1))[: blocks * BLOCK]


def run(data_dir: Path) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    secondary = data_dir / "vol0.cdp"
    primary = data_dir / "vol0.img"
    if (secondary / "catalog.db").exists():
        vol = Volume.open(str(secondary))
        print(f"opened protected volume vol0 ({vol.num_blocks * vol.block_size >> 20} MiB),"
              f" newest write seq:{vol.seq}")
        for line in vol.recovery_report:
            print(f"  recovery: {line}")
    else:
        vol = Volume.create(str(secondary), str(primary), size=VOLUME_SIZE, block_size=BLOCK)
        print(f"created protected volume vol0: primary {primary}, secondary {secondary}")
    try:
        return _tour(vol, data_dir)
    except EngineError as exc:
        print(f"error: {exc}")
        return 1
    finally:
        vol.close()


def _tour(vol: Volume, data_dir: Path) -> int:
    n = vol.catalog.get_int("rewinds") + 1
    first = _pattern(f"version A of run {n}", 16)
    vol.write(0, first)
    good = vol.mark(f"good-{n}")
    print(f"wrote version A at blocks 0-15, marker {good.name!r} at seq:{good.seq}")
    vol.write(8, _pattern(f"version B of run {n}", 16))
    vol.flush()
    print(f"overwrote blocks 8-23 with version B (seq:{vol.seq}); now: "
          f"{vol.read(8, 1)[:40]!r}")
    result = vol.rewind(good.name)
    print(f"rewound to {good.name!r}: {result.blocks_rewritten} blocks rewritten; "
          f"block 8 reads {vol.read(8, 1)[:40]!r}")
    assert vol.read(0, 16) == first
    undo = vol.rewind(result.before_marker)
    print(f"undid the rewind with a rewind to {result.before_marker!r}"
          f" ({undo.blocks_rewritten} blocks)")
    image = data_dir / f"vol0-{good.name}.img"
    if not image.exists():
        vol.clone(good.name, str(image))
        print(f"cloned vol0 as of {good.name!r} into {image}")
    print(f"markers: {', '.join(sorted(vol.markers))}")
    print(f"delta maps: {len(vol.maps)}; log segments on {vol.directory}/log:"
          f" {len(os.listdir(vol.log_dir))}")
    return 0
