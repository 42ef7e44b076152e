"""``cdpswitch shell`` against the real daemon (``cdpswitch serve`` as a subprocess).

The shell runs in this process (``switch.shell.main`` with string streams) for the
command tests, so they are quick and can look at both streams; the interactive tests
run it as a program, one of them on a pseudo-terminal so readline's TAB completion is
the real one. Volumes get history from markers and rewinds only (no host writes):
tests/switch/test_daemon_e2e.py drives the same daemon with real iSCSI clients.
"""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from switch_daemon import Daemon, free_port

from switch.admin_client import AdminClient, socket_path
from switch.admin_protocol import AdminError
from switch.shell import CdpShell, Session, bind, human_size, main, opt, req, split_words

ROOT = Path(__file__).resolve().parents[2]
SECRET = "chap-secret-1234"
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A real daemon with no volumes and no targets; its data directory is daemon.data."""
    config = tmp_path / "switch.yaml"
    config.write_text("volumes: {}\n")
    d = Daemon(tmp_path / "data", free_port(), config)
    d.start()
    yield d
    if d.proc is not None and d.proc.poll() is None:
        assert d.stop() == 0, d.log()


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
def vol0(daemon: Daemon) -> Path:
    """The daemon's data directory, with vol0 (64 MiB) holding markers a and b (pinned)."""
    d = daemon.data
    ok(d, "/volumes", "create", "name=vol0", "size=64MiB")
    ok(d, "/volumes/vol0", "mark", "name=a")
    ok(d, "/volumes/vol0", "mark", "name=b", "pinned=yes")
    return d


# --- commands ------------------------------------------------------------------------------


def test_volumes_create_ls_delete(daemon: Daemon) -> None:
    d = daemon.data
    assert ok(d, "/volumes", "create", "name=vol0", "size=64MiB") == (
        "Created volume vol0 (64 MiB)\n"
    )
    ok(d, "/volumes", "create", "vol1", "1M", "policy=default")  # positional works too
    lines = ok(d, "/volumes", "ls").splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "SEQ", "PRIMARY", "SECONDARY", "POLICY", "EXPORTED"]
    assert lines[1].split()[:4] == ["vol0", "64", "MiB", "0"]
    assert lines[1].split()[4] == str(d / "volumes" / "vol0" / "primary.img")
    assert lines[2].split()[:3] == ["vol1", "1", "MiB"] and lines[2].split()[-2:] == [
        "default", "no",
    ]  # fmt: skip
    assert ok(d, "ls", "/volumes") == ok(d, "/volumes", "ls")
    home = d / "volumes" / "vol1"
    assert ok(d, "/volumes", "delete", "name=vol1", "force=false") == (
        f"Deleted volume vol1; its files are kept: {home / 'primary.img'}, {home / 'cdp'}\n"
    )
    assert "vol1" not in ok(d, "/volumes", "ls")
    assert (home / "primary.img").exists()  # removing the entry never destroys data


def test_volume_commands(vol0: Path, tmp_path: Path) -> None:
    d = vol0
    assert re.fullmatch(rf"Marker m3 at seq 3 \({TIME}\)\n", ok(d, "/volumes/vol0", "mark"))
    markers = ok(d, "/volumes/vol0/markers", "ls").splitlines()
    assert markers[0].split() == ["NAME", "SEQ", "TIME", "PINNED"]
    assert [m.split()[:2] for m in markers[1:]] == [["a", "1"], ["b", "2"], ["m3", "3"]]
    assert [m.split()[-1] for m in markers[1:]] == ["no", "yes", "no"]
    maps = ok(d, "/volumes/vol0/maps", "ls").splitlines()
    assert maps[0].split() == ["FROM_SEQ", "TO_SEQ", "TIME", "ENTRIES", "GRANULAR", "BYTES",
                               "CLASS"]  # fmt: skip
    assert [m.split()[:2] for m in maps[1:]] == [["0", "1"], ["1", "2"], ["2", "3"]]

    timeline = ok(d, "/volumes/vol0", "timeline")
    assert re.match(rf"baseline seq 0 \({TIME}\), newest seq 3\nmarkers:\nNAME", timeline)
    assert json.loads(ok(d, "/volumes/vol0", "timeline", "format=json"))["newest_seq"] == 3

    status = ok(d, "/volumes/vol0", "status")
    assert re.search(r"^secondary_free +[0-9.]+ [KMGTP]iB$", status, re.M), status
    assert re.search(rf"^oldest_point +seq=0, time={TIME}$", status, re.M), status
    assert re.search(r"^policy +default: ok, covers \S+ of \S+ promised$", status, re.M)
    assert re.search(r"^  recent +every write ", status, re.M), status
    assert "{" not in status  # nested answers are laid out, not dumped as JSON
    assert json.loads(ok(d, "/volumes/vol0", "status", "format=json"))["seq"] == 3

    code, out, err = shell(d, "/volumes/vol0", "rewind", "to=a")
    assert code == 0, err
    assert out == (
        "Rewound vol0 to a: now at seq 1, 0 block(s) restored; "
        "marker before-rewind-1 holds the state before the rewind\n"
    )
    assert all(re.fullmatch(r"rewind vol0: \d+/\d+ \(\d+%\)", line)
               for line in err.splitlines()), err  # not a terminal: plain progress lines
    assert "before-rewind-1" in ok(d, "/volumes/vol0/markers", "ls")

    dest = tmp_path / "dest.img"
    dest.write_bytes(b"\xff" * 8192)
    code, out, _ = shell(d, "/volumes/vol0", "playback", "from=a", "to=b", "lba=0", "count=8",
                         f"dest={dest}")  # fmt: skip
    # No host wrote between a and b: nothing to play back, and dest is left as it was.
    assert (code, out) == (0, f"Played back 0 block(s) of vol0 (a .. b) onto {dest}\n")
    assert dest.read_bytes() == b"\xff" * 8192
    merged = ok(d, "/volumes/vol0", "merge", "from=m3", "to=after-rewind-1").splitlines()
    assert merged[:3] == ["Merged the maps of vol0 from m3 to after-rewind-1:", "from_seq  3",
                          "to_seq    5"], merged
    assert [m.split()[:2] for m in ok(d, "/volumes/vol0/maps", "ls").splitlines()[1:]] == [
        ["0", "1"], ["1", "2"], ["2", "3"], ["3", "5"],
    ]  # fmt: skip
    assert fails(d, "/volumes/vol0", "merge", "from=a", "to=m3") == (
        "Error: pinned markers inside the range: b\n"
    )
    code, out, _ = shell(d, "/volumes/vol0", "fade", "before=a")
    assert code == 0 and re.fullmatch(
        r"Faded out vol0 before a: freed \d+ [KMG]?i?B, baseline now at seq 1\n", out), out
    code, out, _ = shell(d, "/volumes/vol0", "clone", "name=copy", "at=b")
    assert (code, out) == (0, "Created volume copy as vol0 at b\n")
    assert "copy" in ok(d, "/volumes", "ls")


def test_images_targets_and_tpgs(vol0: Path) -> None:
    d = vol0
    port = free_port()
    assert ok(d, "/images", "create", "volume=vol0", "at=a", "name=img") == (
        "Created image img of vol0 at a (seq 1, read-only)\n"
    )
    assert ok(d, "/images", "ls").splitlines()[1].split() == ["img", "vol0", "a", "1", "no", "-"]
    assert ok(d, "/targets", "create", "iqn=iqn.2024-05.test:t1") == (
        "Created target iqn.2024-05.test:t1\n"
    )
    tpg = "/targets/iqn.2024-05.test:t1/tpg1"
    assert ok(d, f"{tpg}/portals", "create", "ip=127.0.0.1", f"port={port}") == (
        f"Created portal 127.0.0.1:{port}\n"
    )
    assert ok(d, f"{tpg}/luns", "create", "volume=vol0") == "Created LUN 0\n"
    assert ok(d, f"{tpg}/luns", "create", "lun=5", "image=img") == "Created LUN 5\n"
    out = ok(d, f"{tpg}/acls", "create", "initiator=iqn.1994-05.com.redhat:h1", "userid=u",
             f"password={SECRET}")  # fmt: skip
    assert out == "Created ACL for iqn.1994-05.com.redhat:h1\n"
    assert ok(d, tpg, "set", "auth", "userid=tu", f"password={SECRET}") == (
        "Authentication of iqn.2024-05.test:t1 tpg1 is now chap\n"
    )
    tree = ok(d, "ls", "/targets")
    for shown in ("tpg1", "portals", f"127.0.0.1:{port}", "lun0", "volume vol0", "lun5",
                  "image img", "iqn.1994-05.com.redhat:h1", "[chap]", "auth chap"):  # fmt: skip
        assert shown in tree, (shown, tree)
    assert SECRET not in tree
    assert "exported" in ok(d, "ls", "/volumes/vol0")
    assert fails(d, "/volumes", "delete", "name=vol0") == (
        "Error: volume 'vol0' is in use (iqn.2024-05.test:t1/tpg1/lun0, image img); delete"
        " those first or use force=true\n"
    )
    assert ok(d, f"{tpg}/luns", "delete", "lun=5") == "Deleted LUN 5\n"
    assert ok(d, f"{tpg}/portals", "delete", "ip=127.0.0.1", f"port={port}") == (
        f"Deleted portal 127.0.0.1:{port}\n"
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
    assert re.fullmatch(rf"cdpswitch \S+, data directory {re.escape(str(d))}, up 0h \d\dm \d\ds",
                        status[0]), status[0]
    assert status[1] == "volumes:"
    assert status[2].split()[:4] == ["NAME", "SIZE", "SEQ", "MARKERS"]
    assert status[3].split()[:5] == ["vol0", "64", "MiB", "2", "2"]
    assert "targets: none" in status and "portals: none" in status
    saved = d / "saveconfig.yaml"
    assert ok(d, "/", "saveconfig") == f"Configuration saved to {saved}\n"
    assert "vol0" in saved.read_text()
    assert ok(d, "/", "restoreconfig", f"path={saved}") == (
        f"Configuration restored from {saved}\n"
    )
    listing = ok(d, "/policies", "ls").splitlines()
    assert listing[0].split() == ["NAME", "CLASSES", "(KEEP", "FOR)", "OLDER", "VOLUMES"]
    assert listing[1].startswith("default  recent (every write for 2h), quarter-hourly")
    assert listing[1].endswith("fade   vol0")
    shown = ok(d, "/policies", "show")
    assert shown.startswith("built-in policies (no policy file configured)\n\ndefault: every")
    assert "  hourly          1h           7d\n" in shown and "  volumes: vol0\n" in shown
    assert ok(d, "/policies", "show", "name=default") == shown.split("\n\n", 1)[1]
    assert ok(d, "/policies", "reload") == (
        "Policies reloaded (no policy file configured: the built-in policies): nothing changed\n"
    )
    assert fails(d, "/policies", "show", "name=x") == (
        "Error: no policy named 'x' (policies: default)\n"
    )


def test_tree_and_help(vol0: Path) -> None:
    tree = ok(vol0, "ls")
    for node in ("volumes", "vol0", "64 MiB, seq 2, not exported", "markers", "2 marker(s)",
                 "maps", "images", "targets", "policies", "default"):  # fmt: skip
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
        (["/volumes/vol0", "rewind", "to=nowhere"], "no marker named 'nowhere' (markers: a, b)"),
        (["/volumes", "create", "name=vol0", "size=1G"], "a volume named 'vol0' already exists"),
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
    out = ok(vol0, f"{tpg}/acls", "create", "initiator=iqn.2024-05.test:h", "userid=u",
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
    assert done.stderr == "Error: no marker named 'nowhere' (markers: a, b)\n"
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
    assert re.match(r"cdpswitch shell: daemon \S+ on .*admin\.sock\. Type 'help'", done.stdout)
    assert "Marker c at seq 3 (" in done.stdout
    assert "/volumes/vol0> " in done.stdout  # the prompt shows where we are
    assert "Error: no command 'bogus' in /volumes/vol0" in done.stderr
    history = vol0 / "shell"
    assert stat.S_IMODE(history.stat().st_mode) == 0o700  # the history may hold secrets


class Terminal:
    """``cdpswitch shell`` on a pseudo-terminal: real readline, real TAB completion.

    configshell asks the terminal where the cursor is (ESC [6n) when it lists several
    completions; this answers each query as a terminal would. (Listing several is held
    by test_tab_completion_through_configshell: the answer races readline's input here.)"""

    def __init__(self, data_dir: Path) -> None:
        master, slave = pty.openpty()
        self.master = master
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "switch.cli", "shell", "--data-dir", str(data_dir)],
            cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
            env={**os.environ, "TERM": "xterm"},
        )  # fmt: skip
        os.close(slave)

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def expect(self, token: str, timeout: float = 30.0) -> str:
        """Everything printed until ``token`` (which must come)."""
        seen = b""
        deadline = time.monotonic() + timeout
        while token.encode() not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{token!r} never came; the terminal shows {seen!r}"
            ready, _, _ = select.select([self.master], [], [], min(left, 0.2))
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:  # the shell exited
                chunk = b""
            assert chunk, f"{token!r} never came before the shell exited: {seen!r}"
            if b"\x1b[6n" in chunk:
                os.write(self.master, b"\x1b[1;1R")
                chunk = chunk.replace(b"\x1b[6n", b"")
            seen += chunk
        return seen.decode(errors="replace")

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            os.close(self.master)


def test_interactive_shell_on_a_terminal_completes_with_tab(vol0: Path) -> None:
    term = Terminal(vol0)
    try:
        assert "Type 'help' for help" in term.expect("/> ")
        term.send("cd /volumes/vo\t\n")  # a path completes from the daemon's volumes
        term.expect("/volumes/vol0> ")
        term.send("mark na\t")  # a parameter name completes, '=' and all
        term.expect("mark name=")
        term.send("c1\n")
        assert re.search(rf"Marker c1 at seq 3 \({TIME}\)", term.expect("/volumes/vol0> "))
        term.send("rewind to=c\t")  # a POINT completes from the volume's markers
        term.expect("rewind to=c1 ")
        term.send("\x15help rewind\n")  # Ctrl-U drops the line typed so far: no rewind
        term.expect("Ctrl-C cancels it safely")
        term.expect("/volumes/vol0> ")
        term.send("exit\n")
    finally:
        code = term.close()
    assert code == 0
    markers = ok(vol0, "/volumes/vol0/markers", "ls")
    assert "c1" in markers and "before-rewind" not in markers  # the rewind was never run


def test_output_into_a_closed_pipe_ends_quietly(vol0: Path) -> None:
    """`cdpswitch shell ... | head -1`: once the reader is gone the shell stops with the
    status of a tool killed by SIGPIPE and no message (not "a bug in the shell")."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first line is written
    try:
        done = subprocess.run(
            [sys.executable, "-m", "switch.cli", "shell", "--data-dir", str(vol0),
             "/volumes/vol0", "timeline"],
            cwd=ROOT, stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
            check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")
