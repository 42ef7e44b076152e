"""The switch daemon: ``cdpswitch serve``. The composition root of cdpswitch.

Theory of operation:

- One asyncio loop (uvloop when installed) runs the iSCSI portals, the admin API and the
  metrics endpoint. Block I/O runs inline on the loop (target/iscsi/server.py explains
  why); engine jobs that take long (marks wait for a sync, rewind, clone, fade-out,
  playback, merge) run in worker threads and report progress to the admin request.
- The state of the switch is its configuration (``switch.config.SwitchConfig``): volumes,
  images, targets. An admin change is made on a copy of the configuration, validated as a
  whole (the same checks as a file gets), *applied* (``_apply``: volumes opened, images
  made, targets and portals brought in line), and only then saved as the running
  configuration (``switch.yaml`` in the data directory, mode 0600). A change that fails
  validation or application changes nothing, and the daemon restarts into exactly what it
  ran. ``config.save``/``config.restore`` are targetcli's saveconfig/restoreconfig.
- Each exported volume or image has one ``LogicalUnit``, shared by every target and LUN
  that maps it (reservations and unit attentions are per LU). Each portal (host:port) has
  one ``IscsiServer`` carrying the targets whose TPGs list it; LUN maps are dicts changed
  in place, so sessions see LUNs come and go without logging in again.
- Rewinding a volume hosts are logged in to is refused without ``force``; with it, the LU
  goes offline (NOT READY), the sessions on targets exporting it are dropped, the rewind
  runs, and the LU comes back with MEDIUM MAY HAVE CHANGED for every host. Every rewind
  first sets ``before-rewind-N``; a rewind to it undoes the rewind.
- Shutdown (SIGTERM/SIGINT): stop accepting (admin and iSCSI), let in-flight commands and
  flushes finish (grace period), close images, then volumes (which flushes them), then
  release the data-directory lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import structlog
import yaml

from policies.schema import PolicyError, format_duration
from switch.admin_protocol import AdminError
from switch.admin_server import AdminServer, start_admin_server
from switch.config import (
    ConfigError,
    SwitchConfig,
    dump_config,
    load_config,
    parse_config,
    parse_size,
    save_config,
)
from switch.datadir import DataDir
from switch.metrics import Metric, MetricsServer, start_metrics_server
from switch.policy_runner import NO_POLICY, PolicyRunner
from target.iscsi.chap import ChapConfig, ChapCredentials
from target.iscsi.server import IscsiServer, Target, start_server
from target.scsi.lu import LogicalUnit
from volume_manager import BlockDevice, Volume
from volume_manager import jobs as engine_jobs
from volume_manager.blockdev import FileBlockDevice
from volume_manager.errors import EngineError
from volume_manager.history import PointInTimeView
from volume_manager.overlay import ScratchOverlay

__all__ = ["DEFAULT_IQN_PREFIX", "Switch", "default_config"]

log = structlog.get_logger("cdpswitch")

DEFAULT_IQN_PREFIX = "iqn.2026-11.org.cdpswitch"
DEFAULT_VOLUME_SIZE = 1 << 30
SHUTDOWN_GRACE = 10.0
ProgressFn = Callable[[str, int, int], None]


def default_config(port: int = 3260) -> SwitchConfig:
    """What a first start with no configuration serves: ``vol0``, 1 GiB, thin, on LUN 0
    of one target on 127.0.0.1."""
    return parse_config(yaml.safe_dump({
        "volumes": {"vol0": {"size": DEFAULT_VOLUME_SIZE}},
        "targets": [{"iqn": f"{DEFAULT_IQN_PREFIX}:vol0", "tpgs": [
            {"tag": 1, "portals": [f"127.0.0.1:{port}"], "luns": {0: {"volume": "vol0"}}}]}],
    }), "(default configuration)")


def _invalid(exc: ConfigError) -> AdminError:
    lines = [f"{i.path}: {i.message}" if i.path else i.message for i in exc.issues]
    return AdminError("invalid", "; ".join(lines))


def _chap(userid: str | None, password: Any, mutual_userid: str | None = None,
          mutual_password: Any = None) -> ChapConfig | None:
    if userid is None or password is None:
        return None
    mutual = None
    if mutual_userid is not None and mutual_password is not None:
        mutual = ChapCredentials(mutual_userid, mutual_password.get_secret_value().encode())
    return ChapConfig(ChapCredentials(userid, password.get_secret_value().encode()), mutual)


@dataclass
class LiveVolume:
    name: str
    volume: Volume
    lu: LogicalUnit
    busy: str | None = None  # the job running on it, if any
    opened_ns: int = field(default_factory=time.time_ns)


@dataclass
class LiveImage:
    name: str
    volume: str
    at: str
    seq: int
    writable: bool
    view: PointInTimeView
    device: BlockDevice
    lu: LogicalUnit


class Switch:
    """The running switch: volumes, images, targets, portals (module docstring)."""

    def __init__(self, data: DataDir, *, grace: float = SHUTDOWN_GRACE) -> None:
        self.data = data
        self.grace = grace
        self.config = SwitchConfig()
        self.volumes: dict[str, LiveVolume] = {}
        self.images: dict[str, LiveImage] = {}
        self.portals: dict[tuple[str, int], IscsiServer] = {}
        self._lun_maps: dict[tuple[str, int], dict[int, LogicalUnit]] = {}
        self._changes = asyncio.Lock()  # one configuration change at a time
        self.admin: AdminServer | None = None
        self.metrics: MetricsServer | None = None
        self.started = time.monotonic()
        self.policy = PolicyRunner(self._policy_volumes)

    def _policy_volumes(self) -> dict[str, tuple[Volume, str | None, bool]]:
        return {name: (live.volume, self.config.volumes[name].policy, live.busy is not None)
                for name, live in self.volumes.items() if name in self.config.volumes}

    def _policies_path(self, cfg: SwitchConfig) -> Path | None:
        return None if cfg.policies_file is None else self.data.resolve(cfg.policies_file)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self, cfg: SwitchConfig) -> None:
        try:
            self.policy.load(self._policies_path(cfg))
        except PolicyError as exc:
            raise AdminError("invalid", f"policies_file: {exc}") from exc
        await self._apply(cfg)
        self.config = cfg
        save_config(cfg, self.data.running_config)
        self.admin = await start_admin_server(str(self.data.admin_socket), self.methods())
        if cfg.metrics is not None:
            host, _, port = cfg.metrics.listen.rpartition(":")
            self.metrics = await start_metrics_server(host.strip("[]"), int(port),
                                                      self.metric_samples)
        self.policy.start()
        log.info("switch started", data_dir=str(self.data.root),
                 volumes=sorted(self.volumes), images=sorted(self.images),
                 portals=[f"{h}:{p}" for h, p in self.portals])

    async def stop(self) -> None:
        log.info("switch stopping")
        await self.policy.stop()
        if self.admin is not None:
            self.admin.close()
        servers = list(self.portals.values())
        for server in servers:
            server.close()
        for server in servers:
            await server.wait_closed()
        self.portals.clear()
        if self.metrics is not None:
            await self.metrics.close()
        if self.admin is not None:
            await self.admin.wait_closed()
        for name in list(self.images):
            self._close_image(name)
        for name in list(self.volumes):
            await asyncio.to_thread(self._close_volume, name)
        log.info("switch stopped")

    # --- applying a configuration ---------------------------------------------------------

    async def _apply(self, cfg: SwitchConfig, progress: ProgressFn | None = None) -> None:
        """Bring the live state in line with ``cfg``. On failure, what this call opened
        is closed again and what it closed is not touched (it closes last). ``progress``
        hears about long steps (the baseline copy of a new volume's existing data)."""
        opened_vols: list[str] = []
        opened_imgs: list[str] = []
        for name, vcfg in cfg.volumes.items():
            if vcfg.policy not in (None, NO_POLICY) and vcfg.policy not in self.policy.policies:
                known = ", ".join(sorted(self.policy.policies))
                raise AdminError("invalid", f"volumes.{name}.policy: no policy named"
                                 f" {vcfg.policy!r} is loaded (policies: {known}; 'none'"
                                 " runs none)")
        try:
            for name, vcfg in cfg.volumes.items():
                if name in self.volumes:
                    self._check_unchanged(name, vcfg)
                    continue
                live = await asyncio.to_thread(self._open_volume, name, vcfg, progress)
                self.volumes[name] = live
                opened_vols.append(name)
            for name, icfg in cfg.images.items():
                old = self.images.get(name)
                if old is not None and (old.volume, old.at, old.writable) == (
                        icfg.volume, icfg.at, icfg.writable):
                    continue
                if old is not None:
                    raise AdminError("conflict", f"image {name!r} exists with other settings:"
                                     " delete it first")
                self.images[name] = await asyncio.to_thread(
                    self._open_image, name, icfg.volume, icfg.at, icfg.writable)
                opened_imgs.append(name)
            await self._apply_targets(cfg)
        except BaseException:
            for name in opened_imgs:
                self._close_image(name)
            for name in opened_vols:
                await asyncio.to_thread(self._close_volume, name)
            raise
        # Only now let go of what the new configuration no longer has.
        for name in [n for n in self.images if n not in cfg.images]:
            self._close_image(name)
        for name in [n for n in self.volumes if n not in cfg.volumes]:
            await asyncio.to_thread(self._close_volume, name)

    def _check_unchanged(self, name: str, vcfg: Any) -> None:
        vol = self.volumes[name].volume
        size = vol.num_blocks * vol.block_size
        if vcfg.size != size or vcfg.block_size != vol.block_size:
            raise AdminError("conflict", f"volume {name!r} is {size} bytes in"
                             f" {vol.block_size}-byte blocks; a configuration cannot resize"
                             " a protected volume")

    def _paths(self, name: str, vcfg: Any) -> tuple[Path, Path]:
        home = self.data.volume_home(name)
        primary = self.data.resolve(vcfg.primary) if vcfg.primary else home / "primary.img"
        secondary = (self.data.resolve(vcfg.secondary) if vcfg.secondary else home / "cdp")
        return primary, secondary

    def _open_volume(self, name: str, vcfg: Any, progress: ProgressFn | None = None
                     ) -> LiveVolume:
        primary, secondary = self._paths(name, vcfg)
        try:
            if (secondary / "catalog.db").exists():
                vol = Volume.open(str(secondary))
                for line in vol.recovery_report:
                    log.warning("volume recovery", volume=name, report=line)
                event = "volume opened"
            else:
                primary.parent.mkdir(parents=True, exist_ok=True)
                size = None if primary.exists() else vcfg.size
                vol = Volume.create(
                    str(secondary), str(primary), size=size, block_size=vcfg.block_size,
                    progress=None if progress is None else
                    (lambda done, total: progress(f"baseline of {name}", done, total)))
                event = "volume created"
        except EngineError as exc:
            raise AdminError("engine", f"volume {name!r}: {exc}") from exc
        size = vol.num_blocks * vol.block_size
        if size != vcfg.size or vol.block_size != vcfg.block_size:
            vol.close()
            raise AdminError("conflict", f"volume {name!r} at {secondary} is {size} bytes in"
                             f" {vol.block_size}-byte blocks, not {vcfg.size} in"
                             f" {vcfg.block_size}")
        lu = LogicalUnit(cast(BlockDevice, vol), uuid=uuid.UUID(bytes=vol.uuid))
        log.info(event, volume=name, primary=str(primary), secondary=str(secondary),
                 size=size, seq=vol.seq)
        return LiveVolume(name, vol, lu)

    def _close_volume(self, name: str) -> None:
        live = self.volumes.pop(name)
        try:
            live.volume.close()
        except Exception:
            log.exception("closing volume failed", volume=name)
        log.info("volume closed", volume=name)

    def _open_image(self, name: str, volume: str, at: str, writable: bool) -> LiveImage:
        live = self.volumes.get(volume)
        if live is None:
            raise AdminError("not_found", f"no volume named {volume!r}")
        try:
            view = live.volume.view(at)
        except EngineError as exc:
            raise AdminError("invalid", f"image {name!r}: {exc}") from exc
        device: BlockDevice = cast(BlockDevice, view)
        if writable:
            home = self.data.image_home(name)
            home.mkdir(parents=True, exist_ok=True)
            device = ScratchOverlay(cast(BlockDevice, view), str(home / "scratch.img"))
        ident = uuid.uuid5(uuid.UUID(bytes=live.volume.uuid), f"image:{name}")
        lu = LogicalUnit(device, uuid=ident, product="CDP IMAGE")
        log.info("image created", image=name, volume=volume, at=at, seq=view.seq,
                 writable=writable)
        return LiveImage(name, volume, at, view.seq, writable, view, device, lu)

    def _close_image(self, name: str) -> None:
        image = self.images.pop(name)
        with contextlib.suppress(Exception):
            if isinstance(image.device, ScratchOverlay):
                image.device.close()
        with contextlib.suppress(Exception):
            image.view.close()
        log.info("image closed", image=name)

    def _lu_of(self, volume: str | None, image: str | None) -> LogicalUnit:
        if volume is not None:
            return self.volumes[volume].lu
        assert image is not None
        return self.images[image].lu

    async def _apply_targets(self, cfg: SwitchConfig) -> None:
        by_portal: dict[tuple[str, int], list[Target]] = {}
        maps: dict[tuple[str, int], dict[int, LogicalUnit]] = {}
        for tcfg in cfg.targets:
            for tpg in tcfg.tpgs:
                key = (tcfg.iqn.lower(), tpg.tag)
                lun_map = self._lun_maps.setdefault(key, {})
                wanted = {n: self._lu_of(lun.volume, lun.image) for n, lun in tpg.luns.items()}
                maps[key] = wanted
                acls = tpg.acls
                try:
                    target = Target(
                        tcfg.iqn, lun_map, alias=tcfg.alias,
                        chap=_chap(tpg.auth.userid, tpg.auth.password, tpg.auth.mutual_userid,
                                   tpg.auth.mutual_password) if tpg.auth else None,
                        allowed_initiators=frozenset(a.initiator for a in acls) or None,
                        acl_chap={a.initiator: c for a in acls if (c := _chap(
                            a.userid, a.password, a.mutual_userid, a.mutual_password))},
                    )
                except ValueError as exc:
                    raise AdminError("invalid", f"target {tcfg.iqn}: {exc}") from exc
                for portal in tpg.portals:
                    host, _, port = portal.rpartition(":")
                    by_portal.setdefault((host.strip("[]"), int(port)), []).append(target)
        discovery = None
        if cfg.discovery_auth is not None:
            try:
                discovery = _chap(cfg.discovery_auth.userid, cfg.discovery_auth.password,
                                  cfg.discovery_auth.mutual_userid,
                                  cfg.discovery_auth.mutual_password)
            except ValueError as exc:
                raise AdminError("invalid", f"discovery_auth: {exc}") from exc
        started: list[tuple[str, int]] = []
        try:
            for addr, targets in by_portal.items():
                if addr not in self.portals:
                    try:
                        self.portals[addr] = await start_server(targets, addr[0], addr[1],
                                                                discovery_chap=discovery)
                    except OSError as exc:
                        raise AdminError("conflict", f"cannot listen on {addr[0]}:{addr[1]}:"
                                         f" {exc.strerror or exc}") from exc
                    started.append(addr)
                    log.info("portal listening", portal=f"{addr[0]}:{addr[1]}")
        except BaseException:
            for addr in started:
                server = self.portals.pop(addr)
                server.close()
                await server.wait_closed()
            raise
        # Committed from here on: nothing below can fail.
        for key, wanted in maps.items():
            lun_map = self._lun_maps.setdefault(key, {})
            for n in [n for n in lun_map if n not in wanted]:
                del lun_map[n]
            lun_map.update(wanted)
            numbers = sorted(wanted)
            for lu in wanted.values():
                lu._lun_list = (lambda ns=numbers: ns)  # REPORT LUNS of the owning target
        for key in [k for k in self._lun_maps if k not in maps]:
            self._lun_maps.pop(key).clear()
        for addr, server in list(self.portals.items()):
            if addr in by_portal:
                server.set_targets(by_portal[addr], discovery_chap=discovery)
            else:
                del self.portals[addr]
                server.close()
                await server.wait_closed()
                log.info("portal closed", portal=f"{addr[0]}:{addr[1]}")

    # --- changing the configuration -------------------------------------------------------

    def _edit(self) -> dict[str, Any]:
        """The running configuration as plain data, to change and hand to ``_commit``."""
        data: dict[str, Any] = yaml.safe_load(dump_config(self.config)) or {}
        return data

    async def _commit(self, data: dict[str, Any], what: str, *,
                      progress: ProgressFn | None = None, **fields: Any) -> None:
        try:
            cfg = parse_config(yaml.safe_dump(data, sort_keys=False), "(admin request)")
        except ConfigError as exc:
            raise _invalid(exc) from exc
        await self._apply(cfg, progress)
        self.config = cfg
        save_config(cfg, self.data.running_config)
        log.info(what, **fields)

    def _exported(self, *, volume: str | None = None, image: str | None = None
                  ) -> list[tuple[str, int, int]]:
        """(IQN, TPG tag, LUN) of every LUN mapping the volume or image."""
        out = []
        for tcfg in self.config.targets:
            for tpg in tcfg.tpgs:
                for n, lun in tpg.luns.items():
                    if (volume is not None and lun.volume == volume) or (
                            image is not None and lun.image == image):
                        out.append((tcfg.iqn, tpg.tag, n))
        return out

    def _sessions_on(self, iqns: set[str]) -> list[str]:
        return [f"{n.initiator_name} -> {n.target_name}" for s in self.portals.values()
                for n in s.sessions() if n.target_name.lower() in iqns]

    # --- helpers for admin methods ----------------------------------------------------------

    def _volume(self, params: Mapping[str, Any], key: str = "volume") -> LiveVolume:
        name = _str(params, key)
        live = self.volumes.get(name)
        if live is None:
            known = ", ".join(sorted(self.volumes)) or "none"
            raise AdminError("not_found", f"no volume named {name!r} (volumes: {known})")
        return live

    @contextlib.contextmanager
    def _job(self, live: LiveVolume, what: str) -> Iterator[None]:
        if live.busy is not None:
            raise AdminError("conflict", f"volume {live.name!r} is busy: {live.busy}")
        live.busy = what
        try:
            yield
        finally:
            live.busy = None

    async def _run_job(self, fn: Callable[[threading.Event], Any]) -> Any:
        """Run an engine job in a thread; a cancelled request sets the job's cancel event
        and waits for the job to stop at a safe point."""
        cancel = threading.Event()
        task = asyncio.ensure_future(asyncio.to_thread(fn, cancel))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            cancel.set()
            with contextlib.suppress(BaseException):
                await task
            raise
        except engine_jobs.Cancelled as exc:
            raise AdminError("cancelled", str(exc)) from exc
        except EngineError as exc:
            raise AdminError(_engine_kind(exc), str(exc)) from exc

    # --- admin methods ----------------------------------------------------------------------

    def methods(self) -> dict[str, Callable[[dict[str, Any], ProgressFn], Awaitable[Any]]]:
        table: dict[str, Callable[[dict[str, Any], ProgressFn], Awaitable[Any]]] = {}
        for attr in dir(self):
            if attr.startswith("api_"):
                name = attr[4:].replace("__", ".")
                table[name] = getattr(self, attr)
        return table

    async def api_status(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        from switch.cli import package_version

        return {
            "version": package_version(), "data_dir": str(self.data.root),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "volumes": {n: await self._volume_status(v) for n, v in sorted(self.volumes.items())},
            "images": [self._image_info(i) for i in self.images.values()],
            "targets": [t["iqn"] for t in self._targets_info()],
            "portals": [f"{h}:{p}" for h, p in self.portals],
            "metrics": self.config.metrics.listen if self.config.metrics else None,
        }

    async def _volume_status(self, live: LiveVolume) -> dict[str, Any]:
        # The walk of the secondary and the policy's coverage grow with the history
        # (tens of milliseconds at 100,000 maps): a worker thread does them, so status
        # calls and metric scrapes never stall I/O on the event loop.
        slow = await asyncio.to_thread(self._slow_status, live)
        return self._fast_status(live, slow)

    def _slow_status(self, live: LiveVolume) -> dict[str, Any]:
        vol = live.volume
        secondary = Path(vol.directory)
        used, log_bytes = _du(secondary, Path(vol.log_dir))
        st = os.statvfs(secondary)
        return {"log_bytes": log_bytes, "secondary_used": used,
                "secondary_free": st.f_bavail * st.f_frsize,
                "policy": self.policy.report(live.name, vol,
                                             self.config.volumes[live.name].policy)}

    def _fast_status(self, live: LiveVolume, slow: dict[str, Any]) -> dict[str, Any]:
        vol = live.volume
        secondary = Path(vol.directory)
        markers = sorted(vol.markers.values(), key=lambda m: m.seq)
        exported = self._exported(volume=live.name)
        iqns = {iqn.lower() for iqn, _, _ in exported}
        return {
            "name": live.name, "size": vol.num_blocks * vol.block_size,
            "block_size": vol.block_size, "seq": vol.seq,
            "primary": vol.primary_path, "secondary": str(secondary),
            "oldest_point": {"seq": vol.baseline_seq,
                             "time": _iso(vol.catalog.get_int("baseline_ts"))},
            "newest_point": {"seq": vol.seq},
            "markers": len(markers), "maps": len(vol.maps), "log_bytes": slow["log_bytes"],
            "secondary_used": slow["secondary_used"], "secondary_free": slow["secondary_free"],
            "reads": vol.reads, "writes": vol.writes, "read_bytes": vol.read_bytes,
            "written_bytes": vol.written_bytes, "buffer_full_waits": vol.buffer_full_waits,
            "buffer_full_seconds": vol.buffer_full_ns / 1e9,
            "exported": [f"{i}/tpg{t}/lun{n}" for i, t, n in exported],
            "sessions": self._sessions_on(iqns), "busy": live.busy,
            "offline": live.lu.offline,
            "policy": slow["policy"],
        }

    async def api_volumes__list(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        out = []
        for name, live in sorted(self.volumes.items()):
            vol = live.volume
            out.append({"name": name, "size": vol.num_blocks * vol.block_size, "seq": vol.seq,
                        "primary": vol.primary_path, "secondary": vol.directory,
                        "policy": self.config.volumes[name].policy,
                        "exported": bool(self._exported(volume=name))})
        return out

    async def api_volumes__create(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        name = _str(params, "name")
        async with self._changes:
            self._check_name_free(name)
            entry: dict[str, Any] = {}
            primary = params.get("primary")
            if params.get("size") is not None:
                entry["size"] = _size(params["size"])
            elif primary and self.data.resolve(str(primary)).exists():
                entry["size"] = _existing_size(self.data.resolve(str(primary)))
            else:
                raise AdminError("invalid", "size= is required (e.g. size=1G) unless"
                                 " primary= names an existing file")
            for key in ("primary", "secondary", "policy"):
                if params.get(key) is not None:
                    entry[key] = str(params[key])
            if params.get("block_size") is not None:
                entry["block_size"] = _int(params, "block_size")
            _, secondary = self._paths(name, _Obj(entry))
            if (secondary / "catalog.db").exists():
                raise AdminError("conflict", f"{secondary} already holds a protected volume;"
                                 " choose another secondary= or remove it")
            data = self._edit()
            data.setdefault("volumes", {})[name] = entry
            await self._commit(data, "volume created by admin", progress=progress,
                               volume=name)
        return await self._volume_status(self.volumes[name])

    def _check_name_free(self, name: str) -> None:
        """Volumes and images share one namespace (both can back a LUN)."""
        if name in self.volumes:
            raise AdminError("conflict", f"a volume named {name!r} already exists")
        if name in self.images:
            raise AdminError("conflict", f"an image named {name!r} already exists")

    async def api_volumes__delete(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        live = self._volume(params, "name")
        force = _bool(params, "force")
        async with self._changes:
            users = self._exported(volume=live.name)
            images = [i.name for i in self.images.values() if i.volume == live.name]
            if (users or images) and not force:
                uses = [f"{i}/tpg{t}/lun{n}" for i, t, n in users]
                uses += [f"image {n}" for n in images]
                raise AdminError("refused", f"volume {live.name!r} is in use"
                                 f" ({', '.join(uses)}); delete those first or use force=true")
            if live.busy:
                raise AdminError("conflict", f"volume {live.name!r} is busy: {live.busy}")
            data = self._edit()
            for tcfg in data.get("targets", []):
                for tpg in tcfg.get("tpgs", []):
                    tpg["luns"] = {n: lun for n, lun in tpg.get("luns", {}).items()
                                   if lun.get("volume") != live.name
                                   and lun.get("image") not in images}
            data["images"] = {n: i for n, i in data.get("images", {}).items()
                              if n not in images}
            del data["volumes"][live.name]
            await self._commit(data, "volume deleted by admin", volume=live.name)
        # The files stay: deleting the configuration entry must never destroy data.
        return {"deleted": live.name, "kept_files": [live.volume.primary_path,
                                                     live.volume.directory]}

    async def api_volume__status(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        return await self._volume_status(self._volume(params))

    async def api_volume__mark(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        live = self._volume(params)
        name = params.get("name")
        pinned = _bool(params, "pinned")
        try:
            marker = await asyncio.to_thread(live.volume.mark, None if name is None
                                             else str(name), pinned=pinned)
        except EngineError as exc:
            raise AdminError(_engine_kind(exc), str(exc)) from exc
        log.info("marker set", volume=live.name, marker=marker.name, seq=marker.seq)
        return {"name": marker.name, "seq": marker.seq, "time": _iso(marker.ts_ns),
                "pinned": marker.pinned}

    async def api_volume__markers(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        vol = self._volume(params).volume
        return [{"name": m.name, "seq": m.seq, "time": _iso(m.ts_ns), "pinned": m.pinned}
                for m in sorted(vol.markers.values(), key=lambda m: m.seq)]

    async def api_volume__maps(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        vol = self._volume(params).volume
        return [{"from_seq": m.from_seq, "to_seq": m.to_seq, "time": _iso(m.row.to_ts_ns),
                 "entries": m.row.entries, "granular": m.granular, "bytes": m.row.bytes,
                 "class": m.row.klass} for m in vol.maps]

    async def api_volume__timeline(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        live = self._volume(params)
        vol = live.volume
        return {
            "volume": live.name, "baseline_seq": vol.baseline_seq,
            "baseline_time": _iso(vol.catalog.get_int("baseline_ts")), "newest_seq": vol.seq,
            "markers": await self.api_volume__markers(params, progress),
            "maps": await self.api_volume__maps(params, progress),
            "images": [self._image_info(i) for i in self.images.values()
                       if i.volume == live.name],
            "classes": self.policy.view(live.name, vol, self.config.volumes[live.name].policy),
        }

    async def api_volume__rewind(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        live = self._volume(params)
        to = _str(params, "to")
        force = _bool(params, "force")
        iqns = {iqn.lower() for iqn, _, _ in self._exported(volume=live.name)}
        sessions = self._sessions_on(iqns)
        if sessions and not force:
            raise AdminError("refused", f"hosts are logged in to volume {live.name!r}"
                             f" ({'; '.join(sessions)}): a rewind changes the disk under"
                             " them. Stop them first, or use force=true to take the LUN"
                             " offline, drop their sessions, rewind and bring it back")
        vol = live.volume
        try:
            vol.resolve(to)
        except EngineError as exc:
            raise AdminError("invalid", str(exc)) from exc
        with self._job(live, f"rewind to {to}"):
            offline = bool(iqns)
            if offline:
                live.lu.take_offline(f"rewind to {to}")
                dropped = sum(s.drop_sessions(iqn) for s in self.portals.values()
                              for iqn in iqns)
                log.warning("volume offline for rewind", volume=live.name, to=to,
                            sessions_dropped=dropped)
            try:
                def run(cancel: threading.Event) -> Any:
                    return engine_jobs.rewind(
                        vol, to, cancel=cancel,
                        progress=lambda d, t: progress(f"rewind {live.name}", d, t))
                try:
                    result = await self._run_job(run)
                except (asyncio.CancelledError, AdminError) as exc:
                    if isinstance(exc, AdminError) and exc.kind != "cancelled":
                        raise
                    await self._undo_partial_rewind(live)
                    raise
            finally:
                if offline:
                    live.lu.bring_online()
                    log.info("volume online after rewind", volume=live.name)
        log.info("volume rewound", volume=live.name, to=to, seq=result.point_seq,
                 before_marker=result.before_marker, blocks=result.blocks_rewritten)
        return {"before_marker": result.before_marker, "after_marker": result.after_marker,
                "seq": result.point_seq, "blocks_restored": result.blocks_rewritten,
                "undo": f"rewind to={result.before_marker}"}

    async def _undo_partial_rewind(self, live: LiveVolume) -> None:
        """A cancelled rewind stopped part way: put back what it rewrote."""
        vol = live.volume
        marks = [m for m in vol.markers.values() if m.name.startswith("before-rewind-")]
        if not marks:
            return
        last = max(marks, key=lambda m: m.seq)
        log.warning("undoing cancelled rewind", volume=live.name, to=last.name)
        await asyncio.to_thread(engine_jobs.rewind, vol, last.name)

    async def api_volume__clone(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        live = self._volume(params)
        name = _str(params, "name")
        at = _str(params, "at")
        self._check_name_free(name)
        vol = live.volume
        try:
            vol.resolve(at)
        except EngineError as exc:
            raise AdminError("invalid", str(exc)) from exc
        entry: dict[str, Any] = {"size": vol.num_blocks * vol.block_size,
                                 "block_size": vol.block_size}
        for key in ("primary", "secondary"):
            if params.get(key) is not None:
                entry[key] = str(params[key])
        primary, secondary = self._paths(name, _Obj(entry))
        if primary.exists() or (secondary / "catalog.db").exists():
            raise AdminError("conflict", f"{primary} or {secondary} already exists")
        primary.parent.mkdir(parents=True, exist_ok=True)
        with self._job(live, f"clone to {name}"):
            def run(cancel: threading.Event) -> Any:
                return engine_jobs.clone(
                    vol, at, str(primary), cancel=cancel,
                    progress=lambda d, t: progress(f"clone {live.name} -> {name}", d, t))
            seq = await self._run_job(run)
        async with self._changes:
            data = self._edit()
            data.setdefault("volumes", {})[name] = entry
            try:
                await self._commit(data, "volume cloned", progress=progress, volume=name,
                                   source=live.name, at=at, seq=seq)
            except BaseException:
                with contextlib.suppress(OSError):
                    primary.unlink()
                raise
        return {**await self._volume_status(self.volumes[name]), "source": live.name,
                "source_seq": seq}

    async def api_volume__playback(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        live = self._volume(params)
        start, end = _str(params, "from"), _str(params, "to")
        lba, count = _int(params, "lba"), _int(params, "count")
        dest_path = self.data.resolve(_str(params, "dest"))
        vol = live.volume
        if not dest_path.exists():
            raise AdminError("not_found", f"dest {dest_path} does not exist (create the file"
                             " or device first: playback writes into it)")
        try:
            dest = FileBlockDevice(dest_path, block_size=vol.block_size)
        except (OSError, EngineError, ValueError) as exc:
            raise AdminError("invalid", f"dest {dest_path}: {exc}") from exc
        try:
            with self._job(live, f"playback to {dest_path}"):
                def run(cancel: threading.Event) -> Any:
                    return engine_jobs.playback(
                        vol, start, end, lba, count, dest, cancel=cancel,
                        progress=lambda d, t: progress(f"playback {live.name}", d, t))
                blocks = await self._run_job(run)
        finally:
            dest.close()
        log.info("playback done", volume=live.name, start=start, end=end, lba=lba,
                 count=count, dest=str(dest_path), blocks=blocks)
        return {"blocks": blocks, "dest": str(dest_path)}

    async def api_volume__merge(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        live = self._volume(params)
        start, end = _str(params, "from"), _str(params, "to")
        with self._job(live, f"merge {start}..{end}"):
            def run(cancel: threading.Event) -> Any:
                return live.volume.merge(start, end)
            row = await self._run_job(run)
        log.info("maps merged", volume=live.name, start=start, end=end,
                 from_seq=row.from_seq, to_seq=row.to_seq)
        return {"from_seq": row.from_seq, "to_seq": row.to_seq, "entries": row.entries,
                "bytes": row.bytes}

    async def api_volume__fade(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        live = self._volume(params)
        before = _str(params, "before")
        with self._job(live, f"fade before {before}"):
            def run(cancel: threading.Event) -> Any:
                return engine_jobs.fade(
                    live.volume, before, cancel=cancel,
                    progress=lambda d, t: progress(f"fade {live.name}", d, t))
            result = await self._run_job(run)
        fields = {"freed_bytes": result.bytes_freed, "baseline_seq": result.baseline_seq,
                  "maps_removed": result.maps_removed,
                  "segments_removed": result.segments_removed,
                  "baseline_bytes_written": result.baseline_bytes_written}
        log.info("faded out", volume=live.name, before=before, **fields)
        return fields

    # images

    def _image_info(self, image: LiveImage) -> dict[str, Any]:
        info: dict[str, Any] = {"name": image.name, "volume": image.volume, "at": image.at,
                                "seq": image.seq, "writable": image.writable,
                                "exported": [f"{i}/tpg{t}/lun{n}"
                                             for i, t, n in self._exported(image=image.name)]}
        if isinstance(image.device, ScratchOverlay):
            info["scratch_bytes"] = image.device.written_bytes
        return info

    async def api_images__list(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        return [self._image_info(i) for _, i in sorted(self.images.items())]

    async def api_images__create(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        live = self._volume(params)
        at = _str(params, "at")
        writable = _bool(params, "writable")
        try:
            seq = live.volume.resolve(at)
        except EngineError as exc:
            raise AdminError("invalid", str(exc)) from exc
        name = str(params.get("name") or f"{live.name}-at-{seq}")
        async with self._changes:
            self._check_name_free(name)
            data = self._edit()
            # A relative time is pinned to the write it names now, so the image does not
            # move when the daemon restarts.
            pinned_at = at if at in live.volume.markers else f"seq:{seq}"
            data.setdefault("images", {})[name] = {"volume": live.name, "at": pinned_at,
                                                    "writable": writable}
            await self._commit(data, "image created by admin", image=name, volume=live.name,
                               at=pinned_at)
        return self._image_info(self.images[name])

    async def api_images__delete(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        name = _str(params, "name")
        async with self._changes:
            if name not in self.images:
                raise AdminError("not_found", f"no image named {name!r}")
            data = self._edit()
            for tcfg in data.get("targets", []):
                for tpg in tcfg.get("tpgs", []):
                    tpg["luns"] = {n: lun for n, lun in tpg.get("luns", {}).items()
                                   if lun.get("image") != name}
            del data["images"][name]
            await self._commit(data, "image deleted by admin", image=name)
        shutil.rmtree(self.data.image_home(name), ignore_errors=True)
        return {"deleted": name}

    # targets

    def _targets_info(self) -> list[dict[str, Any]]:
        out = []
        for tcfg in self.config.targets:
            tpgs = []
            for tpg in tcfg.tpgs:
                tpgs.append({
                    "tag": tpg.tag, "portals": list(tpg.portals),
                    "luns": {n: ({"volume": lun.volume} if lun.volume else {"image": lun.image})
                             for n, lun in sorted(tpg.luns.items())},
                    "acls": [{"initiator": a.initiator, "chap": a.userid is not None}
                             for a in tpg.acls],
                    "auth": "chap" if tpg.auth else "none",
                    "sessions": [f"{n.initiator_name}" for s in self.portals.values()
                                 for n in s.sessions()
                                 if n.target_name.lower() == tcfg.iqn.lower()],
                })
            out.append({"iqn": tcfg.iqn, "alias": tcfg.alias, "tpgs": tpgs})
        return out

    async def api_targets__list(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        return self._targets_info()

    async def api_targets__create(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        iqn = str(params.get("iqn") or f"{DEFAULT_IQN_PREFIX}:{uuid.uuid4().hex[:12]}")
        async with self._changes:
            data = self._edit()
            if any(t["iqn"].lower() == iqn.lower() for t in data.get("targets", [])):
                raise AdminError("conflict", f"target {iqn} already exists")
            data.setdefault("targets", []).append({"iqn": iqn, "tpgs": [{"tag": 1,
                                                                         "portals": []}]})
            await self._commit(data, "target created", iqn=iqn)
        return {"iqn": iqn}

    async def api_targets__delete(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        iqn = _str(params, "iqn")
        async with self._changes:
            data = self._edit()
            keep = [t for t in data.get("targets", []) if t["iqn"].lower() != iqn.lower()]
            if len(keep) == len(data.get("targets", [])):
                raise AdminError("not_found", f"no target {iqn}")
            data["targets"] = keep
            await self._commit(data, "target deleted", iqn=iqn)
            for server in self.portals.values():
                server.drop_sessions(iqn)
        return {"deleted": iqn}

    def _tpg(self, data: dict[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
        iqn = _str(params, "iqn")
        tag = _int(params, "tpg") if params.get("tpg") is not None else 1
        for tcfg in data.get("targets", []):
            if tcfg["iqn"].lower() == iqn.lower():
                for tpg in tcfg.setdefault("tpgs", []):
                    if tpg.get("tag", 1) == tag:
                        return cast(dict[str, Any], tpg)
                raise AdminError("not_found", f"target {iqn} has no tpg{tag}")
        raise AdminError("not_found", f"no target {iqn}")

    async def api_tpg__portal_create(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        portal = _portal(params)
        async with self._changes:
            data = self._edit()
            tpg = self._tpg(data, params)
            if portal in tpg.setdefault("portals", []):
                raise AdminError("conflict", f"portal {portal} already exists")
            tpg["portals"].append(portal)
            await self._commit(data, "portal created", iqn=params["iqn"], portal=portal)
        return {"portal": portal}

    async def api_tpg__portal_delete(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        portal = _portal(params)
        async with self._changes:
            data = self._edit()
            tpg = self._tpg(data, params)
            if portal not in tpg.get("portals", []):
                raise AdminError("not_found", f"no portal {portal}")
            tpg["portals"].remove(portal)
            await self._commit(data, "portal deleted", iqn=params["iqn"], portal=portal)
        return {"deleted": portal}

    async def api_tpg__lun_create(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        volume, image = params.get("volume"), params.get("image")
        if (volume is None) == (image is None):
            raise AdminError("invalid", "give exactly one of volume= or image=")
        async with self._changes:
            data = self._edit()
            tpg = self._tpg(data, params)
            luns = tpg.setdefault("luns", {})
            n = _int(params, "lun") if params.get("lun") is not None else next(
                i for i in range(16384) if i not in luns)
            if n in luns:
                raise AdminError("conflict", f"lun{n} already exists")
            luns[n] = {"volume": str(volume)} if volume is not None else {"image": str(image)}
            await self._commit(data, "lun created", iqn=params["iqn"], lun=n,
                               volume=volume, image=image)
        return {"lun": n}

    async def api_tpg__lun_delete(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        n = _int(params, "lun")
        async with self._changes:
            data = self._edit()
            tpg = self._tpg(data, params)
            if n not in tpg.get("luns", {}):
                raise AdminError("not_found", f"no lun{n}")
            del tpg["luns"][n]
            await self._commit(data, "lun deleted", iqn=params["iqn"], lun=n)
        return {"deleted": n}

    async def api_tpg__acl_create(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        initiator = _str(params, "initiator")
        async with self._changes:
            data = self._edit()
            tpg = self._tpg(data, params)
            acls = tpg.setdefault("acls", [])
            if any(a["initiator"].lower() == initiator.lower() for a in acls):
                raise AdminError("conflict", f"an ACL for {initiator} already exists")
            entry = {"initiator": initiator}
            for key in ("userid", "password", "mutual_userid", "mutual_password"):
                if params.get(key) is not None:
                    entry[key] = str(params[key])
            acls.append(entry)
            await self._commit(data, "acl created", iqn=params["iqn"], initiator=initiator)
        return {"initiator": initiator}

    async def api_tpg__acl_delete(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        initiator = _str(params, "initiator")
        async with self._changes:
            data = self._edit()
            tpg = self._tpg(data, params)
            acls = tpg.get("acls", [])
            keep = [a for a in acls if a["initiator"].lower() != initiator.lower()]
            if len(keep) == len(acls):
                raise AdminError("not_found", f"no ACL for {initiator}")
            tpg["acls"] = keep
            await self._commit(data, "acl deleted", iqn=params["iqn"], initiator=initiator)
        return {"deleted": initiator}

    async def api_tpg__auth_set(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        async with self._changes:
            data = self._edit()
            tpg = self._tpg(data, params)
            auth = {k: str(params[k]) for k in ("userid", "password", "mutual_userid",
                                                 "mutual_password") if params.get(k)}
            if auth:
                tpg["auth"] = auth
            else:
                tpg.pop("auth", None)
            disc = {k.removeprefix("discovery_"): str(params[k])
                    for k in ("discovery_userid", "discovery_password") if params.get(k)}
            if disc:
                data["discovery_auth"] = disc
            await self._commit(data, "auth set", iqn=params["iqn"],
                               auth="chap" if auth else "none")
        return {"auth": "chap" if auth else "none"}

    # policies

    def _policy_info(self, name: str) -> dict[str, Any]:
        policy = self.policy.policies[name]
        users = sorted(v for v, c in self.config.volumes.items()
                       if (c.policy or "default") == name)
        return {"name": name, "description": policy.description,
                "classes": [{"name": c.name,
                             "granularity": "every write" if c.every_write
                             else format_duration(c.granularity),
                             "for": format_duration(c.for_)} for c in policy.classes],
                "older": policy.older, "volumes": users,
                "snapshots": _some({
                    "every": _dur(policy.snapshots.every),
                    "every_writes": policy.snapshots.every_writes}),
                "merge": _some({
                    "after": _dur(policy.merge.after),
                    "after_writes": policy.merge.after_writes,
                    "schedule": [_dur(t) for t in policy.merge.schedule] or None}),
                "budget": None if policy.budget is None else _some({
                    "max_bytes": policy.budget.max_bytes,
                    "max_percent": policy.budget.max_percent,
                    "on_full": policy.budget.on_full})}

    async def api_policies__list(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        return [self._policy_info(n) for n in sorted(self.policy.policies)]

    async def api_policies__show(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        name = params.get("name")
        if name is None:
            return {"file": None if self.policy.file is None else str(self.policy.file),
                    "policies": [self._policy_info(n) for n in sorted(self.policy.policies)]}
        if name not in self.policy.policies:
            raise AdminError("not_found", f"no policy named {name!r} (policies:"
                             f" {', '.join(sorted(self.policy.policies))})")
        return self._policy_info(str(name))

    async def api_policies__reload(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        path = self._policies_path(self.config)
        async with self._changes:
            try:
                before = dict(self.policy.policies)
                changed = self.policy.load(path)
            except PolicyError as exc:
                raise AdminError("invalid", f"{exc} (the running policies are unchanged)"
                                 ) from exc
            missing = sorted(f"{v} -> {c.policy}" for v, c in self.config.volumes.items()
                             if c.policy not in (None, NO_POLICY)
                             and c.policy not in self.policy.policies)
            if missing:
                self.policy.policies = before  # a volume would lose its policy: refuse
                raise AdminError("invalid", "the new file drops policies volumes use: "
                                 f"{', '.join(missing)} (the running policies are unchanged)")
        log.info("policies reloaded", file=None if path is None else str(path), **changed)
        return {"file": None if path is None else str(path), "changed": changed}

    async def api_policies__run(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        """Run the scheduler now (for one volume with volume=), as its timer would."""
        only = None
        if params.get("volume") is not None:
            only = self._volume(params).name
        return await self.policy.tick(only)

    async def api_volume__pin(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        return self._pin(params, True)

    async def api_volume__unpin(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        return self._pin(params, False)

    def _pin(self, params: dict[str, Any], pinned: bool) -> Any:
        live = self._volume(params)
        try:
            marker = live.volume.set_pinned(_str(params, "name"), pinned)
        except EngineError as exc:
            raise AdminError("not_found", str(exc)) from exc
        log.info("marker pinned" if pinned else "marker unpinned", volume=live.name,
                 marker=marker.name)
        return {"name": marker.name, "seq": marker.seq, "pinned": marker.pinned}

    # configuration

    async def api_config__save(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        path = self.data.resolve(str(params.get("path") or "saveconfig.yaml"))
        try:
            save_config(self.config, path)
        except OSError as exc:
            raise AdminError("invalid", f"cannot save to {path}: {exc.strerror}") from exc
        log.info("configuration saved", path=str(path))
        return {"path": str(path)}

    async def api_config__restore(self, params: dict[str, Any], progress: ProgressFn) -> Any:
        path = self.data.resolve(str(params.get("path") or "saveconfig.yaml"))
        try:
            cfg = load_config(path)
        except ConfigError as exc:
            raise AdminError("invalid", str(exc)) from exc
        except OSError as exc:
            raise AdminError("not_found", f"cannot read {path}: {exc.strerror}") from exc
        async with self._changes:
            busy = [v.name for v in self.volumes.values() if v.busy]
            if busy:
                raise AdminError("conflict", f"volumes busy: {', '.join(busy)}")
            await self._apply(cfg)
            self.config = cfg
            save_config(cfg, self.data.running_config)
        log.info("configuration restored", path=str(path))
        return {"path": str(path)}

    # --- metrics ----------------------------------------------------------------------------

    async def metric_samples(self) -> list[Metric]:
        per: dict[str, list[tuple[dict[str, str], float]]] = {}
        for name, live in list(self.volumes.items()):  # the loop runs on while we wait
            st = await self._volume_status(live)
            labels = {"volume": name}
            for key in ("reads", "writes", "read_bytes", "written_bytes", "log_bytes",
                        "maps", "markers", "secondary_used", "secondary_free", "seq",
                        "buffer_full_waits", "buffer_full_seconds"):
                per.setdefault(key, []).append((labels, float(st[key])))
            per.setdefault("oldest_seq", []).append((labels, float(live.volume.baseline_seq)))
            pol = st["policy"]
            per.setdefault("writes_refused", []).append(
                (labels, 1.0 if pol.get("writes_refused") else 0.0))
            if "covered_s" in pol:
                per.setdefault("covered_seconds", []).append((labels, pol["covered_s"]))
                per.setdefault("promised_seconds", []).append((labels, pol["promised_s"]))
                per.setdefault("coverage_level", []).append(
                    (labels, {"ok": 0.0, "warning": 1.0, "error": 2.0}[pol["level"]]))
                for c in pol["classes"]:
                    cl = {"volume": name, "class": c["class"]}
                    per.setdefault("class_covered_seconds", []).append((cl, c["covered_s"]))
                    per.setdefault("class_promised_seconds", []).append(
                        (cl, c["promised_s"]))
                    per.setdefault("class_bytes", []).append((cl, float(c["bytes"])))
            per.setdefault("oldest_time", []).append(
                (labels, live.volume.catalog.get_int("baseline_ts") / 1e9))
        spec = {
            "reads": ("counter", "read commands"), "writes": ("counter", "write commands"),
            "read_bytes": ("counter", "bytes read"), "written_bytes": ("counter",
                                                                       "bytes written"),
            "log_bytes": ("gauge", "bytes of write log on the secondary"),
            "maps": ("gauge", "delta maps"), "markers": ("gauge", "markers"),
            "secondary_used": ("gauge", "bytes used by the volume on its secondary"),
            "secondary_free": ("gauge", "bytes free on the secondary's file system"),
            "seq": ("counter", "newest write sequence number"),
            "buffer_full_waits": ("counter", "writes that found the write buffer full (the"
                                  " disk behind the writes) and waited for room"),
            "buffer_full_seconds": ("counter", "seconds those writes waited, summed"),
            "oldest_seq": ("gauge", "sequence number of the oldest recoverable point"),
            "oldest_time": ("gauge", "time of the oldest recoverable point (unix seconds)"),
            "writes_refused": ("gauge", "1 while the policy's space budget refuses writes"),
            "covered_seconds": ("gauge", "history actually recoverable (seconds back)"),
            "promised_seconds": ("gauge", "history the policy promises now (seconds back)"),
            "coverage_level": ("gauge", "0 ok, 1 warning (< 85% of the promise), 2 error"
                               " (< 75%)"),
            "class_covered_seconds": ("gauge", "per retention class: history recoverable"),
            "class_promised_seconds": ("gauge", "per retention class: history promised"),
            "class_bytes": ("gauge", "per retention class: bytes of history held"),
        }
        out = [Metric(f"cdpswitch_volume_{k}" + ("_total" if kind == "counter" else ""),
                      kind, text, tuple(per.get(k, ())))
               for k, (kind, text) in spec.items()]
        out.append(Metric("cdpswitch_images", "gauge", "point-in-time images",
                          (({}, float(len(self.images))),)))
        sessions = sum(len(s.sessions()) for s in self.portals.values())
        out.append(Metric("cdpswitch_sessions", "gauge", "iSCSI sessions logged in",
                          (({}, float(sessions)),)))
        return out


# --- small helpers ----------------------------------------------------------------------------


def _dur(ns: int | None) -> str | None:
    return None if ns is None else format_duration(ns)


def _some(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


class _Obj:
    """Attribute access to a config entry dict, for ``Switch._paths``."""

    def __init__(self, entry: Mapping[str, Any]) -> None:
        self.primary = entry.get("primary")
        self.secondary = entry.get("secondary")


def _engine_kind(exc: EngineError) -> str:
    name = type(exc).__name__
    if name in ("PointError", "UnknownPointError", "MarkerExistsError"):
        return "invalid" if name != "MarkerExistsError" else "conflict"
    if name == "BusyError":
        return "conflict"
    return "engine"


def _str(params: Mapping[str, Any], key: str) -> str:
    value = params.get(key)
    if value is None or value == "":
        raise AdminError("invalid", f"{key}= is required")
    return str(value)


def _int(params: Mapping[str, Any], key: str) -> int:
    value = params.get(key)
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(str(value), 0) if isinstance(value, str) else int(cast(int, value))
    except (TypeError, ValueError):
        raise AdminError("invalid", f"{key}= must be an integer, not {value!r}") from None


def _bool(params: Mapping[str, Any], key: str) -> bool:
    value = params.get(key, False)
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off", ""):
        return False
    raise AdminError("invalid", f"{key}= must be true or false, not {value!r}")


def _size(value: Any) -> int:
    try:
        return parse_size(value)
    except (ValueError, TypeError) as exc:
        raise AdminError("invalid", f"size: {exc}") from exc


def _existing_size(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def _portal(params: Mapping[str, Any]) -> str:
    ip = _str(params, "ip")
    port = _int(params, "port") if params.get("port") is not None else 3260
    return f"[{ip}]:{port}" if ":" in ip and not ip.startswith("[") else f"{ip}:{port}"


def _iso(ts_ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ts_ns / 1e9)) + \
        f".{ts_ns // 1_000_000 % 1000:03d}"


def _du(path: Path, part: Path) -> tuple[int, int]:
    """Bytes allocated under ``path``, and under its subdirectory ``part``: one walk."""
    total = inside = 0
    prefix = os.path.join(os.path.normpath(part), "")
    for root, _dirs, files in os.walk(path):
        in_part = os.path.join(os.path.normpath(root), "").startswith(prefix)
        for f in files:
            with contextlib.suppress(OSError):
                n = os.stat(os.path.join(root, f)).st_blocks * 512
                total += n
                inside += n if in_part else 0
    return total, inside


# --- the process ------------------------------------------------------------------------------


def _connect_help(cfg: SwitchConfig) -> list[str]:
    lines = []
    for tcfg in cfg.targets:
        for tpg in tcfg.tpgs:
            for portal in tpg.portals:
                for n in sorted(tpg.luns):
                    lines.append(f"  LUN {n} of {tcfg.iqn} at {portal}:")
                    lines.append(f"    iscsiadm -m discovery -t st -p {portal} && "
                                 f"iscsiadm -m node -T {tcfg.iqn} -p {portal} --login")
                    lines.append(f"    qemu-img info iscsi://{portal}/{tcfg.iqn}/{n}")
    return lines


async def serve(data: DataDir, config_path: Path | None, *, ready: Callable[[Switch], None]
                | None = None) -> int:
    """Run until SIGTERM/SIGINT. Returns the exit status."""
    if config_path is not None:
        cfg = load_config(config_path)
        source = str(config_path)
    elif data.running_config.exists():
        cfg = load_config(data.running_config)
        source = str(data.running_config)
    else:
        cfg = default_config()
        source = "defaults (first start)"
    switch = Switch(data)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        try:
            await switch.start(cfg)
        except AdminError as exc:
            await switch.stop()
            print(f"cdpswitch: cannot start: {exc.message}", flush=True)
            return 1
        print(f"cdpswitch serving from {data.root} (configuration: {source})")
        print(f"admin: cdpswitch shell --data-dir {data.root}")
        for line in _connect_help(cfg):
            print(line)
        print("ready", flush=True)
        if ready is not None:
            ready(switch)
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    await switch.stop()
    return 0


def run(data_dir: Path, config_path: Path | None = None) -> int:
    """``cdpswitch serve``: lock the data directory, configure logging, run the loop."""
    from switch import logs
    from switch.iscsi_serve import _runner
    from switch.tuning import tune_allocator

    data = DataDir(data_dir.resolve())
    try:
        lock = data.lock()
    except Exception as exc:  # DataDirBusy or an unusable directory
        print(f"cdpswitch: {exc}", flush=True)
        return 1
    logs.configure(os.environ.get("CDPSWITCH_LOG_LEVEL", "INFO"))
    tune_allocator()
    status = [0]

    async def main() -> None:
        try:
            status[0] = await serve(data, config_path)
        except ConfigError as exc:
            print(f"cdpswitch: invalid configuration:\n{exc}", flush=True)
            status[0] = 2

    try:
        _runner()(main())
    finally:
        os.close(lock)
    return status[0]

