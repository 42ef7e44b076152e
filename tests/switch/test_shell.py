"""``cdpswitch shell`` against a real admin server whose methods are a stand-in daemon.

``StandInDaemon`` keeps its state in dicts and answers in the shapes of docs/admin-api.md (and
of switch/daemon.py where the spec leaves a shape open: a TPG's ``luns`` is an object keyed
by LUN number, an ACL says ``chap``). It stands in for the daemon only until the daemon's
end-to-end tests exist; then these tests should run the shell against the real daemon.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from switch.admin_client import AdminClient, socket_path
from switch.admin_protocol import AdminError, MethodFn, ProgressFn
from switch.admin_server import AdminServer, start_admin_server
from switch.shell import CdpShell, Session, bind, human_size, main, opt, req, split_words

ROOT = Path(__file__).resolve().parents[2]
SECRET = "chap-secret-1234"
UNITS = {"": 1, "K": 1 << 10, "KiB": 1 << 10, "M": 1 << 20, "MiB": 1 << 20, "G": 1 << 30,
         "GiB": 1 << 30, "T": 1 << 40, "TiB": 1 << 40}  # fmt: skip


def _need(params: dict[str, Any], key: str) -> Any:
    if params.get(key) is None:
        raise AdminError("invalid", f"missing parameter {key!r}")
    return params[key]


class StandInDaemon:
    """A method table over dicts; see the module docstring."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.volumes: dict[str, dict[str, Any]] = {}
        self.markers: dict[str, list[dict[str, Any]]] = {}
        self.images: dict[str, dict[str, Any]] = {}
        self.targets: dict[str, dict[int, dict[str, Any]]] = {}
        self.steps = 20  # progress steps of the long operations
        self.delay = 0.0
        self.started = threading.Event()
        self.cancelled = threading.Event()
        self.calls: list[tuple[str, dict[str, Any]]] = []

    # -- helpers -----------------------------------------------------------------------------

    def volume(self, params: dict[str, Any], key: str = "volume") -> dict[str, Any]:
        name = _need(params, key)
        if name not in self.volumes:
            raise AdminError("not_found", f"no volume named {name!r}")
        return self.volumes[name]

    def point(self, volume: str, point: str) -> int:
        for marker in self.markers[volume]:
            if marker["name"] == point:
                return int(marker["seq"])
        if point == "now":
            return int(self.volumes[volume]["seq"])
        if re.fullmatch(r"seq:\d+", point):
            return int(point[4:])
        raise AdminError("invalid", f"bad POINT {point!r}: no marker of that name")

    def tpg(self, params: dict[str, Any]) -> dict[str, Any]:
        iqn = _need(params, "iqn")
        if iqn not in self.targets:
            raise AdminError("not_found", f"no target {iqn}")
        tag = int(params.get("tpg") or 1)
        if tag not in self.targets[iqn]:
            raise AdminError("not_found", f"target {iqn} has no tpg{tag}")
        return self.targets[iqn][tag]

    def exported(self, **which: str) -> bool:
        return any(
            lun.get(key) == name
            for tpgs in self.targets.values()
            for tpg in tpgs.values()
            for lun in tpg["luns"].values()
            for key, name in which.items()
        )

    async def work(self, what: str, progress: ProgressFn) -> None:
        self.started.set()
        try:
            for i in range(self.steps):
                progress(what, i + 1, self.steps)
                await asyncio.sleep(self.delay)
        except asyncio.CancelledError:
            self.cancelled.set()  # nothing was changed yet: the undo is trivial
            raise

    # -- methods -----------------------------------------------------------------------------

    def methods(self) -> dict[str, MethodFn]:
        table: dict[str, MethodFn] = {}
        for attr in dir(self):
            if attr.startswith("m_"):
                fn = getattr(self, attr)
                name = attr[2:].replace("__", ".")
                table[name] = self._recorded(name, fn)
        return table

    def _recorded(self, name: str, fn: MethodFn) -> MethodFn:
        async def method(params: dict[str, Any], progress: ProgressFn) -> Any:
            self.calls.append((name, dict(params)))
            return await fn(params, progress)

        return method

    async def m_status(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        return {
            "version": "0.1.0-test", "data_dir": str(self.data_dir), "uptime_s": 3725.0,
            "volumes": {n: await self.m_volume__status({"volume": n}, progress)
                        for n in self.volumes},
            "images": list(self.images.values()), "targets": list(self.targets),
            "portals": ["127.0.0.1:3260"],
        }  # fmt: skip

    async def m_volumes__list(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        return [v | {"exported": self.exported(volume=v["name"])} for v in self.volumes.values()]

    async def m_volumes__create(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        name, size = _need(p, "name"), str(_need(p, "size"))
        if name in self.volumes:
            raise AdminError("conflict", f"volume {name!r} already exists")
        match = re.fullmatch(r"(\d+)\s*([A-Za-z]*)", size)
        if match is None or match.group(2) not in UNITS:
            raise AdminError("invalid", f"bad size {size!r}")
        self.volumes[name] = {
            "name": name, "size": int(match.group(1)) * UNITS[match.group(2)], "seq": 0,
            "primary": p.get("primary") or f"{self.data_dir}/{name}.img",
            "secondary": p.get("secondary") or f"{self.data_dir}/{name}.cdp",
            "policy": p.get("policy"),
        }  # fmt: skip
        self.markers[name] = []
        return await self.m_volume__status({"volume": name}, progress)

    async def m_volumes__delete(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        vol = self.volume(p, "name")
        if self.exported(volume=vol["name"]) and not p.get("force"):
            raise AdminError("refused", f"volume {vol['name']!r} is exported; use force=true")
        del self.volumes[vol["name"]]
        return {"deleted": vol["name"]}

    async def m_volume__status(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        vol = self.volume(p)
        return {
            "name": vol["name"], "size": vol["size"], "block_size": 4096, "seq": vol["seq"],
            "durable_seq": vol["seq"], "oldest_point": {"seq": 0},
            "newest_point": {"seq": vol["seq"]},
            "markers": len(self.markers[vol["name"]]), "maps": 2, "log_bytes": 8192,
            "secondary_used": 3 << 20, "secondary_free": 5 << 30, "reads": 1, "writes": 2,
            "read_bytes": 4096, "written_bytes": 8192, "sessions": [],
        }  # fmt: skip

    async def m_volume__mark(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        vol = self.volume(p)
        vol["seq"] += 10  # some writes happened since the last marker
        name = p.get("name") or f"m{len(self.markers[vol['name']]) + 1}"
        marker = {"name": name, "seq": vol["seq"], "time": "2024-05-01T10:00:00",
                  "pinned": bool(p.get("pinned"))}  # fmt: skip
        self.markers[vol["name"]].append(marker)
        return marker

    async def m_volume__markers(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        return self.markers[self.volume(p)["name"]]

    async def m_volume__maps(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        self.volume(p)
        return [{"from_seq": 1, "to_seq": 10, "time": "2024-05-01T10:00:00", "entries": 3,
                 "granular": True, "bytes": 12288}]  # fmt: skip

    async def m_volume__timeline(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        vol = self.volume(p)
        return {"baseline_seq": 0, "newest_seq": vol["seq"],
                "markers": self.markers[vol["name"]],
                "maps": await self.m_volume__maps(p, progress)}  # fmt: skip

    async def m_volume__rewind(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        vol = self.volume(p)
        seq = self.point(vol["name"], _need(p, "to"))
        await self.work(f"rewind {vol['name']}", progress)
        before = await self.m_volume__mark(
            {"volume": vol["name"], "name": "before-rewind"}, progress
        )
        vol["seq"] = seq
        return {"before_marker": before["name"], "seq": seq, "blocks_restored": 7}

    async def m_volume__clone(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        vol = self.volume(p)
        self.point(vol["name"], _need(p, "at"))
        await self.work(f"clone {vol['name']}", progress)
        return await self.m_volumes__create(
            {"name": _need(p, "name"), "size": str(vol["size"])}, progress
        )

    async def m_volume__playback(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        vol = self.volume(p)
        self.point(vol["name"], _need(p, "from"))
        self.point(vol["name"], _need(p, "to"))
        if not isinstance(p.get("lba"), int) or not isinstance(p.get("count"), int):
            raise AdminError("invalid", "lba and count must be integers")
        await self.work(f"playback {vol['name']}", progress)
        return {"blocks": p["count"]}

    async def m_volume__merge(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        vol = self.volume(p)
        return {"from_seq": self.point(vol["name"], _need(p, "from")),
                "to_seq": self.point(vol["name"], _need(p, "to")), "entries": 5}  # fmt: skip

    async def m_volume__fade(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        vol = self.volume(p)
        seq = self.point(vol["name"], _need(p, "before"))
        await self.work(f"fade {vol['name']}", progress)
        return {"freed_bytes": 3 << 20, "baseline_seq": seq}

    async def m_images__list(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        return list(self.images.values())

    async def m_images__create(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        vol = self.volume(p)
        seq = self.point(vol["name"], _need(p, "at"))
        name = p.get("name") or f"{vol['name']}@{seq}"
        self.images[name] = {"name": name, "volume": vol["name"], "at": p["at"], "seq": seq,
                             "writable": bool(p.get("writable"))}  # fmt: skip
        return self.images[name]

    async def m_images__delete(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        name = _need(p, "name")
        if self.images.pop(name, None) is None:
            raise AdminError("not_found", f"no image named {name!r}")
        return {"deleted": name}

    async def m_targets__list(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        return [
            {"iqn": iqn, "tpgs": [
                {"tag": tag, "portals": t["portals"], "luns": t["luns"],
                 "acls": [{"initiator": a["initiator"], "chap": "userid" in a} for a in t["acls"]],
                 "auth": "chap" if t["auth"] else "none"}
                for tag, t in tpgs.items()]}
            for iqn, tpgs in self.targets.items()
        ]  # fmt: skip

    async def m_targets__create(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        iqn = p.get("iqn") or f"iqn.2024-05.org.cdpswitch:t{len(self.targets)}"
        self.targets[iqn] = {1: {"portals": [], "luns": {}, "acls": [], "auth": {}}}
        return {"iqn": iqn}

    async def m_targets__delete(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        self.tpg(p)
        del self.targets[p["iqn"]]
        return {"deleted": p["iqn"]}

    async def m_tpg__portal_create(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        portal = f"{_need(p, 'ip')}:{p.get('port') or 3260}"
        self.tpg(p)["portals"].append(portal)
        return {"portal": portal}

    async def m_tpg__portal_delete(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        portal = f"{_need(p, 'ip')}:{p.get('port') or 3260}"
        portals = self.tpg(p)["portals"]
        if portal not in portals:
            raise AdminError("not_found", f"no portal {portal}")
        portals.remove(portal)
        return {"deleted": portal}

    async def m_tpg__lun_create(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        luns = self.tpg(p)["luns"]
        if (p.get("volume") is None) == (p.get("image") is None):
            raise AdminError("invalid", "give exactly one of volume= or image=")
        n = p["lun"] if p.get("lun") is not None else next(i for i in range(99) if i not in luns)
        luns[n] = {"volume": p["volume"]} if p.get("volume") else {"image": p["image"]}
        return {"lun": n}

    async def m_tpg__lun_delete(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        luns = self.tpg(p)["luns"]
        if luns.pop(_need(p, "lun"), None) is None:
            raise AdminError("not_found", f"no lun{p['lun']}")
        return {"deleted": p["lun"]}

    async def m_tpg__acl_create(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        acl = {k: v for k, v in p.items() if k not in ("iqn", "tpg")}
        self.tpg(p)["acls"].append(acl)
        return {"initiator": _need(p, "initiator")}

    async def m_tpg__acl_delete(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        tpg = self.tpg(p)
        tpg["acls"] = [a for a in tpg["acls"] if a["initiator"] != _need(p, "initiator")]
        return {"deleted": p["initiator"]}

    async def m_tpg__auth_set(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        auth = {k: v for k, v in p.items() if k not in ("iqn", "tpg") and v}
        self.tpg(p)["auth"] = auth
        return {"auth": "chap" if auth else "none"}

    async def m_policies__list(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        return []

    async def m_policies__show(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        if p.get("name") is not None:
            raise AdminError("not_found", f"no policy named {p['name']!r}")
        return []

    async def m_policies__reload(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        return {"reloaded": 0}

    async def m_config__save(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        return {"path": p.get("path") or str(self.data_dir / "saveconfig.yaml")}

    async def m_config__restore(self, p: dict[str, Any], progress: ProgressFn) -> Any:
        return {"path": p.get("path") or str(self.data_dir / "saveconfig.yaml")}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[StandInDaemon]:
    """The stand-in daemon served on tmp_path/admin.sock from a background event loop."""
    fake = StandInDaemon(tmp_path)
    loop = asyncio.new_event_loop()
    box: dict[str, AdminServer] = {}
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        box["server"] = loop.run_until_complete(
            start_admin_server(socket_path(tmp_path), fake.methods())
        )
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, name="stand-in-daemon")
    thread.start()
    assert ready.wait(10)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(box["server"].wait_closed(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def shell(data_dir: Path, *words: str) -> tuple[int, str, str]:
    """Run ``cdpswitch shell WORDS`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(words), data_dir, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def ok(data_dir: Path, *words: str) -> str:
    code, out, err = shell(data_dir, *words)
    assert (code, err) == (0, ""), (words, code, err)
    return out


def fails(data_dir: Path, *words: str) -> str:
    code, out, err = shell(data_dir, *words)
    assert code == 1 and out == "", (words, code, out)
    assert err.startswith("Error: ") and err.endswith("\n") and err.count("\n") == 1, err
    return err


@pytest.fixture
def vol0(daemon: StandInDaemon) -> Path:
    d = daemon.data_dir
    ok(d, "/volumes", "create", "name=vol0", "size=1GiB")
    ok(d, "/volumes/vol0", "mark", "name=a")
    ok(d, "/volumes/vol0", "mark", "name=b", "pinned=yes")
    return d


# --- commands ------------------------------------------------------------------------------


def test_volumes_create_ls_delete(daemon: StandInDaemon) -> None:
    d = daemon.data_dir
    assert (
        ok(d, "/volumes", "create", "name=vol0", "size=64MiB") == "Created volume vol0 (64 MiB)\n"
    )
    assert daemon.calls[-1] == ("volumes.create", {"name": "vol0", "size": "64MiB"})  # as typed
    ok(d, "/volumes", "create", "vol1", "1G", "policy=hourly")  # positional works too
    lines = ok(d, "/volumes", "ls").splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "SEQ", "PRIMARY", "SECONDARY", "POLICY", "EXPORTED"]
    assert lines[1].split()[:3] == ["vol0", "64", "MiB"]
    assert "hourly" in lines[2] and lines[2].split()[-1] == "no"
    assert ok(d, "ls", "/volumes") == ok(d, "/volumes", "ls")
    assert ok(d, "/volumes", "delete", "name=vol1", "force=false") == "Deleted volume vol1\n"
    assert daemon.calls[-1] == ("volumes.delete", {"name": "vol1", "force": False})
    assert "vol1" not in ok(d, "/volumes", "ls")


def test_volume_commands(vol0: Path, daemon: StandInDaemon) -> None:
    d = vol0
    assert ok(d, "/volumes/vol0", "mark") == "Marker m3 at seq 30 (2024-05-01T10:00:00)\n"
    markers = ok(d, "/volumes/vol0/markers", "ls").splitlines()
    assert markers[0].split() == ["NAME", "SEQ", "TIME", "PINNED"]
    assert [m.split()[0] for m in markers[1:]] == ["a", "b", "m3"]
    assert markers[2].split()[-1] == "yes"
    maps = ok(d, "/volumes/vol0/maps", "ls").splitlines()
    assert maps[0].split() == ["FROM_SEQ", "TO_SEQ", "TIME", "ENTRIES", "GRANULAR", "BYTES"]
    assert maps[1].split()[-2:] == ["12", "KiB"]

    timeline = ok(d, "/volumes/vol0", "timeline")
    assert timeline.startswith("baseline seq 0, newest seq 30\nmarkers:\nNAME")
    assert json.loads(ok(d, "/volumes/vol0", "timeline", "format=json"))["newest_seq"] == 30

    status = ok(d, "/volumes/vol0", "status")
    assert re.search(r"^secondary_free +5 GiB$", status, re.M)
    assert re.search(r"^oldest_point +seq=0$", status, re.M)

    code, out, err = shell(d, "/volumes/vol0", "rewind", "to=a")
    assert code == 0, err
    assert out == (
        "Rewound vol0 to a: now at seq 10, 7 block(s) restored; "
        "marker before-rewind holds the state before the rewind\n"
    )
    progress = err.splitlines()  # not a terminal: plain progress lines on stderr
    assert progress[0] == "rewind vol0: 1/20 (5%)" and progress[-1] == "rewind vol0: 20/20 (100%)"

    code, out, _ = shell(d, "/volumes/vol0", "playback", "from=a", "to=b", "lba=0", "count=8",
                         "dest=/tmp/x")  # fmt: skip
    assert (code, out) == (0, "Played back 8 block(s) of vol0 (a .. b) onto /tmp/x\n")
    assert daemon.calls[-1][1] == {
        "volume": "vol0", "from": "a", "to": "b", "lba": 0, "count": 8, "dest": "/tmp/x",
    }  # fmt: skip
    assert ok(d, "/volumes/vol0", "merge", "from=a", "to=b").splitlines()[1:] == [
        "from_seq  10", "to_seq    20", "entries   5",
    ]  # fmt: skip
    code, out, _ = shell(d, "/volumes/vol0", "fade", "before=seq:5")
    assert (code, out) == (0, "Faded out vol0 before seq:5: freed 3 MiB, baseline now at seq 5\n")
    code, out, _ = shell(d, "/volumes/vol0", "clone", "name=copy", "at=b")
    assert (code, out) == (0, "Created volume copy as vol0 at b\n")
    assert "copy" in ok(d, "/volumes", "ls")


def test_images_targets_and_tpgs(vol0: Path, daemon: StandInDaemon) -> None:
    d = vol0
    assert ok(d, "/images", "create", "volume=vol0", "at=a", "name=img") == (
        "Created image img of vol0 at a (seq 10, read-only)\n"
    )
    assert ok(d, "/images", "ls").splitlines()[1].split() == ["img", "vol0", "a", "10", "no"]
    assert ok(d, "/targets", "create", "iqn=iqn.2024-05.test:t1") == (
        "Created target iqn.2024-05.test:t1\n"
    )
    tpg = "/targets/iqn.2024-05.test:t1/tpg1"
    assert ok(d, f"{tpg}/portals", "create", "ip=127.0.0.1", "port=3261") == (
        "Created portal 127.0.0.1:3261\n"
    )
    assert daemon.calls[-1][1] == {"iqn": "iqn.2024-05.test:t1", "tpg": 1, "ip": "127.0.0.1",
                                   "port": 3261}  # fmt: skip
    assert ok(d, f"{tpg}/luns", "create", "volume=vol0") == "Created LUN 0\n"
    assert ok(d, f"{tpg}/luns", "create", "lun=5", "image=img") == "Created LUN 5\n"
    out = ok(d, f"{tpg}/acls", "create", "initiator=iqn.1994-05.com.redhat:h1", "userid=u",
             f"password={SECRET}")  # fmt: skip
    assert out == "Created ACL for iqn.1994-05.com.redhat:h1\n"
    assert ok(d, tpg, "set", "auth", "userid=tu", f"password={SECRET}") == (
        "Authentication of iqn.2024-05.test:t1 tpg1 is now chap\n"
    )
    assert daemon.calls[-1] == (
        "tpg.auth_set",
        {"iqn": "iqn.2024-05.test:t1", "tpg": 1, "userid": "tu", "password": SECRET},
    )
    tree = ok(d, "ls", "/targets")
    for shown in ("tpg1", "portals", "127.0.0.1:3261", "lun0", "volume vol0", "lun5",
                  "image img", "iqn.1994-05.com.redhat:h1", "[chap]", "auth chap"):  # fmt: skip
        assert shown in tree, (shown, tree)
    assert SECRET not in tree
    assert "exported" in ok(d, "ls", "/volumes/vol0")
    refused = fails(d, "/volumes", "delete", "name=vol0")
    assert refused == "Error: volume 'vol0' is exported; use force=true\n"
    assert ok(d, f"{tpg}/luns", "delete", "lun=5") == "Deleted LUN 5\n"
    assert ok(d, f"{tpg}/portals", "delete", "ip=127.0.0.1", "port=3261") == (
        "Deleted portal 127.0.0.1:3261\n"
    )
    assert ok(d, f"{tpg}/acls", "delete", "initiator=iqn.1994-05.com.redhat:h1") == (
        "Deleted ACL for iqn.1994-05.com.redhat:h1\n"
    )
    assert ok(d, "/images", "delete", "name=img") == "Deleted image img\n"
    assert ok(d, "/targets", "delete", "iqn=iqn.2024-05.test:t1") == (
        "Deleted target iqn.2024-05.test:t1\n"
    )
    assert "tpg1" not in ok(d, "ls", "/targets")


def test_root_and_policies(vol0: Path) -> None:
    d = vol0
    status = ok(d, "status").splitlines()
    assert status[0] == f"cdpswitch 0.1.0-test, data directory {d}, up 1h 02m 05s"
    assert status[1] == "volumes:"
    assert status[2].split()[:4] == ["NAME", "SIZE", "SEQ", "MARKERS"]
    assert status[3].split()[:5] == ["vol0", "1", "GiB", "20", "2"]
    assert "portals: 127.0.0.1:3260" in status
    assert "targets: none" in status
    assert ok(d, "/", "saveconfig") == f"Configuration saved to {d}/saveconfig.yaml\n"
    assert ok(d, "/", "restoreconfig", "path=/x.yaml") == "Configuration restored from /x.yaml\n"
    assert ok(d, "/policies", "ls") == "no policies\n"
    assert ok(d, "/policies", "show") == "no policies\n"
    assert ok(d, "/policies", "reload") == "reloaded  0\n"
    assert fails(d, "/policies", "show", "name=x") == "Error: no policy named 'x'\n"


def test_tree_and_help(vol0: Path) -> None:
    tree = ok(vol0, "ls")
    for node in ("volumes", "vol0", "1 GiB, seq 20, not exported", "markers", "2 marker(s)",
                 "maps", "images", "targets", "policies"):  # fmt: skip
        assert node in tree, node
    assert ok(vol0, "/volumes/vol0", "ls", "depth=1").count("\n") == 3
    help_text = ok(vol0, "/volumes/vol0", "help")
    assert "rewind to [force]" in help_text
    assert "playback from to lba count dest" in help_text
    rewind_help = ok(vol0, "/volumes/vol0", "help", "rewind")
    assert "Ctrl-C cancels it safely" in rewind_help


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["/volumes/nope", "status"], "No such path /volumes/nope"),
        (["/volumes", "frobnicate"], "no command 'frobnicate' in /volumes"),
        (["/volumes", "creat", "name=x"], "did you mean create?"),
        (["/volumes", "create", "name=x"], "missing size; usage: create name= size="),
        (["/volumes", "create", "name=x", "size=1G", "colour=red"], "unknown parameter 'colour'"),
        (["/volumes", "create", "name=x", "size=1G", "name=y"], "parameter 'name' given twice"),
        (["/volumes", "create", "a", "b", "c", "d", "e", "f"], "too many parameters"),
        (["/volumes", "delete", "name=vol0", "force=maybe"], "force must be true or false"),
        (["/volumes/vol0", "playback", "from=a", "to=b", "lba=x", "count=1", "dest=d"],
         "lba must be an integer, not 'x'"),
        (["/volumes/vol0", "rewind", "to=nowhere"], "bad POINT 'nowhere'"),
        (["/volumes", "create", "name=vol0", "size=1G"], "volume 'vol0' already exists"),
        (["/volumes/vol0", "timeline", "format=xml"], "format must be json or table"),
        (["frobnicate"], "no command 'frobnicate' in /"),
    ],
)  # fmt: skip
def test_errors_go_to_stderr_with_exit_1(vol0: Path, words: list[str], message: str) -> None:
    assert message in fails(vol0, *words)


def test_no_daemon(tmp_path: Path) -> None:
    err = fails(tmp_path, "/volumes", "ls")
    assert err == (
        f"Error: no cdpswitch daemon on {tmp_path}/admin.sock: "
        f"start it with `cdpswitch serve --data-dir {tmp_path}`\n"
    )
    code, out, err2 = shell(tmp_path)  # interactive needs a daemon too
    assert (code, out, err2) == (1, "", err)
    assert ok(tmp_path, "/", "pwd") == "/\n"  # commands that need no daemon still work


def test_secrets_are_not_printed(vol0: Path) -> None:
    ok(vol0, "/targets", "create", "iqn=iqn.2024-05.test:t2")
    tpg = "/targets/iqn.2024-05.test:t2/tpg1"
    out = ok(vol0, f"{tpg}/acls", "create", "initiator=iqn.x:h", "userid=u",
             f"password={SECRET}", f"mutual_password={SECRET}x", "mutual_userid=m")  # fmt: skip
    out += ok(vol0, tpg, "get", "auth")
    assert SECRET not in out
    assert "password=n/a" in out


# --- completion ----------------------------------------------------------------------------


def _shell_for(data_dir: Path) -> tuple[CdpShell, AdminClient]:
    client = AdminClient(socket_path(data_dir))
    return CdpShell(Session(client, io.StringIO(), io.StringIO())), client


def test_completion_methods(vol0: Path) -> None:
    ok(vol0, "/images", "create", "volume=vol0", "at=a", "name=img")
    sh, client = _shell_for(vol0)
    with client:
        vol = sh.root.get_node("/volumes/vol0")
        assert vol.get_completion_method("rewind")({}, "", "to") == ["a", "b", "now"]
        assert vol.get_completion_method("rewind")({}, "b", "to") == ["b "]
        assert vol.get_completion_method("rewind")({}, "", "force") == ["false", "true"]
        assert vol.get_completion_method("playback")({}, "", "from") == ["a", "b", "now"]
        images = sh.root.get_node("/images")
        assert images.get_completion_method("create")({}, "", "volume") == ["vol0 "]
        assert images.get_completion_method("create")({"volume": "vol0"}, "", "at") == [
            "a", "b", "now",
        ]  # fmt: skip
        assert images.get_completion_method("delete")({}, "i", "name") == ["img "]
        assert sh.root.get_node("/volumes").get_command_signature("create")[0] == [
            "name", "size", "primary", "secondary", "policy",
        ]  # fmt: skip


def _complete(sh: CdpShell, line: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What readline would offer for TAB at the end of ``line``."""
    import readline

    begin = len(line) - len(line.split(" ")[-1])
    monkeypatch.setattr(readline, "get_line_buffer", lambda: line)
    monkeypatch.setattr(readline, "get_begidx", lambda: begin)
    monkeypatch.setattr(readline, "get_endidx", lambda: len(line))
    found: list[str] = []
    while (candidate := sh._complete(line[begin:], len(found))) is not None:
        found.append(candidate)
    return found


def test_tab_completion_through_configshell(vol0: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sh, client = _shell_for(vol0)
    with client:
        assert _complete(sh, "/volumes/vol0 rewind to=", monkeypatch) == [
            "to=a", "to=b", "to=now",
        ]  # fmt: skip
        assert _complete(sh, "/volumes/vol0 rew", monkeypatch) == ["rewind "]
        assert _complete(sh, "/volumes/vol0 rewind ", monkeypatch) == [
            "a", "b", "now", "to=", "force=",
        ]  # fmt: skip
        assert _complete(sh, "/volumes delete name=v", monkeypatch) == ["name=vol0 "]
        assert _complete(sh, "/volumes/v", monkeypatch) == ["/volumes/vol0/"]
        ok(vol0, "/volumes", "create", "name=vol1", "size=1M")  # the tree follows the daemon
        assert sorted(_complete(sh, "/volumes/v", monkeypatch)) == [
            "/volumes/vol0/", "/volumes/vol1/",
        ]  # fmt: skip


def test_bind_and_helpers() -> None:
    spec = (req("from"), req("lba"), opt("force"))
    assert bind("x", spec, ["a"], {"lba": "3"}) == {"from": "a", "lba": "3"}
    with pytest.raises(AdminError, match="missing lba"):
        bind("x", spec, [], {"from": "a"})
    assert split_words(["/volumes", "ls"]) == ("/volumes", "ls", [])
    assert split_words(["status"]) == ("/", "status", [])
    assert split_words(["/volumes"]) == ("/volumes", "ls", [])
    assert split_words(["volumes/vol0", "mark", "name=a"]) == ("volumes/vol0", "mark", ["name=a"])
    assert [human_size(n) for n in (512, 1536, 64 << 20, 1 << 40)] == [
        "512 B", "1.5 KiB", "64 MiB", "1 TiB",
    ]  # fmt: skip


def test_progress_bar_on_a_terminal(vol0: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    with AdminClient(socket_path(vol0)) as client:
        sh = CdpShell(Session(client, out, err, fancy=True))
        assert sh.run_words(["/volumes/vol0", "fade", "before=a"])
    assert err.getvalue() == ""  # no plain progress lines: rich drew a bar on stdout
    assert "Faded out vol0 before a" in out.getvalue()


# --- as a program --------------------------------------------------------------------------


def cli(data_dir: Path, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switch.cli", "shell", "--data-dir", str(data_dir), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False, **kwargs,
    )  # fmt: skip


def test_one_shot_subprocess(vol0: Path) -> None:
    done = cli(vol0, "/volumes", "ls")
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.splitlines()[1].startswith("vol0")
    done = cli(vol0, "/volumes/vol0", "rewind", "to=nowhere")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == "Error: bad POINT 'nowhere': no marker of that name\n"
    done = cli(vol0, "/nope", "ls")
    assert (done.returncode, done.stderr) == (1, "Error: No such path /nope\n")


def test_data_dir_from_the_environment(vol0: Path) -> None:
    env = dict(os.environ, CDPSWITCH_DATA=str(vol0))
    done = subprocess.run(
        [sys.executable, "-m", "switch.cli", "shell", "/volumes", "ls"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert done.returncode == 0 and "vol0" in done.stdout, done.stderr


def test_interactive_subprocess(vol0: Path) -> None:
    done = cli(vol0, input="cd /volumes\nls\ncd vol0\nmark name=c\nbogus\nexit\n")
    assert done.returncode == 0, done.stderr
    assert "cdpswitch shell: daemon 0.1.0-test" in done.stdout
    assert "Marker c at seq 30" in done.stdout
    assert "/volumes/vol0> " in done.stdout  # the prompt shows where we are
    assert "Error: no command 'bogus' in /volumes/vol0" in done.stderr
    history = vol0 / "shell"
    assert stat.S_IMODE(history.stat().st_mode) == 0o700  # the history may hold secrets


def test_ctrl_c_cancels_a_long_operation(vol0: Path, daemon: StandInDaemon) -> None:
    daemon.steps, daemon.delay = 2000, 0.01  # 20 s unless cancelled
    proc = subprocess.Popen(
        [sys.executable, "-m", "switch.cli", "shell", "--data-dir", str(vol0), "/volumes/vol0",
         "rewind", "to=a"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.startswith("rewind vol0: 1/2000"), first
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert out == ""
    assert re.fullmatch(r"Error: request \d+ \(volume.rewind\) cancelled", err.splitlines()[-1])
    assert daemon.cancelled.is_set()
    assert daemon.volumes["vol0"]["seq"] == 20  # unchanged: no rewind happened
