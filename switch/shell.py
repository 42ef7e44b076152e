"""``cdpswitch shell``: a targetcli-style shell over the admin API.

The shell is a view (STYLE.md, guide 9): every node is built from the daemon's answers and
every command is one admin API call; the daemon makes all decisions. The tree::

    /                     status, saveconfig, restoreconfig
    /volumes              create, delete            (ls: a table)
    /volumes/<v>          mark, timeline, rewind, clone, playback, merge, fade, status
    /volumes/<v>/markers  (ls: a table)
    /volumes/<v>/maps     (ls: a table)
    /images               create, delete            (ls: a table)
    /targets              create, delete
    /targets/<iqn>/tpg<N>            set auth ... (as in targetcli)
    /targets/<iqn>/tpg<N>/portals    create, delete
    /targets/<iqn>/tpg<N>/luns       create, delete
    /targets/<iqn>/tpg<N>/acls       create, delete
    /policies             show, reload              (ls: a table)

Children are fetched again for each command line (and each completion), so the tree always
shows the daemon's state. A command's parameters are declared once with :func:`params`; the
declaration drives conversion (booleans, integers), ``help`` syntax, missing/unknown
parameter errors and tab completion (marker names for POINTs, names of existing volumes,
images, targets...). The declaration is needed anyway because ``from`` cannot be a Python
parameter name.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO, TypeVar, cast

from configshell_fb import (  # type: ignore[import-untyped]
    ConfigNode,
    ConfigShell,
    Console,
    ExecutionError,
)
from pyparsing import ParseBaseException

from switch.admin_client import AdminClient, socket_path
from switch.admin_protocol import AdminError, ErrorKind, ProgressFn
from switch.policy_text import coverage_lines, policies_table, policy_blocks, reload_text
from switch.textfmt import human_size, table

__all__ = ["CdpShell", "Session", "main"]

HISTORY_DIR = "shell"  # in the data directory: configshell's history and preferences


# --- parameter declarations ----------------------------------------------------------------


class Arg(Enum):
    """What a parameter's value is: how to convert it and what to offer on TAB."""

    TEXT = "text"
    SIZE = "size"  # passed as typed; the daemon parses units
    BOOL = "bool"
    INT = "int"
    POINT = "point"  # a marker name, seq:N, a time, -15m, now
    FORMAT = "format"
    VOLUME = "volume"  # the name of an existing volume
    IMAGE = "image"
    TARGET = "target"
    POLICY = "policy"
    LUN = "lun"  # an existing LUN of this TPG
    INITIATOR = "initiator"  # an existing ACL of this TPG
    PORTAL_IP = "portal_ip"


_TRUE = frozenset({"true", "yes", "1", "on"})
_FALSE = frozenset({"false", "no", "0", "off"})


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    arg: Arg
    required: bool

    def convert(self, value: str) -> Any:
        if self.arg is Arg.BOOL:
            lowered = value.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise AdminError(ErrorKind.INVALID, f"{self.name} must be true or false, not {value!r}")
        if self.arg in (Arg.INT, Arg.LUN):
            try:
                return int(value, 10)
            except ValueError:
                raise AdminError(
                    ErrorKind.INVALID, f"{self.name} must be an integer, not {value!r}"
                ) from None
        return value


def req(name: str, arg: Arg = Arg.TEXT) -> Param:
    return Param(name, arg, True)


def opt(name: str, arg: Arg = Arg.TEXT) -> Param:
    return Param(name, arg, False)


_SPEC = "_cdpswitch_params"
F = TypeVar("F", bound=Callable[..., Any])


def params(*spec: Param) -> Callable[[F], F]:
    """Declare a ``ui_command_*`` method's parameters; it is then called with keywords only."""

    def mark(fn: F) -> F:
        setattr(fn, _SPEC, spec)
        return fn

    return mark


def spec_of(method: Any) -> tuple[Param, ...] | None:
    spec = getattr(method, _SPEC, None)
    return cast(tuple[Param, ...], spec) if spec is not None else None


def bind(
    command: str, spec: Sequence[Param], pparams: Sequence[str], kparams: Mapping[str, str]
) -> dict[str, Any]:
    """The converted keyword arguments for a call; AdminError(invalid) on a bad command line."""
    by_name = {p.name: p for p in spec}
    usage = " ".join(f"{p.name}=" if p.required else f"[{p.name}=]" for p in spec)
    if len(pparams) > len(spec):
        raise AdminError(ErrorKind.INVALID, f"too many parameters; usage: {command} {usage}")
    raw: dict[str, str] = {}
    for p, value in zip(spec, pparams, strict=False):
        raw[p.name] = value
    for name, value in kparams.items():
        if name not in by_name:
            raise AdminError(
                ErrorKind.INVALID, f"unknown parameter {name!r}; usage: {command} {usage}"
            )
        if name in raw:
            raise AdminError(ErrorKind.INVALID, f"parameter {name!r} given twice")
        raw[name] = value
    missing = [p.name for p in spec if p.required and p.name not in raw]
    if missing:
        raise AdminError(
            ErrorKind.INVALID, f"missing {', '.join(missing)}; usage: {command} {usage}"
        )
    return {name: by_name[name].convert(value) for name, value in raw.items()}


# --- output --------------------------------------------------------------------------------

_SIZE_KEYS = frozenset(
    {"size", "bytes", "log_bytes", "secondary_used", "secondary_free", "read_bytes",
     "written_bytes", "freed_bytes"}
)  # fmt: skip
def fmt(value: Any, key: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) and key in _SIZE_KEYS:
        return human_size(value)
    if isinstance(value, int | float) and key == "time":
        return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds")
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        if any(isinstance(v, list | Mapping) for v in value):
            return json.dumps(value, separators=(",", ":"))
        return ", ".join(fmt(v) for v in value) if value else "-"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={fmt(v, k)}" for k, v in value.items()) if value else "-"
    return str(value)


def dict_table(items: Sequence[Mapping[str, Any]], columns: Sequence[str] = ()) -> str:
    """A table of ``items``: ``columns`` first, then any other key found in them."""
    keys = list(columns)
    for item in items:
        keys.extend(k for k in item if k not in keys)
    headers = [k.upper() for k in keys]
    return table(headers, ([fmt(item.get(k), k) for k in keys] for item in items))


def mapping_lines(obj: Mapping[str, Any]) -> str:
    width = max((len(k) for k in obj), default=0)
    return "\n".join(f"{key.ljust(width)}  {fmt(value, key)}" for key, value in obj.items())


def render(value: Any, empty: str = "(none)") -> str:
    """Any result, human-readably."""
    if isinstance(value, Mapping):
        return mapping_lines(value) if value else empty
    if isinstance(value, list):
        if not value:
            return empty
        if all(isinstance(v, Mapping) for v in value):
            return dict_table(value)
        return "\n".join(fmt(v) for v in value)
    return fmt(value)


def names_of(items: Any, key: str) -> list[str]:
    """Names from a list answer whose entries are strings or objects with ``key``."""
    if not isinstance(items, list):
        return []
    out: list[str] = []
    for item in items:
        if isinstance(item, Mapping) and item.get(key) is not None:
            out.append(str(item[key]))
        elif isinstance(item, str | int) and not isinstance(item, bool):
            out.append(str(item))
    return out


# --- the session: client, output streams, progress -----------------------------------------


class _Progress:
    """Shows a long operation's progress: a rich bar on a terminal, else plain lines."""

    PLAIN_INTERVAL = 1.0  # seconds between plain lines (the last one is always shown)

    def __init__(self, session: Session, label: str) -> None:
        self._session = session
        self._label = label
        self._bar: Any = None
        self._task: Any = None
        self._last_plain = -float("inf")

    def __enter__(self) -> ProgressFn:
        if self._session.fancy:
            from rich.console import Console as RichConsole
            from rich.progress import Progress

            self._bar = Progress(
                console=RichConsole(file=self._session.out),
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self._label, total=None)
        return self.update

    def update(self, what: str, done: int, total: int) -> None:
        if self._bar is not None:
            self._bar.update(self._task, description=what, completed=done, total=total or None)
            return
        now = time.monotonic()
        if done < total and now - self._last_plain < self.PLAIN_INTERVAL:
            return
        self._last_plain = now
        pct = f" ({100 * done // total}%)" if total > 0 else ""
        self._session.err.write(f"{what}: {done}/{total}{pct}\n")
        self._session.err.flush()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()


class Session:
    """What the nodes share: the client, the output streams and the refresh generation."""

    def __init__(
        self, client: AdminClient, out: TextIO, err: TextIO, fancy: bool | None = None
    ) -> None:
        self.client = client
        self.out = out
        self.err = err
        self.fancy = out.isatty() if fancy is None else fancy
        # Bumped for each command line and completion: nodes fetch their children again.
        self.generation = 0

    def invalidate(self) -> None:
        self.generation += 1

    def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.client.call(method, params)

    def call_long(self, method: str, params: Mapping[str, Any], label: str) -> Any:
        with _Progress(self, label) as progress:
            return self.client.call(method, params, on_progress=progress)

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def error(self, message: str) -> None:
        self.err.write(f"Error: {message}\n")
        self.err.flush()


# --- nodes ---------------------------------------------------------------------------------


class Node(ConfigNode):  # type: ignore[misc]
    """A node whose children come from the daemon (see :meth:`fetch_children`)."""

    def __init__(self, name: str, parent: Node | None, shell: CdpShell | None = None) -> None:
        super().__init__(name, parent, shell)
        self._synced = -1

    @property
    def session(self) -> Session:
        return cast(CdpShell, self.shell).session

    def call(self, method: str, **args: Any) -> Any:
        return self.session.call(method, args)

    def say(self, text: str) -> None:
        self.session.print(text)

    # -- dynamic children --------------------------------------------------------------------

    def fetch_children(self) -> Mapping[str, Any] | None:
        """Child name -> its data, from the daemon; None for a node with fixed children."""
        return None

    def make_child(self, name: str, data: Any) -> None:
        raise NotImplementedError

    def sync(self) -> None:
        if self._synced == self.session.generation:
            return
        self._synced = self.session.generation
        try:
            wanted = self.fetch_children()
        except BaseException:
            self._synced = -1
            raise
        if wanted is None:
            return
        current = {child.name: child for child in self._children}
        for name, child in current.items():
            if name not in wanted:
                self.remove_child(child)
        for name, data in wanted.items():
            if name in current:
                current[name].data = data
            else:
                self.make_child(name, data)

    @property
    def children(self) -> Any:
        self.sync()
        return self._children

    def get_child(self, name: str) -> Any:
        self.sync()
        return super().get_child(name)

    # -- commands ----------------------------------------------------------------------------

    def _spec(self, command: str) -> tuple[Param, ...] | None:
        return spec_of(getattr(self, self.ui_command_method_prefix + command, None))

    def execute_command(
        self, command: str, pparams: Sequence[str] = (), kparams: Mapping[str, str] | None = None
    ) -> Any:
        kparams = dict(kparams or {})
        commands = self.list_commands()
        if command not in commands:
            close = difflib.get_close_matches(command, commands, n=2)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            raise ExecutionError(
                f"no command {command!r} in {self.path}{hint} "
                f"(commands here: {', '.join(sorted(commands))})"
            )
        spec = self._spec(command)
        if spec is None:
            return super().execute_command(command, list(pparams), kparams)
        method = self.get_command_method(command)
        return method(**bind(command, spec, pparams, kparams))

    def get_command_signature(self, command: str) -> Any:
        spec = self._spec(command)
        if spec is None:
            return super().get_command_signature(command)
        return [p.name for p in spec], False, False

    def get_command_syntax(self, command: str) -> Any:
        spec = self._spec(command)
        if spec is None:
            return super().get_command_syntax(command)
        words = [p.name if p.required else f"[{p.name}]" for p in spec]
        return " ".join([command, *words]), [], ""

    def get_completion_method(self, command: str) -> Any:
        spec = self._spec(command)
        if spec is None:
            return super().get_completion_method(command)
        by_name = {p.name: p for p in spec}

        def complete(parameters: dict[str, str], text: str, current_param: str) -> list[str]:
            p = by_name.get(current_param)
            if p is None:
                return []
            try:
                candidates = self.candidates(p.arg, parameters)
            except AdminError:
                return []
            matches = sorted({c for c in candidates if c.startswith(text)})
            return [matches[0] + " "] if len(matches) == 1 else matches

        return complete

    def candidates(self, arg: Arg, parameters: Mapping[str, str]) -> list[str]:
        """Values to offer on TAB for a parameter of kind ``arg``."""
        if arg is Arg.BOOL:
            return ["true", "false"]
        if arg is Arg.FORMAT:
            return ["json", "table"]
        if arg is Arg.VOLUME:
            return names_of(self.session.call("volumes.list"), "name")
        if arg is Arg.IMAGE:
            return names_of(self.session.call("images.list"), "name")
        if arg is Arg.TARGET:
            return names_of(self.session.call("targets.list"), "iqn")
        if arg is Arg.POLICY:
            return names_of(self.session.call("policies.list"), "name")
        if arg is Arg.POINT:
            volume = self.point_volume(parameters)
            if volume is None:
                return ["now"]
            return [*names_of(self.session.call("volume.markers", {"volume": volume}), "name"),
                    "now"]  # fmt: skip
        return []

    def point_volume(self, parameters: Mapping[str, str]) -> str | None:
        """The volume whose markers complete a POINT parameter."""
        return parameters.get("volume")

    # -- ls ----------------------------------------------------------------------------------

    def listing(self) -> str | None:
        """The table ``ls`` prints for this node, or None to print the tree."""
        return None

    def ui_command_ls(self, path: str | None = None, depth: str | None = None) -> None:
        """
        Lists a node: containers of volumes, images, markers, maps and policies print a
        table; other nodes print the tree below them (limited to depth levels).
        """
        try:
            target = self.get_node(path)
        except ValueError as e:
            raise ExecutionError(str(e)) from e
        text = target.listing() if isinstance(target, Node) else None
        if text is None:
            super().ui_command_ls(path, depth)
        else:
            self.say(text)


class ItemNode(Node):
    """A child standing for one object of a list answer; ``data`` is its entry."""

    def __init__(
        self, name: str, parent: Node, data: Any, describe: Callable[[Any], str] | None = None
    ) -> None:
        super().__init__(name, parent)
        self.data = data
        self._describe = describe

    def summary(self) -> tuple[str, bool | None]:
        return (self._describe(self.data) if self._describe else ""), None

    def fresh(self) -> Any:
        parent = cast(Node, self.parent)
        parent.sync()
        if self not in parent._children:
            raise AdminError(ErrorKind.NOT_FOUND, f"{self.path} no longer exists")
        return self.data


def _field(data: Any, key: str, default: Any = None) -> Any:
    return data.get(key, default) if isinstance(data, Mapping) else default


class RootNode(Node):
    def __init__(self, shell: CdpShell) -> None:
        super().__init__("/", None, shell)
        VolumesNode("volumes", self)
        ImagesNode("images", self)
        TargetsNode("targets", self)
        PoliciesNode("policies", self)

    def ui_command_status(self) -> None:
        """Shows the daemon's version, data directory, uptime, volumes, images and targets."""
        status = self.call("status")
        if not isinstance(status, Mapping):
            self.say(render(status))
            return
        uptime = int(status.get("uptime_s") or 0)
        self.say(
            f"cdpswitch {fmt(status.get('version'))}, data directory "
            f"{fmt(status.get('data_dir'))}, up "
            f"{uptime // 3600}h {uptime % 3600 // 60:02d}m {uptime % 60:02d}s"
        )
        for key, value in status.items():
            if key in ("version", "data_dir", "uptime_s"):
                continue
            if key == "volumes" and isinstance(value, Mapping) and value:
                self.say("volumes:")
                self.say(_volumes_status_table(value))
            elif isinstance(value, list) and any(isinstance(v, Mapping) for v in value):
                self.say(f"{key}:")
                self.say(render(value))
            else:
                self.say(f"{key}: {'none' if value in ([], {}) else fmt(value, key)}")

    @params(opt("path"))
    def ui_command_saveconfig(self, **args: Any) -> None:
        """
        Saves the daemon's configuration (volumes, images, targets) to path, by default
        saveconfig.yaml in the data directory (mode 0600: it holds CHAP secrets).
        """
        result = self.call("config.save", **args)
        self.say(f"Configuration saved to {_field(result, 'path', '?')}")

    @params(opt("path"))
    def ui_command_restoreconfig(self, **args: Any) -> None:
        """Restores the configuration saved by saveconfig (default: its default path)."""
        result = self.call("config.restore", **args)
        self.session.invalidate()
        self.say(f"Configuration restored from {_field(result, 'path', '?')}")


# -- volumes --------------------------------------------------------------------------------


class VolumesNode(Node):
    def fetch_children(self) -> Mapping[str, Any]:
        return {
            str(v["name"]): v
            for v in self.call("volumes.list")
            if isinstance(v, Mapping) and "name" in v
        }

    def make_child(self, name: str, data: Any) -> None:
        VolumeNode(name, self, data)

    def summary(self) -> tuple[str, bool | None]:
        return f"{len(self.children)} volume(s)", None

    def listing(self) -> str:
        volumes = self.call("volumes.list")
        if not volumes:
            return "no volumes"
        return dict_table(
            volumes, ("name", "size", "seq", "primary", "secondary", "policy", "exported")
        )

    @params(
        req("name"), req("size", Arg.SIZE), opt("primary"), opt("secondary"),
        opt("policy", Arg.POLICY),
    )  # fmt: skip
    def ui_command_create(self, **args: Any) -> None:
        """
        Creates a protected volume of size bytes (units: 64MiB, 1G = 1 GiB, 1TiB). The
        primary store (a file or block device) and the directory on the secondary store get
        defaults under the data directory unless given. policy names a retention policy.
        """
        status = self.call("volumes.create", **args)
        size = _field(status, "size")
        shown = human_size(size) if isinstance(size, int) else args["size"]
        self.say(f"Created volume {args['name']} ({shown})")

    @params(req("name", Arg.VOLUME), opt("force", Arg.BOOL))
    def ui_command_delete(self, **args: Any) -> None:
        """Removes a volume from the switch. Its primary and its history stay on disk
        (named in the answer: remove them by hand once sure). Refused while a LUN exports
        it or an image is made from it, unless force=true."""
        result = self.call("volumes.delete", **args)
        kept = _field(result, "kept_files", None)
        self.say(f"Deleted volume {_field(result, 'deleted', args['name'])}"
                 + (f"; its files are kept: {', '.join(kept)}" if kept else ""))


class VolumeNode(ItemNode):
    def __init__(self, name: str, parent: Node, data: Any) -> None:
        super().__init__(name, parent, data)
        MarkersNode("markers", self)
        MapsNode("maps", self)
        self._status: tuple[int, Any] | None = None

    def status(self) -> Any:
        """volume.status, fetched at most once per command line."""
        gen = self.session.generation
        if self._status is None or self._status[0] != gen:
            self._status = (gen, self.call("volume.status", volume=self.name))
        return self._status[1]

    def summary(self) -> tuple[str, bool | None]:
        size, seq = _field(self.data, "size"), _field(self.data, "seq")
        parts = [human_size(size) if isinstance(size, int) else "?", f"seq {fmt(seq)}"]
        exported = bool(_field(self.data, "exported", False))
        parts.append("exported" if exported else "not exported")
        return ", ".join(parts), True if exported else None

    def point_volume(self, parameters: Mapping[str, str]) -> str | None:
        return str(self.name)

    def _long(self, method: str, label: str, args: Mapping[str, Any]) -> Any:
        result = self.session.call_long(method, {"volume": self.name, **args}, label)
        self.session.invalidate()
        return result

    @params(opt("name"), opt("pinned", Arg.BOOL))
    def ui_command_mark(self, **args: Any) -> None:
        """
        Places a marker at the newest write: a named point in the volume's history (a name
        is generated if none is given). Retention policies never remove a pinned marker.
        """
        result = self.call("volume.mark", volume=self.name, **args)
        self.say(
            f"Marker {_field(result, 'name', '?')} at seq {fmt(_field(result, 'seq'))} "
            f"({fmt(_field(result, 'time'), 'time')})"
        )

    @params(opt("format", Arg.FORMAT))
    def ui_command_timeline(self, **args: Any) -> None:
        """Shows the volume's history: its markers and delta maps. format=json prints JSON."""
        form = args.get("format", "table")
        if form not in ("table", "json"):
            raise AdminError(ErrorKind.INVALID, f"format must be json or table, not {form!r}")
        result = self.call("volume.timeline", volume=self.name)
        if form == "json":
            self.say(json.dumps(result, indent=2))
            return
        baseline_time = _field(result, "baseline_time")
        self.say(
            f"baseline seq {fmt(_field(result, 'baseline_seq'))}"
            + (f" ({fmt(baseline_time, 'time')})" if baseline_time is not None else "")
            + f", newest seq {fmt(_field(result, 'newest_seq'))}"
        )
        self.say("markers:")
        self.say(_markers_table(_field(result, "markers", [])))
        self.say("maps:")
        self.say(_maps_table(_field(result, "maps", [])))
        images = _field(result, "images")
        if images:
            self.say("images:")
            self.say(render(images))

    @params(req("to", Arg.POINT), opt("force", Arg.BOOL))
    def ui_command_rewind(self, **args: Any) -> None:
        """
        Rewinds the volume in place to POINT (a marker name, seq:N, an ISO-8601 time, a
        relative time such as -15m). A marker is placed first so the rewind can be undone.
        Refused while hosts are logged in unless force=true. Ctrl-C cancels it safely.
        """
        result = self._long("volume.rewind", f"rewind {self.name}", args)
        self.say(
            f"Rewound {self.name} to {args['to']}: now at seq {fmt(_field(result, 'seq'))}, "
            f"{fmt(_field(result, 'blocks_restored'))} block(s) restored; "
            f"marker {fmt(_field(result, 'before_marker'))} holds the state before the rewind"
        )

    @params(req("name"), req("at", Arg.POINT), opt("primary"), opt("secondary"))
    def ui_command_clone(self, **args: Any) -> None:
        """Creates a new volume name equal to this one at POINT. Ctrl-C cancels it."""
        self._long("volume.clone", f"clone {self.name} -> {args['name']}", args)
        self.say(f"Created volume {args['name']} as {self.name} at {args['at']}")

    @params(
        req("from", Arg.POINT), req("to", Arg.POINT), req("lba", Arg.INT), req("count", Arg.INT),
        req("dest"),
    )  # fmt: skip
    def ui_command_playback(self, **args: Any) -> None:
        """
        Replays the writes made between from and to to the count blocks starting at lba
        onto dest (a file or block device). Ctrl-C cancels it.
        """
        result = self._long("volume.playback", f"playback {self.name} -> {args['dest']}", args)
        self.say(
            f"Played back {fmt(_field(result, 'blocks'))} block(s) of {self.name} "
            f"({args['from']} .. {args['to']}) onto {args['dest']}"
        )

    @params(req("from", Arg.POINT), req("to", Arg.POINT))
    def ui_command_merge(self, **args: Any) -> None:
        """Merges the delta maps between from and to into one coarser map."""
        result = self.call("volume.merge", volume=self.name, **args)
        self.session.invalidate()
        self.say(f"Merged the maps of {self.name} from {args['from']} to {args['to']}:")
        self.say(render(result))

    @params(req("before", Arg.POINT))
    def ui_command_fade(self, **args: Any) -> None:
        """
        Fades out history older than before: it is folded into the baseline and its log
        space reclaimed. Points before it can no longer be reached. Ctrl-C cancels it.
        """
        result = self._long("volume.fade", f"fade {self.name}", args)
        freed = _field(result, "freed_bytes")
        self.say(
            f"Faded out {self.name} before {args['before']}: "
            f"freed {human_size(freed) if isinstance(freed, int) else fmt(freed)}, "
            f"baseline now at seq {fmt(_field(result, 'baseline_seq'))}"
        )

    @params(opt("format", Arg.FORMAT))
    def ui_command_status(self, **args: Any) -> None:
        """Shows the volume's size, sequence numbers, history, space and I/O counters.
        format=json prints JSON."""
        form = args.get("format", "table")
        if form not in ("table", "json"):
            raise AdminError(ErrorKind.INVALID, f"format must be json or table, not {form!r}")
        result = self.call("volume.status", volume=self.name)
        if form == "json":
            self.say(json.dumps(result, indent=2))
            return
        policy = result.pop("policy", None) if isinstance(result, dict) else None
        self.say(render(result))
        if isinstance(policy, Mapping):
            self.say("\n".join(coverage_lines(policy)))


_STATUS_COLUMNS = (
    ("size", "SIZE"), ("seq", "SEQ"), ("markers", "MARKERS"), ("maps", "MAPS"),
    ("log_bytes", "LOG"), ("secondary_used", "SECONDARY USED"),
    ("secondary_free", "SECONDARY FREE"), ("sessions", "SESSIONS"), ("exported", "EXPORTED"),
)  # fmt: skip


def _volumes_status_table(volumes: Mapping[str, Any]) -> str:
    """One row per volume.status: the columns of an overview, lists shown as counts."""
    rows = []
    for name, st in volumes.items():
        row = [str(name)]
        for key, _ in _STATUS_COLUMNS:
            value = _field(st, key)
            row.append(str(len(value)) if isinstance(value, list) else fmt(value, key))
        rows.append(row)
    return table(["NAME", *(h for _, h in _STATUS_COLUMNS)], rows)


def _markers_table(markers: Any) -> str:
    return dict_table(markers, ("name", "seq", "time", "pinned")) if markers else "no markers"


def _maps_table(maps: Any) -> str:
    if not maps:
        return "no maps"
    return dict_table(maps, ("from_seq", "to_seq", "time", "entries", "granular", "bytes"))


def _count(value: Any) -> str:
    return str(len(value)) if isinstance(value, list) else fmt(value)


class MarkersNode(Node):
    def summary(self) -> tuple[str, bool | None]:
        try:
            return (
                f"{_count(_field(cast(VolumeNode, self.parent).status(), 'markers'))} marker(s)",
                None,
            )
        except AdminError:
            return "?", False

    def listing(self) -> str:
        return _markers_table(self.call("volume.markers", volume=self.parent.name))

    def point_volume(self, parameters: Mapping[str, str]) -> str | None:
        return str(self.parent.name)

    @params(req("name", Arg.POINT))
    def ui_command_pin(self, **args: Any) -> None:
        """Pins a marker: no policy merges it away or fades it out until it is unpinned."""
        result = self.call("volume.pin", volume=self.parent.name, **args)
        self.say(f"Pinned marker {_field(result, 'name', '?')}")

    @params(req("name", Arg.POINT))
    def ui_command_unpin(self, **args: Any) -> None:
        """Unpins a marker: its policy may merge it away or fade it out again."""
        result = self.call("volume.unpin", volume=self.parent.name, **args)
        self.say(f"Unpinned marker {_field(result, 'name', '?')}")


class MapsNode(Node):
    def summary(self) -> tuple[str, bool | None]:
        try:
            return f"{_count(_field(cast(VolumeNode, self.parent).status(), 'maps'))} map(s)", None
        except AdminError:
            return "?", False

    def listing(self) -> str:
        return _maps_table(self.call("volume.maps", volume=self.parent.name))


# -- images ---------------------------------------------------------------------------------


def _describe_image(image: Any) -> str:
    mode = "writable" if _field(image, "writable") else "read-only"
    return f"{fmt(_field(image, 'volume'))} at {fmt(_field(image, 'at'))}, {mode}"


class ImagesNode(Node):
    def fetch_children(self) -> Mapping[str, Any]:
        images = self.call("images.list")
        return {name: image for image in images for name in names_of([image], "name")}

    def make_child(self, name: str, data: Any) -> None:
        ItemNode(name, self, data, _describe_image)

    def summary(self) -> tuple[str, bool | None]:
        return f"{len(self.children)} image(s)", None

    def listing(self) -> str:
        images = self.call("images.list")
        return (
            dict_table(images, ("name", "volume", "at", "seq", "writable"))
            if images
            else ("no images")
        )

    @params(req("volume", Arg.VOLUME), req("at", Arg.POINT), opt("name"), opt("writable", Arg.BOOL))
    def ui_command_create(self, **args: Any) -> None:
        """
        Creates an image: the volume as it was at POINT, which a LUN can export. Images are
        read-only unless writable=true (writes to a writable image do not touch the volume).
        """
        image = self.call("images.create", **args)
        mode = "writable" if _field(image, "writable") else "read-only"
        self.say(
            f"Created image {_field(image, 'name', '?')} of {args['volume']} at {args['at']} "
            f"(seq {fmt(_field(image, 'seq'))}, {mode})"
        )

    @params(req("name", Arg.IMAGE))
    def ui_command_delete(self, **args: Any) -> None:
        """Deletes an image."""
        result = self.call("images.delete", **args)
        self.say(f"Deleted image {_field(result, 'deleted', args['name'])}")


# -- targets --------------------------------------------------------------------------------


def _tpg_tag(tpg: Any) -> int | None:
    tag = _field(tpg, "tag", _field(tpg, "tpg")) if isinstance(tpg, Mapping) else tpg
    return tag if isinstance(tag, int) and not isinstance(tag, bool) else None


def _portal_name(portal: Any) -> str | None:
    if isinstance(portal, str):
        return portal
    if isinstance(portal, Mapping):
        if isinstance(portal.get("portal"), str):
            return str(portal["portal"])
        if "ip" in portal:
            return f"{portal['ip']}:{portal.get('port', 3260)}"
    return None


class TargetsNode(Node):
    def fetch_children(self) -> Mapping[str, Any]:
        return {str(t["iqn"]): t for t in self.call("targets.list") if isinstance(t, Mapping)}

    def make_child(self, name: str, data: Any) -> None:
        TargetNode(name, self, data)

    def summary(self) -> tuple[str, bool | None]:
        return f"{len(self.children)} target(s)", None

    @params(opt("iqn"))
    def ui_command_create(self, **args: Any) -> None:
        """Creates an iSCSI target (an IQN is generated when none is given) with tpg1."""
        result = self.call("targets.create", **args)
        self.say(f"Created target {_field(result, 'iqn', '?')}")

    @params(req("iqn", Arg.TARGET))
    def ui_command_delete(self, **args: Any) -> None:
        """Deletes an iSCSI target with its TPGs, portals, LUNs and ACLs."""
        result = self.call("targets.delete", **args)
        self.say(f"Deleted target {_field(result, 'deleted', args['iqn'])}")


class TargetNode(ItemNode):
    def fetch_children(self) -> Mapping[str, Any]:
        tpgs = _field(self.fresh(), "tpgs", []) or []
        return {f"tpg{tag}": tpg for tpg in tpgs if (tag := _tpg_tag(tpg)) is not None}

    def make_child(self, name: str, data: Any) -> None:
        TPGNode(name, self, data)

    def summary(self) -> tuple[str, bool | None]:
        return f"{len(_field(self.data, 'tpgs', []) or [])} TPG(s)", None


_AUTH_PARAMS = (
    "userid", "password", "mutual_userid", "mutual_password",
    "discovery_userid", "discovery_password",
)  # fmt: skip


class TPGNode(ItemNode):
    def __init__(self, name: str, parent: Node, data: Any) -> None:
        super().__init__(name, parent, data)
        self.tag = int(name.removeprefix("tpg"))
        PortalsNode("portals", self)
        LUNsNode("luns", self)
        ACLsNode("acls", self)
        for param in _AUTH_PARAMS:
            self.define_config_group_param("auth", param, "string", f"CHAP {param}.")

    def address(self) -> dict[str, Any]:
        return {"iqn": self.parent.name, "tpg": self.tag}

    def summary(self) -> tuple[str, bool | None]:
        return f"auth {fmt(_field(self.data, 'auth', 'none'))}", None

    def ui_command_set(self, group: str | None = None, **parameter: str) -> None:
        """
        Sets configuration parameters of a group. As in targetcli, set auth sets the TPG's
        CHAP credentials in one call: set auth userid=U password=P [mutual_userid=
        mutual_password=] [discovery_userid= discovery_password=]. Empty values clear them.
        "set global ..." sets shell preferences.
        """
        if group != "auth" or not parameter:
            super().ui_command_set(group, **parameter)
            return
        unknown = sorted(set(parameter) - set(_AUTH_PARAMS))
        if unknown:
            raise AdminError(
                ErrorKind.INVALID,
                f"unknown auth parameter(s) {', '.join(unknown)} "
                f"(known: {', '.join(_AUTH_PARAMS)})",
            )
        result = self.call("tpg.auth_set", **self.address(), **parameter)
        self.session.invalidate()
        self.say(
            f"Authentication of {self.parent.name} {self.name} is now {fmt(_field(result, 'auth'))}"
        )

    def ui_getgroup_auth(self, param: str) -> Any:
        if "password" in param:
            return None  # never shown
        return _field(self.fresh(), param)

    def ui_setgroup_auth(self, param: str, value: str) -> None:
        self.call("tpg.auth_set", **self.address(), **{param: value})


class _TPGPart(Node):
    """portals, luns or acls of a TPG: children from the TPG's entry in targets.list."""

    key = ""
    noun = ""

    @property
    def tpg(self) -> TPGNode:
        return cast(TPGNode, self.parent)

    def entries(self) -> Any:
        return _field(self.tpg.fresh(), self.key, []) or []

    def summary(self) -> tuple[str, bool | None]:
        return f"{len(self.children)} {self.noun}(s)", None

    def make_child(self, name: str, data: Any) -> None:
        ItemNode(name, self, data, self.describe)

    @staticmethod
    def describe(entry: Any) -> str:
        return "iSCSI portal"


class PortalsNode(_TPGPart):
    key = "portals"
    noun = "portal"

    def fetch_children(self) -> Mapping[str, Any]:
        return {name: p for p in self.entries() if (name := _portal_name(p)) is not None}

    def candidates(self, arg: Arg, parameters: Mapping[str, str]) -> list[str]:
        if arg is Arg.PORTAL_IP:
            return [name.rpartition(":")[0] for name in self.fetch_children()]
        return super().candidates(arg, parameters)

    @params(req("ip"), opt("port", Arg.INT))
    def ui_command_create(self, **args: Any) -> None:
        """Creates a network portal (default port 3260) on which the TPG accepts logins."""
        result = self.call("tpg.portal_create", **self.tpg.address(), **args)
        self.say(f"Created portal {_field(result, 'portal', '?')}")

    @params(req("ip", Arg.PORTAL_IP), opt("port", Arg.INT))
    def ui_command_delete(self, **args: Any) -> None:
        """Deletes a network portal."""
        result = self.call("tpg.portal_delete", **self.tpg.address(), **args)
        self.say(f"Deleted portal {_field(result, 'deleted', args['ip'])}")


class LUNsNode(_TPGPart):
    key = "luns"
    noun = "LUN"

    def fetch_children(self) -> Mapping[str, Any]:
        entries = self.entries()
        if isinstance(entries, Mapping):  # {"0": {"volume": "vol0"}}: keys are LUN numbers
            entries = [
                {"lun": k, **(v if isinstance(v, Mapping) else {})} for k, v in entries.items()
            ]
        out: dict[str, Any] = {}
        for entry in entries:
            number = _field(entry, "lun", entry)
            if isinstance(number, str) and number.isdigit():
                number = int(number)
            if isinstance(number, int) and not isinstance(number, bool):
                out[f"lun{number}"] = entry
        return out

    @staticmethod
    def describe(entry: Any) -> str:
        for key in ("volume", "image"):
            if _field(entry, key) is not None:
                return f"{key} {_field(entry, key)}"
        return ""

    def candidates(self, arg: Arg, parameters: Mapping[str, str]) -> list[str]:
        if arg is Arg.LUN:
            return [name.removeprefix("lun") for name in self.fetch_children()]
        return super().candidates(arg, parameters)

    @params(opt("lun", Arg.LUN), opt("volume", Arg.VOLUME), opt("image", Arg.IMAGE))
    def ui_command_create(self, **args: Any) -> None:
        """Exports a volume or an image (give one of them) as LUN lun (default: the next free)."""
        result = self.call("tpg.lun_create", **self.tpg.address(), **args)
        self.say(f"Created LUN {fmt(_field(result, 'lun'))}")

    @params(req("lun", Arg.LUN))
    def ui_command_delete(self, **args: Any) -> None:
        """Removes a LUN (the volume or image itself stays)."""
        result = self.call("tpg.lun_delete", **self.tpg.address(), **args)
        self.say(f"Deleted LUN {fmt(_field(result, 'deleted', args['lun']))}")


class ACLsNode(_TPGPart):
    key = "acls"
    noun = "ACL"

    def fetch_children(self) -> Mapping[str, Any]:
        return {name: a for a in self.entries() for name in names_of([a], "initiator")}

    @staticmethod
    def describe(entry: Any) -> str:
        chap = _field(entry, "chap", _field(entry, "userid") is not None)
        return "chap" if chap else "no chap"

    def candidates(self, arg: Arg, parameters: Mapping[str, str]) -> list[str]:
        if arg is Arg.INITIATOR:
            return list(self.fetch_children())
        return super().candidates(arg, parameters)

    @params(
        req("initiator"), opt("userid"), opt("password"), opt("mutual_userid"),
        opt("mutual_password"),
    )  # fmt: skip
    def ui_command_create(self, **args: Any) -> None:
        """
        Allows an initiator (by IQN) to log in, with its own CHAP credentials if given
        (userid and password; mutual_userid and mutual_password for mutual CHAP).
        """
        result = self.call("tpg.acl_create", **self.tpg.address(), **args)
        self.say(f"Created ACL for {_field(result, 'initiator', args['initiator'])}")

    @params(req("initiator", Arg.INITIATOR))
    def ui_command_delete(self, **args: Any) -> None:
        """Removes an initiator's ACL."""
        result = self.call("tpg.acl_delete", **self.tpg.address(), **args)
        self.say(f"Deleted ACL for {_field(result, 'deleted', args['initiator'])}")


# -- policies -------------------------------------------------------------------------------


class PoliciesNode(Node):
    def fetch_children(self) -> Mapping[str, Any]:
        return {name: name for name in names_of(self.call("policies.list"), "name")}

    def summary(self) -> tuple[str, bool | None]:
        return f"{len(self.children)} policy(ies)", None

    def make_child(self, name: str, data: Any) -> None:
        ItemNode(name, self, data)

    def listing(self) -> str:
        return policies_table(self.call("policies.list"))

    @params(opt("name", Arg.POLICY))
    def ui_command_show(self, **args: Any) -> None:
        """Shows a retention policy (all of them when no name is given)."""
        self.say(policy_blocks(self.call("policies.show", **args)))

    def ui_command_reload(self) -> None:
        """Reloads the retention policies from their YAML files."""
        result = self.call("policies.reload")
        self.session.invalidate()
        self.say(reload_text(result))

    @params(opt("volume", Arg.VOLUME))
    def ui_command_run(self, **args: Any) -> None:
        """Runs the policy scheduler now (for one volume with volume=), as its timer
        does every few seconds, and prints what it did."""
        self.say(render(self.call("policies.run", **args), empty="nothing to do"))


# --- the shell -----------------------------------------------------------------------------


@contextlib.contextmanager
def _configshell_quiet() -> Iterator[None]:
    """Hide configshell's use of pyparsing APIs that pyparsing 3 deprecates (not ours to fix).

    Only DeprecationWarnings attributed to configshell's own modules are hidden, so a test
    run with warnings as errors still sees every other warning.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"configshell_fb\.")
        yield


class CdpShell(ConfigShell):  # type: ignore[misc]
    """configshell's ConfigShell with the cdpswitch tree, errors printed as ``Error: ...``."""

    def __init__(self, session: Session, preferences_dir: str | None = None) -> None:
        with _configshell_quiet():
            super().__init__(preferences_dir)
        self.session = session
        # configshell would log every command line (CHAP secrets included) to a file.
        self.prefs["logfile"] = None
        # Console is shared state in configshell; point it at this session's streams.
        self.con = Console(stdin=sys.stdin, stdout=session.out, stderr=session.err)
        RootNode(self)

    @property
    def root(self) -> Node:
        return cast(Node, self._root_node)

    def run_cmdline(self, cmdline: str) -> None:
        """Run one command line (the interactive loop calls this); errors are printed."""
        self.run_line(cmdline)

    def run_line(self, cmdline: str) -> bool:
        self.session.invalidate()
        return self._guard(lambda: self._run_line(cmdline))

    def _run_line(self, cmdline: str) -> None:
        if cmdline.strip():
            # configshell's parser silently drops what it cannot parse ("a b" in quotes...).
            self._parser.parse_string(cmdline, parse_all=True)
        with _configshell_quiet():
            super().run_cmdline(cmdline)

    def run_words(self, words: Sequence[str]) -> bool:
        """Run one command given as words (``/volumes create name=v size=1G``)."""
        self.session.invalidate()
        path, command, rest = split_words(words)
        pparams: list[str] = []
        kparams: dict[str, str] = {}
        for word in rest:
            key, eq, value = word.partition("=")
            if not eq:
                pparams.append(word)
            elif key in kparams:
                self.session.error(f"parameter {key!r} given twice")
                return False
            else:
                kparams[key] = value
        return self._guard(lambda: self._execute_command(path, command, pparams, kparams))

    def _guard(self, run: Callable[[], Any]) -> bool:
        try:
            run()
        except AdminError as e:
            self.session.error(e.message)
        except (ExecutionError, ValueError) as e:
            self.session.error(str(e))
        except ParseBaseException as e:
            self.session.error(f"cannot parse the command line at column {e.col}: {e.line!r}")
        except KeyboardInterrupt:
            self.session.error("interrupted")
        except BrokenPipeError:
            raise  # the reader went away (`| head`): cli.main ends quietly
        except Exception as e:  # a bug in the shell, or an answer of an unexpected shape
            self.session.error(f"{type(e).__name__}: {e} (a bug in the shell)")
        else:
            return True
        return False

    def _complete(self, text: str, state: int) -> Any:
        if state == 0:
            self.session.invalidate()
        try:
            with _configshell_quiet():
                return super()._complete(text, state)
        except (AdminError, ValueError):
            return None

    def run_interactive(self) -> None:
        with _configshell_quiet():
            super().run_interactive()


def split_words(words: Sequence[str]) -> tuple[str, str, list[str]]:
    """(path, command, parameters) of a one-shot command; the path defaults to ``/``."""
    if not words:
        return "/", "ls", []
    first = words[0]
    is_path = first.startswith(("/", ".", "@")) or "/" in first or first.endswith("*")
    path, rest = (first, list(words[1:])) if is_path else ("/", list(words))
    if not rest:
        return path, "ls", []
    return path, rest[0], rest[1:]


def _history_dir(data_dir: Path) -> str | None:
    """data_dir/shell (mode 0700: the history may hold CHAP secrets), if data_dir exists."""
    if not data_dir.is_dir():
        return None
    path = data_dir / HISTORY_DIR
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError:
        return None
    return str(path)


def main(
    words: Sequence[str],
    data_dir: Path,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """``cdpswitch shell``: run one command (exit 0 or 1), or an interactive shell."""
    out = stdout if stdout is not None else sys.stdout
    err = stderr if stderr is not None else sys.stderr
    with AdminClient(socket_path(data_dir)) as client:
        session = Session(client, out, err)
        if words:
            return 0 if CdpShell(session).run_words(words) else 1
        try:
            status = client.call("status")
        except AdminError as e:
            session.error(e.message)
            return 1
        shell = CdpShell(session, _history_dir(data_dir))
        session.print(
            f"cdpswitch shell: daemon {_field(status, 'version', '?')} on {client.path}. "
            "Type 'help' for help, 'exit' or Ctrl-D to leave."
        )
        shell.run_interactive()
    return 0
