#!/usr/bin/env python3
"""Point-in-time images: how soon one serves its first read, and how fast it reads.

For a 1 GiB and an 8 GiB volume with the same history (the same number and sizes of
writes: 64 MiB sequential, then 20,000 4 KiB writes spread over the volume, a marker
``a``, then 5,000 more 4 KiB writes), on the real daemon (``cdpswitch serve``):

- **time to first read**: from the ``images.create`` admin call (at ``a``) through the
  ``tpg.lun_create`` that exports it, to the first completed 4 KiB read of the image LUN
  by a fresh ``qemu-io`` (whose own start, measured alone on the live LUN, is printed
  beside it). Target: under 1 s for both sizes: the image is served from the delta maps,
  nothing is copied first.
- **read throughput**: ``qemu-img bench -f raw -t none`` reads on the image LUN against
  the live volume's LUN, alternating, median of the rounds: 1 MiB sequential at queue
  depth 8 (up to 1 GiB) and 100,000 4 KiB "random" at queue depth 32 (a prime stride, as
  bench/iscsi.py).
  Target: image/live >= 0.8. One untimed pass over both LUNs first, so both read from
  the page cache (the log segments an image reads were written long before, the live
  volume's primary just now).

    python bench/images.py            # both sizes, 5 rounds
    python bench/images.py --quick    # 1 GiB only, 1 round
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from switch.admin_client import AdminClient  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
IQN = "iqn.2026-11.org.cdpswitch:images-bench"
STEP = 7919 * 4096
FIRST_READ_TARGET = 1.0
RATIO_TARGET = 0.8
READS_4K = 100_000


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        sys.exit(f"{tool} is missing: run `make deps` (qemu-utils, qemu-block-extra)")
    return path


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_daemon(work: Path, size: int, port: int) -> subprocess.Popen[str]:
    config = work / "switch.yaml"
    config.write_text(f"volumes:\n  vol0:\n    size: {size}\ntargets:\n  - iqn: {IQN}\n"
                      f"    tpgs:\n      - portals: ['127.0.0.1:{port}']\n"
                      f"        luns:\n          0: {{volume: vol0}}\n")
    log = open(work / "daemon.log", "w")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([sys.executable, "-m", "switch.cli", "serve", "--data-dir",
                             str(work / "data"), "--config", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=log, text=True)
    log.close()
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "ready":
            return proc
    sys.exit(f"the daemon did not start:\n{(work / 'daemon.log').read_text()}")


def qemu_bench(url: str, *args: str) -> float:
    done = subprocess.run([require("qemu-img"), "bench", "-f", "raw", "-t", "none", *args,
                           url], capture_output=True, text=True, timeout=900, check=False)
    m = re.search(r"Run completed in ([0-9.]+) seconds", done.stdout)
    if done.returncode != 0 or m is None:
        sys.exit(f"qemu-img bench {args} failed:\n{done.stdout}{done.stderr}")
    return float(m.group(1))


def qemu_io_read(url: str) -> float:
    t = time.perf_counter()
    done = subprocess.run([require("qemu-io"), "-r", "-f", "raw", "-c", "read 0 4k", url],
                          capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0 or "read 4096/4096" not in done.stdout:
        sys.exit(f"qemu-io read failed on {url}:\n{done.stdout}{done.stderr}")
    return time.perf_counter() - t


def history(url: str) -> None:
    qemu_bench(url, "-w", "-c", "64", "-d", "8", "-s", str(MiB), "--pattern", "0x11")
    qemu_bench(url, "-w", "-c", "20000", "-d", "32", "-s", "4096", "-S", str(STEP),
               "--pattern", "0x22")


def run_size(size: int, rounds: int, parent: Path) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="cdpswitch-images-", dir=parent))
    port = free_port()
    proc = start_daemon(work, size, port)
    live, image = (f"iscsi://127.0.0.1:{port}/{IQN}/{n}" for n in (0, 1))
    try:
        client = AdminClient(str(work / "data" / "admin.sock"))
        history(live)
        client.call("volume.mark", {"volume": "vol0", "name": "a"})
        qemu_bench(live, "-w", "-c", "5000", "-d", "32", "-s", "4096", "-S", str(STEP),
                   "--pattern", "0x33")
        client_start = statistics.median(qemu_io_read(live) for _ in range(3))
        t0 = time.perf_counter()
        client.call("images.create", {"volume": "vol0", "at": "a", "name": "img"})
        t1 = time.perf_counter()
        client.call("tpg.lun_create", {"iqn": IQN, "lun": 1, "image": "img"})
        t2 = time.perf_counter()
        first = qemu_io_read(image)
        total = time.perf_counter() - t0
        print(f"{size // GiB} GiB: images.create {1e3 * (t1 - t0):.0f} ms, lun_create"
              f" {1e3 * (t2 - t1):.0f} ms, first read {1e3 * first:.0f} ms (qemu-io alone"
              f" {1e3 * client_start:.0f} ms): {1e3 * total:.0f} ms in all", flush=True)
        ratios: dict[str, list[float]] = {"1M-seq-read": [], "4K-rand-read": []}
        # Runs of a second or more: shorter ones were mostly client start-up and
        # scheduling noise (single rounds from 0.63 to 1.11 for the same build).
        args = {"1M-seq-read": ["-c", str(min(size, GiB) // MiB), "-d", "8", "-s", str(MiB)],
                "4K-rand-read": ["-c", str(READS_4K), "-d", "32", "-s", "4096", "-S",
                                 str(STEP)]}
        for a in args.values():  # warm-up, untimed: both LUNs' data into the page cache
            for url in (live, image):
                qemu_bench(url, *a)
        for r in range(rounds):
            for case, a in args.items():
                order = (live, image) if r % 2 == 0 else (image, live)
                times = {url: qemu_bench(url, *a) for url in order}
                ratios[case].append(times[live] / times[image])
                print(f"  .. {case} round {r + 1}: image/live {ratios[case][-1]:.2f}",
                      file=sys.stderr, flush=True)
        client.close()
        result = {"size_gib": size // GiB, "first_read_s": round(total, 3),
                  "create_s": round(t1 - t0, 3), "export_s": round(t2 - t1, 3),
                  "qemu_io_alone_s": round(client_start, 3),
                  "first_read_ok": total < FIRST_READ_TARGET}
        for case, values in ratios.items():
            result[case] = round(statistics.median(values), 3)
            result[f"{case}_ok"] = statistics.median(values) >= RATIO_TARGET
        return result
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        if proc.stdout is not None:
            proc.stdout.close()
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 GiB only, one round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--dir", default=None, help="where to put the volumes (default: cwd)")
    args = ap.parse_args(argv)
    sizes = [GiB] if args.quick else [GiB, 8 * GiB]
    rounds = 1 if args.quick else args.rounds
    parent = Path(args.dir or os.getcwd())
    results = [run_size(size, rounds, parent) for size in sizes]
    print("\nsize  first-read  (target < 1 s)  1M-seq-read  4K-rand-read  (image/live, >= 0.8)")
    for r in results:
        print(f"{r['size_gib']:>2} GiB  {r['first_read_s']:8.3f} s  "
              f"{'PASS' if r['first_read_ok'] else 'MISS':>14}  "
              f"{r['1M-seq-read']:>11.2f}  {r['4K-rand-read']:>12.2f}  "
              f"{'PASS' if r['1M-seq-read_ok'] and r['4K-rand-read_ok'] else 'MISS'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
