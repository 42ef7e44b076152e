"""Retention policies in the running daemon, driven through the shell and qemu-io:
snapshot triggers make markers, a space budget refuses writes (an event, shown by status,
never silent), a broken policy file is refused by reload and changes nothing, pinned
markers can be pinned and unpinned."""

from __future__ import annotations

import json
from pathlib import Path

from switch_daemon import Daemon, config_text, free_port, qemu_io, require

POLICIES = """\
version: 1
policies:
  tight:
    description: a tiny budget, to see it work
    classes:
      - {name: recent, granularity: every write, for: 1h}
    older: fade
    snapshots: {every_writes: 2}
    budget: {max_bytes: 3MiB, on_full: refuse_writes}
"""


def _start(tmp_path: Path) -> Daemon:
    require("qemu-io")
    port = free_port()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "policies.yaml").write_text(POLICIES)
    config = tmp_path / "switch.yaml"
    config.write_text(config_text(port).replace("    size: 64MiB\n",
                                                "    size: 64MiB\n    policy: tight\n")
                      + "policies_file: policies.yaml\n")
    d = Daemon(tmp_path / "data", port, config)
    d.start()
    return d


def _status(d: Daemon) -> dict:  # type: ignore[type-arg]
    return json.loads(d.shell("/volumes/vol0", "status", "format=json").stdout)  # type: ignore[no-any-return]


def test_policy_markers_budget_and_reload(tmp_path: Path) -> None:
    d = _start(tmp_path)
    try:
        url = d.url()
        assert "tight" in d.shell("/policies", "ls").stdout
        qemu_io(url, "write -P 0x01 0 1M", "write -P 0x02 1M 1M")
        d.shell("/policies", "run")
        markers = d.shell("/volumes/vol0/markers", "ls").stdout
        assert "auto-" in markers  # the snapshot trigger (every 2 writes) fired
        assert _status(d)["policy"]["writes_refused"] is None
        # Past the budget (3 MiB of history), writes are refused: an event, not silence.
        qemu_io(url, "write -P 0x03 2M 1M", "write -P 0x04 3M 1M")
        d.shell("/policies", "run")
        status = _status(d)
        assert status["policy"]["writes_refused"], status["policy"]
        events = status["policy"]["events"]
        assert any(e["action"] == "RefuseWrites" and e["cause"] == "budget" for e in events)
        out = qemu_io(url, "write -P 0x05 4M 64k", ok=False)
        assert "failed" in out.lower() or "error" in out.lower(), out
        qemu_io(url, "read -P 0x04 3M 1M")  # reads still work, and nothing was lost
        assert "RefuseWrites" in d.log()
        # A broken file is refused by reload with FILE:LINE, and the policies stay.
        before = d.shell("/policies", "show").stdout
        (d.data / "policies.yaml").write_text(POLICIES.replace("for: 1h", "for: -1h"))
        bad = d.shell("/policies", "reload", ok=False)
        assert bad.returncode == 1 and "policies.yaml:6" in bad.stderr, bad.stderr
        assert d.shell("/policies", "show").stdout == before
        # A valid change applies live: a bigger budget lets writes in again.
        (d.data / "policies.yaml").write_text(POLICIES.replace("3MiB", "1GiB"))
        d.shell("/policies", "reload")
        d.shell("/policies", "run")
        assert _status(d)["policy"]["writes_refused"] is None
        qemu_io(url, "write -P 0x05 4M 64k")
        # Pinning a marker and unpinning it.
        name = json.loads(d.shell("/volumes/vol0", "timeline", "format=json").stdout
                          )["markers"][0]["name"]
        d.shell("/volumes/vol0/markers", "pin", f"name={name}")
        markers = json.loads(d.shell("/volumes/vol0", "timeline", "format=json").stdout
                             )["markers"]
        assert [m["pinned"] for m in markers if m["name"] == name] == [True]
        d.shell("/volumes/vol0/markers", "unpin", f"name={name}")
        assert d.shell("/volumes/vol0/markers", "pin", "name=nope", ok=False).returncode == 1
    finally:
        assert d.stop() == 0


def test_unknown_policy_name_is_refused(tmp_path: Path) -> None:
    d = _start(tmp_path)
    try:
        bad = d.shell("/volumes", "create", "name=v2", "size=8M", "policy=nosuch", ok=False)
        assert bad.returncode == 1 and "nosuch" in bad.stderr
        assert "v2" not in d.shell("/volumes", "ls").stdout
    finally:
        assert d.stop() == 0
