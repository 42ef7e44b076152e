"""Real initiators against ``python -m switch.iscsi_serve``: access control, CHAP, a large
image round trip and two initiators at once.

Clients: libiscsi's iscsi-ls / iscsi-inq (CHAP user and secret in the URL, mutual CHAP
through LIBISCSI_CHAP_TARGET_USERNAME / _PASSWORD), QEMU's qemu-img and qemu-io. A missing
client fails the test and says to run ``make deps``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from iscsi_served import IQN, TIMEOUT, Served, require, run, start_served

from volume_manager import Volume

BLOCK = 512
ALICE = "iqn.2026-11.org.test:alice"
BOB = "iqn.2026-11.org.test:bob"
INITIATOR_SECRET = "initiator-secret-1"
TARGET_SECRET = "target-secret-22"
DISCOVERY_SECRET = "discovery-secret-333"
CHAP_ENV = {"CDPSWITCH_CHAP_SECRET": INITIATOR_SECRET,
            "CDPSWITCH_MUTUAL_CHAP_SECRET": TARGET_SECRET,
            "CDPSWITCH_DISCOVERY_CHAP_SECRET": DISCOVERY_SECRET}  # fmt: skip


def attempt(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run a client that may fail; the caller asserts on the outcome."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, check=False,
                          env={**os.environ, **(env or {})})  # fmt: skip


@pytest.fixture
def chap_served(tmp_path: Path) -> Iterator[Served]:
    for tool in ("iscsi-ls", "iscsi-inq"):
        require(tool)
    server = start_served(tmp_path, 16 << 20, env=CHAP_ENV, options=(
        "--chap", "alice", "--mutual-chap", "target", "--discovery-chap", "disco",
        "--allow", ALICE))  # fmt: skip
    try:
        yield server
    finally:
        assert server.stop() == 0


def lun_url(served: Served, credentials: str = "") -> str:
    return f"iscsi://{credentials}127.0.0.1:{served.port}/{IQN}/0"


def test_discovery_needs_its_chap_and_shows_only_permitted_targets(chap_served: Served) -> None:
    portal = f"127.0.0.1:{chap_served.port}"
    without = attempt("iscsi-ls", "-i", ALICE, f"iscsi://{portal}")
    assert without.returncode != 0 and IQN not in without.stdout
    wrong = attempt("iscsi-ls", "-i", ALICE, f"iscsi://disco%not-the-secret-0@{portal}")
    assert wrong.returncode != 0 and IQN not in wrong.stdout
    listed = run("iscsi-ls", "-i", ALICE, f"iscsi://disco%{DISCOVERY_SECRET}@{portal}")
    assert f"Target:{IQN} Portal:{portal},1" in listed
    # an initiator outside the target's ACL discovers nothing
    hidden = attempt("iscsi-ls", "-i", BOB, f"iscsi://disco%{DISCOVERY_SECRET}@{portal}")
    assert IQN not in hidden.stdout


def test_one_way_and_mutual_chap(chap_served: Served) -> None:
    good = lun_url(chap_served, f"alice%{INITIATOR_SECRET}@")
    inq = run("iscsi-inq", "-i", ALICE, good)
    assert "Vendor:CDPSWTCH" in inq
    mutual = {"LIBISCSI_CHAP_TARGET_USERNAME": "target",
              "LIBISCSI_CHAP_TARGET_PASSWORD": TARGET_SECRET}  # fmt: skip
    assert "Vendor:CDPSWTCH" in run("iscsi-inq", "-i", ALICE, good, env=mutual)
    # the initiator checks the target's answer: a wrong expected secret makes it refuse
    fake = {**mutual, "LIBISCSI_CHAP_TARGET_PASSWORD": "not-the-target-secret"}
    refused = attempt("iscsi-inq", "-i", ALICE, good, env=fake)
    assert refused.returncode != 0 and "Invalid CHAP_R" in refused.stderr + refused.stdout


@pytest.mark.parametrize("credentials, initiator, status", [
    ("", ALICE, "Authentication failure"),
    (f"alice%{'x' * len(INITIATOR_SECRET)}@", ALICE, "Authentication failure"),
    (f"mallory%{INITIATOR_SECRET}@", ALICE, "Authentication failure"),
    (f"alice%{INITIATOR_SECRET}@", BOB, "Authorization failure"),
])  # fmt: skip
def test_refused_logins_leave_the_target_serving(chap_served: Served, credentials: str,
                                                 initiator: str, status: str) -> None:
    refused = attempt("iscsi-inq", "-i", initiator, lun_url(chap_served, credentials))
    assert refused.returncode != 0
    assert status in refused.stderr + refused.stdout
    # nothing else is affected: the right initiator with the right secret still gets in
    ok = run("iscsi-inq", "-i", ALICE, lun_url(chap_served, f"alice%{INITIATOR_SECRET}@"))
    assert "Vendor:CDPSWTCH" in ok
    log = (chap_served.directory / "server.log").read_text()
    for secret in CHAP_ENV.values():
        assert secret not in log


def test_secrets_come_from_the_environment_only(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="CDPSWITCH_CHAP_SECRET is not set"):
        start_served(tmp_path, 1 << 20, options=("--chap", "alice"),
                     env={"CDPSWITCH_CHAP_SECRET": ""})  # fmt: skip
    with pytest.raises(AssertionError, match="at least 12 bytes"):
        start_served(tmp_path, 1 << 20, options=("--chap", "alice"),
                     env={"CDPSWITCH_CHAP_SECRET": "short"})  # fmt: skip


@pytest.fixture
def big_served(tmp_path: Path) -> Iterator[Served]:
    for tool in ("qemu-img", "qemu-io"):
        require(tool)
    server = start_served(tmp_path, 256 << 20)
    try:
        yield server
    finally:
        server.stop()


def digest(path: Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        left = limit
        while left is None or left > 0:
            chunk = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


def test_qemu_img_convert_256_mib_random_image_round_trip(big_served: Served,
                                                         tmp_path: Path) -> None:
    source, back = tmp_path / "random.img", tmp_path / "back.img"
    with source.open("wb") as f:
        for _ in range(256):
            f.write(os.urandom(1 << 20))
    url = f"iscsi://127.0.0.1:{big_served.port}/{IQN}/0"
    run("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(source), url, timeout=300)
    run("qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(back), timeout=300)
    assert back.stat().st_size == source.stat().st_size
    assert digest(back) == digest(source)
    assert big_served.stop() == 0
    with Volume.open(str(big_served.directory / "vol")) as volume:
        assert volume.verify() == []  # the log holds every write, checksums intact


def test_two_initiators_at_once(big_served: Served) -> None:
    """Two qemu-io processes (two sessions) write and verify their own halves at the same
    time; each then reads the other's half, and the volume holds both after shutdown."""
    url = f"iscsi://127.0.0.1:{big_served.port}/{IQN}/0"
    half = 32 << 20

    def script(pattern: int, base: int) -> list[str]:
        cmds: list[str] = []
        for i in range(0, half, 1 << 20):
            cmds += ["-c", f"write -P {pattern} {base + i} 1M"]
        cmds += ["-c", f"read -P {pattern} {base} {half}"]
        return cmds

    procs = [
        subprocess.Popen(["qemu-io", "-f", "raw", *script(pattern, base), url],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for pattern, base in ((0x5A, 0), (0xA5, half))
    ]  # fmt: skip
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert "Pattern verification failed" not in out and out.count("wrote 1048576") == 32
    crossed = run("qemu-io", "-f", "raw", "-c", f"read -P 0xa5 {half} {half}",
                  "-c", f"read -P 0x5a 0 {half}", url)  # fmt: skip
    assert "Pattern verification failed" not in crossed
    assert big_served.stop() == 0
    with Volume.open(str(big_served.directory / "vol")) as volume:
        assert volume.read(0, half // BLOCK) == bytes([0x5A]) * half
        assert volume.read(half // BLOCK, half // BLOCK) == bytes([0xA5]) * half
