"""End to end: the real daemon as a subprocess, driven only through ``cdpswitch shell`` and
real iSCSI clients (qemu-io, iscsi-ls), as issue 11 asks.

One daemon per test; volumes are small (64 MiB) so the suite stays quick."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from switch_daemon import IQN, ROOT, Daemon, config_text, free_port, qemu_io, require

MiB = 1 << 20


@pytest.fixture
def daemon(tmp_path: Path):  # type: ignore[no-untyped-def]
    require("qemu-io")
    port = free_port()
    config = tmp_path / "switch.yaml"
    config.write_text(config_text(port))
    d = Daemon(tmp_path / "data", port, config)
    d.start()
    yield d
    if d.proc is not None and d.proc.poll() is None:
        assert d.stop() == 0, d.log()


def test_first_start_prints_how_to_connect(daemon: Daemon) -> None:
    text = "".join(daemon.output)
    assert f"iscsi://127.0.0.1:{daemon.port}/{IQN}/0" in text
    assert "iscsiadm -m discovery" in text
    out = subprocess.run([require("iscsi-ls"), "-s", f"iscsi://127.0.0.1:{daemon.port}"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    assert IQN in out
    assert (daemon.data / "admin.sock").stat().st_mode & 0o777 == 0o600
    assert (daemon.data / "switch.yaml").stat().st_mode & 0o777 == 0o600


def test_mark_overwrite_rewind_and_undo(daemon: Daemon) -> None:
    url = daemon.url()
    qemu_io(url, "write -P 0xaa 0 4M")
    daemon.shell("/volumes/vol0", "mark", "name=a")
    qemu_io(url, "write -P 0xbb 1M 1M")
    assert "Pattern verification failed" in qemu_io(url, "read -P 0xaa 0 4M", ok=False)
    out = daemon.shell("/volumes/vol0", "rewind", "to=a").stdout
    assert "before-rewind-1" in out  # printed, so the operator can undo
    qemu_io(url, "read -P 0xaa 0 4M")
    # Undo the rewind with its marker: pattern B is back.
    daemon.shell("/volumes/vol0", "rewind", "to=before-rewind-1")
    qemu_io(url, "read -P 0xaa 0 1M", "read -P 0xbb 1M 1M", "read -P 0xaa 2M 2M")
    markers = daemon.shell("/volumes/vol0/markers", "ls").stdout
    for name in ("a", "before-rewind-1", "after-rewind-1", "before-rewind-2"):
        assert name in markers


def test_clone_is_a_new_exportable_volume(daemon: Daemon) -> None:
    url = daemon.url()
    qemu_io(url, "write -P 0x11 0 2M")
    daemon.shell("/volumes/vol0", "mark", "name=a")
    qemu_io(url, "write -P 0x22 0 2M")
    daemon.shell("/volumes/vol0", "clone", "name=c1", "at=a")
    daemon.shell(f"/targets/{IQN}/tpg1/luns", "create", "lun=1", "volume=c1")
    qemu_io(daemon.url(1), "read -P 0x11 0 2M")
    qemu_io(url, "read -P 0x22 0 2M")  # the source is untouched
    # The clone is protected too: it can be written and marked like any volume.
    qemu_io(daemon.url(1), "write -P 0x33 0 512")
    daemon.shell("/volumes/c1", "mark", "name=c1-first")
    assert "c1" in daemon.shell("/volumes", "ls").stdout


def test_image_lun_read_while_the_host_keeps_writing(daemon: Daemon) -> None:
    url = daemon.url()
    qemu_io(url, "write -P 0x5a 0 8M")
    daemon.shell("/volumes/vol0", "mark", "name=a")
    stop = threading.Event()
    writes = []

    def host() -> None:  # keeps overwriting the live volume with another pattern
        n = 0
        while not stop.is_set():
            qemu_io(url, f"write -P 0x{0x60 + n % 16:02x} 0 8M")
            n += 1
            writes.append(n)

    writer = threading.Thread(target=host)
    writer.start()
    try:
        time.sleep(0.5)
        daemon.shell("/images", "create", "volume=vol0", "at=a", "name=img-a")
        daemon.shell(f"/targets/{IQN}/tpg1/luns", "create", "lun=2", "image=img-a")
        for _ in range(3):
            qemu_io(daemon.url(2), "read -P 0x5a 0 8M", read_only=True)
    finally:
        stop.set()
        writer.join(timeout=60)
    assert writes, "the host wrote while the image was read"
    # The image is read-only by default: the LUN says so (WP in MODE SENSE), and the
    # initiator refuses to open it for writing.
    out = qemu_io(daemon.url(2), "write -P 0x00 0 4k", ok=False)
    assert "write protected" in out
    qemu_io(daemon.url(2), "read -P 0x5a 0 8M", read_only=True)


def test_writable_image_keeps_its_writes_apart(daemon: Daemon) -> None:
    url = daemon.url()
    qemu_io(url, "write -P 0x41 0 1M")
    daemon.shell("/volumes/vol0", "mark", "name=a")
    daemon.shell("/images", "create", "volume=vol0", "at=a", "name=scratch", "writable=true")
    daemon.shell(f"/targets/{IQN}/tpg1/luns", "create", "lun=3", "image=scratch")
    qemu_io(daemon.url(3), "write -P 0x42 512 512")
    qemu_io(daemon.url(3), "read -P 0x41 0 512", "read -P 0x42 512 512",
            "read -P 0x41 1024 1047552")
    qemu_io(url, "read -P 0x41 0 1M")  # the volume never saw the image's write
    seq_before = json.loads(daemon.shell("/volumes/vol0", "timeline", "format=json").stdout)
    qemu_io(daemon.url(3), "write -P 0x43 0 4k")
    seq_after = json.loads(daemon.shell("/volumes/vol0", "timeline", "format=json").stdout)
    assert seq_after["newest_seq"] == seq_before["newest_seq"]


def test_restart_keeps_everything(daemon: Daemon) -> None:
    url = daemon.url()
    qemu_io(url, "write -P 0x77 0 1M")
    daemon.shell("/volumes/vol0", "mark", "name=keep")
    qemu_io(url, "write -P 0x78 0 1M")
    daemon.shell("/images", "create", "volume=vol0", "at=keep", "name=img-keep")
    daemon.shell(f"/targets/{IQN}/tpg1/luns", "create", "lun=4", "image=img-keep")
    assert daemon.stop() == 0
    daemon.config = None  # the second start runs the saved running configuration
    daemon.start()
    qemu_io(url, "read -P 0x78 0 1M")
    qemu_io(daemon.url(4), "read -P 0x77 0 1M", read_only=True)
    assert "keep" in daemon.shell("/volumes/vol0/markers", "ls").stdout
    daemon.shell("/volumes/vol0", "rewind", "to=keep")
    qemu_io(url, "read -P 0x77 0 1M")


def test_second_daemon_on_the_same_data_directory_is_refused(daemon: Daemon) -> None:
    other = Daemon(daemon.data, free_port())
    other.start(expect_ready=False)
    assert other.proc is not None
    message, _ = other.proc.communicate(timeout=60)
    assert other.proc.returncode == 1
    assert "in use by another cdpswitch daemon" in message
    qemu_io(daemon.url(), "read 0 512")  # the first one still serves


def test_bad_commands_change_nothing(daemon: Daemon) -> None:
    saved = (daemon.data / "switch.yaml").read_text()
    cases = [
        (("/volumes/vol0", "rewind", "to=no-such-marker"), "no-such-marker"),
        (("/volumes/vol9", "status"), "vol9"),
        (("/volumes", "create", "name=bad", "size=-5"), "size"),
        (("/volumes", "create", "name=vol0", "size=1M"), "exists"),
        (("/images", "create", "volume=vol0", "at=seq:999999"), "999999"),
        ((f"/targets/{IQN}/tpg1/luns", "create", "lun=0", "volume=vol0"), "lun0"),
        ((f"/targets/{IQN}/tpg1/luns", "create", "volume=nothere"), "nothere"),
        ((f"/targets/{IQN}/tpg1/acls", "create", "initiator=not an iqn"), "initiator"),
        (("/volumes/vol0", "frobnicate"), "frobnicate"),
    ]
    for words, hint in cases:
        result = daemon.shell(*words, ok=False)
        assert result.returncode == 1, words
        assert hint in result.stderr, (words, result.stderr)
    assert (daemon.data / "switch.yaml").read_text() == saved
    qemu_io(daemon.url(), "read 0 512")


def test_bad_yaml_gives_a_clear_error_and_changes_nothing(daemon: Daemon,
                                                          tmp_path: Path) -> None:
    saved = (daemon.data / "switch.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text("volumes:\n  vol0:\n    size: 64MiB\n    colour: blue\n")
    result = daemon.shell("/", "restoreconfig", f"path={bad}", ok=False)
    assert result.returncode == 1
    assert f"{bad}:4" in result.stderr and "colour" in result.stderr
    assert (daemon.data / "switch.yaml").read_text() == saved
    # The same file refused at start, with file:line, exit status 2.
    other = Daemon(tmp_path / "other-data", free_port(), bad)
    other.start(expect_ready=False)
    assert other.proc is not None
    message, _ = other.proc.communicate(timeout=60)
    assert other.proc.returncode == 2
    assert f"{bad}:4" in message


def test_saveconfig_restoreconfig_round_trip(daemon: Daemon, tmp_path: Path) -> None:
    daemon.shell("/volumes", "create", "name=v2", "size=8M")
    daemon.shell("/", "saveconfig", f"path={tmp_path / 'saved.yaml'}")
    daemon.shell("/volumes", "delete", "name=v2")
    assert "v2" not in daemon.shell("/volumes", "ls").stdout
    daemon.shell("/", "restoreconfig", f"path={tmp_path / 'saved.yaml'}")
    assert "v2" in daemon.shell("/volumes", "ls").stdout
    assert (tmp_path / "saved.yaml").stat().st_mode & 0o777 == 0o600


def test_rewind_with_a_logged_in_host_needs_force(daemon: Daemon) -> None:
    url = daemon.url()
    qemu_io(url, "write -P 0x01 0 1M")
    daemon.shell("/volumes/vol0", "mark", "name=a")
    qemu_io(url, "write -P 0x02 0 1M")
    # A host that stays logged in (qemu-io sleeping between two reads).
    host = subprocess.Popen([require("qemu-io"), "-f", "raw", "-c", "read 0 512",
                             "-c", "sleep 8000", url],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = json.loads(daemon.shell("/volumes/vol0", "status", "format=json").stdout)
            if status["sessions"]:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the host never showed up in status")
        refused = daemon.shell("/volumes/vol0", "rewind", "to=a", ok=False)
        assert refused.returncode == 1 and "force=true" in refused.stderr
        qemu_io(url, "read -P 0x02 0 1M")  # nothing changed
        out = daemon.shell("/volumes/vol0", "rewind", "to=a", "force=true").stdout
        assert "before-rewind-1" in out
        status = json.loads(daemon.shell("/volumes/vol0", "status", "format=json").stdout)
        assert status["offline"] is None
    finally:
        host.kill()
        host.communicate(timeout=30)
    qemu_io(url, "read -P 0x01 0 1M")


def test_metrics_endpoint(tmp_path: Path) -> None:
    require("qemu-io")
    port, metrics_port = free_port(), free_port()
    config = tmp_path / "switch.yaml"
    config.write_text(config_text(port, metrics_port=metrics_port))
    d = Daemon(tmp_path / "data", port, config)
    d.start()
    try:
        qemu_io(d.url(), "write -P 0x01 0 64k", "read 0 64k")
        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                      timeout=30).read().decode()
        lines = {line.split(" ")[0]: float(line.split(" ")[1])
                 for line in body.splitlines() if line and not line.startswith("#")}
        assert lines['cdpswitch_volume_writes_total{volume="vol0"}'] >= 1
        assert lines['cdpswitch_volume_written_bytes_total{volume="vol0"}'] >= 65536
        assert lines['cdpswitch_volume_read_bytes_total{volume="vol0"}'] >= 65536
        assert 'cdpswitch_volume_oldest_seq{volume="vol0"}' in lines
        assert lines['cdpswitch_volume_secondary_free{volume="vol0"}'] > 0
        assert lines['cdpswitch_volume_buffer_full_waits_total{volume="vol0"}'] == 0
        assert lines['cdpswitch_volume_buffer_full_seconds_total{volume="vol0"}'] == 0
    finally:
        assert d.stop() == 0


def test_sigterm_closes_cleanly_and_logs_json(daemon: Daemon) -> None:
    qemu_io(daemon.url(), "write -P 0x09 0 1M")
    assert daemon.stop() == 0
    events = [json.loads(line)["event"] for line in daemon.log().splitlines()
              if line.startswith("{")]
    assert "switch started" in events and "switch stopped" in events
    assert not (daemon.data / "admin.sock").exists()
    # Clean close: the next open needs no recovery.
    daemon.config = None
    daemon.start()
    qemu_io(daemon.url(), "read -P 0x09 0 1M")
    assert "volume recovery" not in daemon.log()


def test_ctrl_c_cancels_a_rewind_and_leaves_the_volume_as_it_was(tmp_path: Path) -> None:
    require("qemu-img")
    port = free_port()
    config = tmp_path / "switch.yaml"
    config.write_text(config_text(port, size="512MiB"))
    d = Daemon(tmp_path / "data", port, config)
    d.start()
    try:
        url = d.url()
        bench = [require("qemu-img"), "bench", "-f", "raw", "-t", "none", "-w", "-c", "512",
                 "-d", "8", "-s", "1M"]
        subprocess.run([*bench, "--pattern", "0x0a", url], check=True, capture_output=True,
                       timeout=120)
        d.shell("/volumes/vol0", "mark", "name=a")
        subprocess.run([*bench, "--pattern", "0x0b", url], check=True, capture_output=True,
                       timeout=120)
        shell = subprocess.Popen(
            [sys.executable, "-m", "switch.cli", "shell", "--data-dir", str(d.data),
             "/volumes/vol0", "rewind", "to=a"], cwd=ROOT, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        assert shell.stderr is not None
        line = shell.stderr.readline()  # the first progress line: the rewind is under way
        assert "rewind" in line, line
        shell.send_signal(signal.SIGINT)
        out, err = shell.communicate(timeout=120)
        assert shell.returncode == 1, (out, err)
        assert "cancel" in err.lower(), err
        # Nothing of the rewind is left: the volume reads pattern B everywhere.
        qemu_io(url, "read -P 0x0b 0 512M")
        status = json.loads(d.shell("/volumes/vol0", "status", "format=json").stdout)
        assert status["busy"] is None
    finally:
        assert d.stop() == 0


def test_secrets_never_reach_the_log_or_answers(daemon: Daemon) -> None:
    secret = "Sup3r-secret-chap-pw"
    out = daemon.shell(f"/targets/{IQN}/tpg1", "set", "auth", "userid=host",
                       f"password={secret}")
    assert secret not in out.stdout + out.stderr
    listing = daemon.shell("/targets", "ls").stdout
    bad = daemon.shell(f"/targets/{IQN}/tpg1", "set", "auth", "userid=host",
                       "password=short", ok=False)
    assert bad.returncode == 1 and "short" not in bad.stderr
    assert secret not in listing
    assert secret not in daemon.log()
    # The running configuration keeps it (mode 0600), so a restart still asks for it.
    assert secret in (daemon.data / "switch.yaml").read_text()
    out = subprocess.run([require("iscsi-ls"), "-s", f"iscsi://127.0.0.1:{daemon.port}"],
                         capture_output=True, text=True, timeout=30, check=False)
    assert IQN in out.stdout  # discovery has no CHAP here: the target is still listed
    login = subprocess.run([require("iscsi-inq"), daemon.url()], capture_output=True,
                           text=True, timeout=30, check=False)
    assert login.returncode != 0  # no CHAP from this initiator: refused
    ok = subprocess.run([require("iscsi-inq"), f"iscsi://host%{secret}@127.0.0.1:"
                         f"{daemon.port}/{IQN}/0"], capture_output=True, text=True,
                        timeout=30, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
