"""switch.config: the YAML configuration, its error messages, and saveconfig/restoreconfig."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from policies import yamlpos
from switch.config import (
    AclConfig,
    ChapConfig,
    ChapPair,
    ConfigError,
    ImageConfig,
    LunConfig,
    MetricsConfig,
    SwitchConfig,
    TargetConfig,
    TpgConfig,
    VolumeConfig,
    dump_config,
    load_config,
    parse_config,
    parse_size,
    save_config,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "switch" / "examples" / "switch.yaml"
SECRET = "Zq7-very-secret-pw"


def yml(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


def issues_of(text: str, filename: str = "switch.yaml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(yml(text), filename)
    return str(info.value).splitlines()


# --- good input -------------------------------------------------------------------------

FULL = """
    volumes:
      vol0:
        size: 64MiB
        primary: vol0.img
        secondary: vol0.cdp
        policy: daily
      big:
        size: 1T
        block_size: 4096
        thin: false
    images:
      vol0-then:
        volume: vol0
        at: 2026-11-02T18:00:00
    targets:
      - iqn: iqn.2026-11.org.cdpswitch:vol0
        alias: volume zero
        tpgs:
          - tag: 7
            portals: [10.0.0.1, "[fe80:0::1]:3261"]
            luns:
              0: {volume: vol0}
              "5": {image: vol0-then}
            auth: {userid: u, password: pw-0123456789}
            acls:
              - initiator: eui.02004567A425678D
              - initiator: naa.52004567ba64678d
                userid: host
                password: host-pw-0123
                mutual_userid: tgt
                mutual_password: tgt-pw-01234
      - iqn: iqn.2026-11.org.cdpswitch:big
    discovery_auth: {userid: d, password: d-pw-0123456}
    metrics: {listen: "localhost:9470"}
    policies_file: policies.yaml
"""


def test_full_example_parses_to_the_expected_model() -> None:
    cfg = parse_config(yml(FULL), "switch.yaml")
    assert cfg.volumes["vol0"] == VolumeConfig(
        size=64 << 20, primary="vol0.img", secondary="vol0.cdp", policy="daily")
    assert cfg.volumes["big"].size == 1 << 40
    assert cfg.volumes["big"].block_size == 4096
    assert cfg.volumes["big"].thin is False
    # A timestamp stays the text that was written: it is a POINT, parsed by the engine.
    assert cfg.images == {"vol0-then": ImageConfig(volume="vol0", at="2026-11-02T18:00:00")}
    tgt = cfg.targets[0]
    assert (tgt.iqn, tgt.alias) == ("iqn.2026-11.org.cdpswitch:vol0", "volume zero")
    tpg = tgt.tpgs[0]
    assert tpg.tag == 7
    assert tpg.portals == ["10.0.0.1:3260", "[fe80::1]:3261"]
    assert tpg.luns == {0: LunConfig(volume="vol0"), 5: LunConfig(image="vol0-then")}
    assert tpg.auth is not None
    assert tpg.auth.password.get_secret_value() == "pw-0123456789"
    assert tpg.acls[0] == AclConfig(initiator="eui.02004567A425678D")
    assert tpg.acls[1].mutual_userid == "tgt"
    # Defaults: one TPG with tag 1 on the loopback portal, no LUNs, anyone may log in.
    assert cfg.targets[1].tpgs == [TpgConfig(tag=1, portals=["127.0.0.1:3260"])]
    assert cfg.targets[1].tpgs[0].acls == []
    assert cfg.discovery_auth is not None
    assert isinstance(cfg.discovery_auth, ChapConfig)
    assert cfg.metrics == MetricsConfig(listen="localhost:9470")
    assert cfg.policies_file == "policies.yaml"


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n", "null\n"])
def test_an_empty_document_is_an_empty_config(text: str) -> None:
    assert parse_config(text, "f") == SwitchConfig()


def test_empty_file_loads_as_empty_config(tmp_path: Path) -> None:
    path = tmp_path / "switch.yaml"
    path.write_bytes(b"")
    assert load_config(path) == SwitchConfig()


def _fields_used(value: object, used: dict[type, set[str]]) -> None:
    """Record, per model class, the keys given anywhere under ``value``."""
    if isinstance(value, BaseModel):
        used.setdefault(type(value), set()).update(value.model_fields_set)
        value = list(value.__dict__.values())
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        for item in value:
            _fields_used(item, used)


def test_the_shipped_example_loads_and_shows_every_key() -> None:
    cfg = load_config(EXAMPLE)
    used: dict[type, set[str]] = {}
    _fields_used(cfg, used)
    models = (SwitchConfig, VolumeConfig, ImageConfig, TargetConfig, TpgConfig, LunConfig,
              AclConfig, ChapPair, ChapConfig, MetricsConfig)
    for model in models:
        assert used.get(model) == set(model.model_fields), model.__name__


# --- one clear error per kind of bad input ----------------------------------------------

BAD: list[tuple[str, str, str]] = [
    # (yaml, expected "LINE: path: message" fragment, test id)
    ("volumes:\n  v:\n    size: 1G\n    thin: maybe\n",
     "4: volumes.v.thin: expected true or false, got a string", "wrong-type"),
    ("targets:\n  - iqn: iqn.2026-11.org.a\n    tpgs:\n      - tag: '5'\n",
     "4: targets[0].tpgs[0].tag: expected an integer, got a string", "wrong-type-strict-int"),
    ("volumes: [a, b]\n", "1: volumes: expected a mapping, got a list", "wrong-type-mapping"),
    ("volumes:\n  v:\n    size: 1G\n    sise: 2G\n",
     "4: volumes.v.sise: unknown key; expected one of: size, block_size,", "unknown-key"),
    ("metrics:\n  listen: 1.2.3.4:80\nbogus: 1\n", "3: bogus: unknown key; expected one of: "
     "version, volumes,", "unknown-top-level-key"),
    ("volumes:\n  v:\n    size: -64M\n", "3: volumes.v.size: size '-64M' is negative",
     "negative-size"),
    ("volumes:\n  v:\n    size: 64X\n", "3: volumes.v.size: size '64X' is not understood",
     "unknown-size-unit"),
    ("volumes:\n  v:\n    size: 0\n", "3: volumes.v.size: a volume size must be greater than 0",
     "zero-size"),
    ("volumes:\n  v:\n    size: 1000\n",
     "2: volumes.v: size 1000 is not a multiple of block_size 512", "size-not-in-blocks"),
    ("volumes:\n  v:\n    primary: a.img\n", "2: volumes.v.size: required key is missing",
     "missing-key"),
    ("targets:\n  - iqn: iqn.2026-13.org.a\n",
     "2: targets[0].iqn: 'iqn.2026-13.org.a' is not an iSCSI name", "bad-iqn-month"),
    ("targets:\n  - iqn: iqn.2026-11.Org.A:x\n",
     "2: targets[0].iqn: 'iqn.2026-11.Org.A:x': iSCSI names are written in lowercase",
     "bad-iqn-case"),
    ("targets:\n  - iqn: eui.1234\n", "2: targets[0].iqn: 'eui.1234' is not an iSCSI name",
     "bad-eui"),
    ("targets:\n  - iqn: iqn.2026-11.org.a\n    tpgs:\n      - portals:\n"
     "          - 10.0.0.1:99999\n",
     "5: targets[0].tpgs[0].portals[0]: '10.0.0.1:99999': the port must be", "bad-portal-port"),
    ("targets:\n  - iqn: iqn.2026-11.org.a\n    tpgs:\n      - portals: [example.com]\n",
     "4: targets[0].tpgs[0].portals[0]: 'example.com': a portal is an IP address", "bad-portal"),
    ("targets:\n  - iqn: iqn.2026-11.org.a\n    tpgs:\n      - portals: ['::1']\n",
     "4: targets[0].tpgs[0].portals[0]: '::1': write an IPv6 address in brackets",
     "bad-portal-ipv6"),
    ("volumes:\n  v: {size: 1G}\n  w: {size: 1G}\n  v: {size: 2G}\n",
     "4: volumes.v: duplicate key (first at line 2)", "duplicate-yaml-key"),
    ("volumes:\n  v: {size: 1G}\ntargets:\n  - iqn: iqn.2026-11.org.a\n    tpgs:\n"
     "      - luns:\n          3:\n            volume: vol9\n",
     "8: targets[0].tpgs[0].luns.3.volume: no volume named 'vol9'", "dangling-lun-volume"),
    ("targets:\n  - iqn: iqn.2026-11.org.a\n    tpgs:\n      - luns:\n          1: {image: x}\n",
     "5: targets[0].tpgs[0].luns.1.image: no image named 'x'", "dangling-lun-image"),
    ("targets:\n  - iqn: iqn.2026-11.org.a\n    tpgs:\n      - luns:\n          1: {}\n",
     "5: targets[0].tpgs[0].luns.1: a LUN names exactly one of 'volume' or 'image'",
     "lun-names-nothing"),
    ("targets:\n  - iqn: iqn.2026-11.org.a\n    tpgs:\n      - luns:\n"
     "          16384: {volume: v}\n",
     "5: targets[0].tpgs[0].luns.16384: LUN 16384 is out of range: LUN numbers are 0 to 16383",
     "lun-too-big"),
    ("volumes: {v: {size: 1G}}\ntargets:\n  - iqn: iqn.2026-11.org.a\n    tpgs:\n"
     "      - luns:\n          1: {volume: v}\n          '1': {volume: v}\n",
     "5: targets[0].tpgs[0].luns: LUN 1 is given twice (as 1 and '1')", "lun-twice"),
    ("images:\n  img:\n    volume: nope\n    at: now\n",
     "3: images.img.volume: no volume named 'nope'", "image-of-unknown-volume"),
    ("images:\n  img:\n    volume: v\n    at: -5x\n",
     "4: images.img.at: bad relative POINT '-5x'", "image-bad-point"),
    ("volumes: {v: {size: 1G}}\nimages:\n  v: {volume: v, at: now}\n",
     "3: images.v: 'v' is also the name of a volume", "name-is-volume-and-image"),
    ("volumes:\n  .hidden: {size: 1G}\n", "2: volumes..hidden: bad name '.hidden'", "bad-name"),
    ("targets:\n  - iqn: iqn.2026-11.org.a\n  - iqn: iqn.2026-11.org.b\n"
     "  - iqn: iqn.2026-11.org.a\n",
     "4: targets[2].iqn: target iqn.2026-11.org.a is defined twice (first at line 2)",
     "duplicate-iqn"),
    ("targets:\n  - iqn: iqn.2026-11.org.a\n    tpgs:\n      - tag: 2\n      - tag: 2\n",
     "5: targets[0].tpgs[1].tag: TPG tag 2 is used twice (first at line 4)", "duplicate-tag"),
    ("targets:\n  - iqn: iqn.2026-11.org.a\n    tpgs:\n      - portals:\n"
     "          - 0.0.0.0\n          - 0.0.0.0:3260\n",
     "6: targets[0].tpgs[0].portals[1]: portal 0.0.0.0:3260 is listed twice (first at line 5)",
     "duplicate-portal"),
    ("targets:\n  - iqn: iqn.2026-11.org.a\n    tpgs:\n      - acls:\n"
     "          - initiator: iqn.2026-11.org.h\n          - initiator: iqn.2026-11.org.h\n",
     "6: targets[0].tpgs[0].acls[1].initiator: initiator iqn.2026-11.org.h is listed twice",
     "duplicate-initiator"),
    ("volumes:\n  a: {size: 1G, primary: /x/a.img}\n  b: {size: 1G, primary: /x//a.img}\n",
     "3: volumes.b.primary: path '/x//a.img' is already used by another volume",
     "shared-primary"),
    ("targets:\n  - iqn: iqn.2026-11.org.a\n    tpgs:\n      - auth:\n"
     "          password: secret-secret\n",
     "4: targets[0].tpgs[0].auth: password is set but userid is missing", "password-no-userid"),
    ("discovery_auth:\n  userid: d\n",
     "1: discovery_auth: userid is set but password is missing", "userid-no-password"),
    ("targets:\n  - iqn: iqn.2026-11.org.a\n    tpgs:\n      - acls:\n"
     "          - initiator: iqn.2026-11.org.h\n            mutual_userid: m\n"
     "            mutual_password: mutual-secret\n",
     "5: targets[0].tpgs[0].acls[0]: mutual CHAP (mutual_userid) needs userid and password",
     "mutual-without-one-way"),
    ("discovery_auth: {}\n", "1: discovery_auth: userid and password are required",
     "chap-empty"),
    ("discovery_auth: {userid: d, password: ''}\n",
     "1: discovery_auth.password: a CHAP password is 12 to 255 bytes", "empty-password"),
    ("metrics:\n  listen: localhost\n",
     "2: metrics.listen: 'localhost': a port is required", "metrics-without-port"),
    ("version: 2\n", "1: version: expected 1", "unknown-version"),
    ("volumes:\n  v: {size: 1G\n", "3: invalid YAML: expected ',' or '}'", "yaml-syntax"),
    ("volumes:\n  v:\n\t size: 1G\n", "3: invalid YAML: found character '\\t'", "yaml-tab"),
    ("a: &x [1]\nb:\n  <<: *x\n", "3: invalid YAML: merge keys ('<<') are not supported",
     "merge-key"),
    ("v: !!python/object:os.system {}\n", "1: invalid YAML: unsupported tag", "python-tag"),
    ("- 1\n- 2\n", "1: expected a mapping, got a list", "not-a-mapping"),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for t, e, _ in BAD],
                         ids=[i for _, _, i in BAD])
def test_bad_input_gives_one_error_naming_file_line_and_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "conf/switch.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("conf/switch.yaml:" + expected), lines[0]
    assert len(info.value.issues) == 1


def test_all_errors_are_reported_one_per_line_sorted_by_line() -> None:
    text = """
        volumes:
          v:
            size: 1G
            colour: red
            size: 2G
        targets:
          - iqn: nope
            tpgs:
              - tag: 0
        metrics: {listen: ":80"}
    """
    lines = issues_of(text)
    assert [ln.split(":")[1] for ln in lines] == ["4", "5", "7", "9", "10"], lines
    assert lines[0].startswith("switch.yaml:4: volumes.v.colour: unknown key")
    assert lines[1].startswith("switch.yaml:5: volumes.v.size: duplicate key (first at line 3)")
    assert lines[3] == "switch.yaml:9: targets[0].tpgs[0].tag: expected greater than or equal to 1"


def test_all_reference_errors_are_reported_together() -> None:
    text = """
        images:
          a: {volume: x, at: now}
          b: {volume: y, at: now}
        targets:
          - iqn: iqn.2026-11.org.a
            tpgs:
              - luns: {0: {volume: z}, 1: {image: a}}
    """
    lines = issues_of(text)
    assert lines == [
        "switch.yaml:2: images.a.volume: no volume named 'x'",
        "switch.yaml:3: images.b.volume: no volume named 'y'",
        "switch.yaml:7: targets[0].tpgs[0].luns.0.volume: no volume named 'z'",
    ]


def test_clashes_on_one_line_name_the_first_entry() -> None:
    lines = issues_of("targets: [{iqn: iqn.2026-11.org.a, tpgs: [{portals: [1.2.3.4, 1.2.3.4]}]}]")
    assert lines == ["switch.yaml:1: targets[0].tpgs[0].portals[1]: portal 1.2.3.4:3260 is"
                     " listed twice (first as targets[0].tpgs[0].portals[0])"]


def test_yamlpos_tracks_the_line_of_every_key_and_item() -> None:
    doc = yamlpos.load(yml("""
        a:
          b:
            - x
            -
              c: 1
          "7": seven
        t: 2026-11-02
    """))
    assert doc.data == {"a": {"b": ["x", {"c": 1}], "7": "seven"}, "t": "2026-11-02"}
    assert doc.problems == ()
    where = doc.where
    # An item starts where its content does (line 5, not the bare "-" on line 4).
    assert [where.line_of(p) for p in [(), ("a",), ("a", "b", 0), ("a", "b", 1),
                                       ("a", "b", 1, "c"), ("a", 7), ("t",)]] == [1, 1, 3, 5,
                                                                                  5, 6, 7]
    # A path that leaves the document answers with its deepest existing prefix.
    assert where.line_of(("a", "b", 1, "missing", 0)) == 5
    assert where.line_of(("a", "nope")) == 1
    assert where.describe(("a", "b", 1, "c")) == "a.b[1].c"
    assert where.describe(("a", 7)) == "a.7"
    assert where.describe(()) == ""


def test_alias_expansion_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlpos, "MAX_NODES", 1000)
    text = "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
    for n in "bcd":
        text += f"{n}: &{n} [" + ", ".join([f"*{chr(ord(n) - 1)}"] * 10) + "]\n"
    lines = issues_of(text)
    assert len(lines) == 1
    assert "more than 1000 values" in lines[0]


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    name = re.escape(str(path))
    path.write_text("volumes:\n  v: {size: 1Q}\n")
    with pytest.raises(ConfigError, match=rf"^{name}:2: volumes\.v\.size: size '1Q'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read: No such file"):
        load_config(tmp_path / "missing.yaml")
    path.write_bytes(b"volumes: {}\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=rf"^{name}:2: the file is not UTF-8$"):
        load_config(path)
    path.write_text("a: 1\nb: \x07\n")
    with pytest.raises(ConfigError, match=rf"^{name}:2: invalid YAML: character U\+0007"):
        load_config(path)


# --- names and addresses ---------------------------------------------------------------

GOOD_NAMES = ["iqn.2026-11.org.cdpswitch:vol0", "iqn.1991-05.com.microsoft:host-1.example",
              "iqn.1986-03.com.sun:01:0003ba2d0f67.46e47e5d", "iqn.2001-04.com.example",
              "eui.02004567A425678D", "eui.02004567a425678d", "naa.52004567BA64678D",
              "naa.6001405abcdef0123456789abcdef012"]
BAD_NAMES = ["iqn.2026-00.org.a", "iqn.26-11.org.a", "iqn.2026-11", "iqn.2026-11.org.a:",
             "iqn.2026-11.-org.a", "iqn.2026-11.org..a", "iqn.2026-11.org.a:b c",
             "iqn.2026-11.org.a:b_c", "eui.0200456", "eui.02004567A425678DAA",
             "naa.5200456789", "naa.52004567BA64678DX", "EUI.02004567A425678D", "host1",
             "iqn.2026-11.org.a:" + "x" * 210]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_iscsi_names_accepted(name: str) -> None:
    assert AclConfig(initiator=name).initiator == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_iscsi_names_rejected(name: str) -> None:
    with pytest.raises(ValidationError, match="iSCSI name"):
        TargetConfig(iqn=name)


@pytest.mark.parametrize(("portal", "canonical"), [
    ("10.0.0.1", "10.0.0.1:3260"), ("0.0.0.0:860", "0.0.0.0:860"), ("[::]", "[::]:3260"),
    ("[0:0::1]:1", "[::1]:1"), ("[FE80::1]:65535", "[fe80::1]:65535"),
])
def test_portals_are_written_in_canonical_form(portal: str, canonical: str) -> None:
    assert TpgConfig(portals=[portal]).portals == [canonical]


@pytest.mark.parametrize("portal", ["10.0.0.1:0", "10.0.0.1:65536", "10.0.0.1:", "::1",
                                    "[::1", "[::1]3260", "[10.0.0.1]", "host:3260", "",
                                    "10.0.0.1:3260:1", "010.0.0.1", "10.0.0.1:-1"])
def test_bad_portals_rejected(portal: str) -> None:
    with pytest.raises(ValidationError, match=r"portal|port|IPv6"):
        TpgConfig(portals=[portal])


@pytest.mark.parametrize(("listen", "ok"), [
    ("127.0.0.1:9470", True), ("[::]:9470", True), ("metrics.example:80", True),
    ("localhost", False), (":9470", False), ("[127.0.0.1]:1", False), ("a b:1", False),
    ("host:70000", False), ("-host:1", False),
])
def test_metrics_listen(listen: str, ok: bool) -> None:
    if ok:
        assert MetricsConfig(listen=listen).listen == listen
    else:
        with pytest.raises(ValidationError):
            MetricsConfig(listen=listen)


# --- secrets ----------------------------------------------------------------------------

SECRET_CASES = [
    f"discovery_auth: {{password: {SECRET}}}\n",
    f"discovery_auth: {{userid: d, password: {SECRET}, colour: red}}\n",
    f"discovery_auth: {{userid: d, password: {SECRET}, password: {SECRET}x}}\n",
    f"discovery_auth: {{userid: d, password: [{SECRET}]}}\n",
    f"discovery_auth: {{userid: d, password: {SECRET * 20}}}\n",
    f"discovery_auth: {{userid: d, password: {SECRET}, mutual_password: {SECRET}}}\n",
    f"discovery_auth: {{userid: d, password: {SECRET}}}\nversion: 3\n",
    f"discovery_auth: {{userid: d, password: {SECRET}}}}}\n",
    f'discovery_auth: {{userid: d, password: "{SECRET}\\q"}}\n',
    "targets: [{iqn: iqn.2026-11.org.a, tpgs: [{acls: [{initiator: iqn.2026-11.org.h,"
    f" password: {SECRET}}}], auth: {{userid: u, password: {SECRET}}}, tag: x}}]}}]\n",
    "targets: [{iqn: iqn.2026-11.org.a, tpgs: [{acls: [{initiator: iqn.2026-11.org.h,"
    f" userid: u, password: {SECRET}}}, {{initiator: iqn.2026-11.org.h}}]}}]}}]\n",
]


@pytest.mark.parametrize("text", SECRET_CASES)
def test_a_secret_never_appears_in_an_error(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "s.yaml")
    message = str(info.value)
    assert message.startswith("s.yaml:")
    assert SECRET not in message
    assert SECRET not in repr(info.value)
    assert all(SECRET not in str(i) and SECRET not in repr(i) for i in info.value.issues)


def test_a_secret_never_appears_in_repr_str_or_validation_errors() -> None:
    cfg = parse_config(f"discovery_auth: {{userid: d, password: {SECRET},"
                       f" mutual_userid: m, mutual_password: m-{SECRET}}}\n", "s.yaml")
    assert cfg.discovery_auth is not None
    for shown in (repr(cfg), str(cfg), repr(cfg.discovery_auth), str(cfg.discovery_auth),
                  cfg.model_dump_json()):
        assert SECRET not in shown
    assert SECRET in dump_config(cfg)  # saveconfig writes it in clear, for restoreconfig
    with pytest.raises(ValidationError) as info:
        ChapPair(userid="u", password=SECRET * 20)  # type: ignore[arg-type]
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)


# --- parse_size -------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    (0, 0), (512, 512), ("512", 512), ("512B", 512), ("4KiB", 4096), ("4k", 4096),
    ("4KB", 4096), ("64MiB", 64 << 20), ("64M", 64 << 20), ("64mib", 64 << 20),
    ("1G", 1 << 30), ("1GiB", 1 << 30), ("1gb", 1 << 30), ("1TiB", 1 << 40), ("2 T", 2 << 40),
    ("1.5G", 3 << 29), ("0.5K", 512), (" 7 ", 7), (1 << 50, 1 << 50),
])
def test_parse_size_accepts(value: int | str, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    (-1, "negative"), ("-1G", "negative"), ("-0.5K", "negative"),
    ("1.3K", "not a whole number of bytes"), ("0.1", "not a whole number of bytes"),
    ("1P", "not understood"), ("1X", "not understood"), ("1Gi", "not understood"),
    ("1iB", "not understood"), ("G", "not understood"), ("", "not understood"),
    ("1e9", "not understood"), ("0x10", "not understood"), ("1,5G", "not understood"),
    (True, "a size is a number of bytes"), (1.5, "a size is a number of bytes"),
    (None, "a size is a number of bytes"),
])
def test_parse_size_rejects(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_size(value)


@given(st.integers(0, 1 << 30), st.sampled_from(["", "B", "K", "KiB", "kb", "M", "mib", "G",
                                                   "GB", "T", "tib"]))
def test_parse_size_scales_by_binary_units(n: int, unit: str) -> None:
    scale = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    assert parse_size(f"{n}{unit}") == n * scale[unit[:1].lower()]


# --- round trips ------------------------------------------------------------------------

NAMES = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,10}", fullmatch=True)
TEXT = st.text(min_size=1, max_size=12).filter(lambda s: "\0" not in s)
SECRETS = st.text(min_size=12, max_size=24)
POINTS = st.sampled_from(["now", "seq:0", "seq:42", "-15m", "-2h30m", "before-upgrade",
                          "2026-11-02", "2026-11-02T18:00:00", "2026-11-02 18:00:00+01:00"])
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,4}[a-z0-9])?", fullmatch=True)
IQNS = st.one_of(
    st.builds(lambda y, m, labels, tail: f"iqn.{y:04d}-{m:02d}.{'.'.join(labels)}{tail}",
              st.integers(1990, 2099), st.integers(1, 12), st.lists(LABEL, min_size=1,
              max_size=3), st.one_of(st.just(""), st.from_regex(r":[a-z0-9.:-]{1,8}",
                                                                fullmatch=True))),
    st.from_regex(r"eui\.[0-9a-fA-F]{16}", fullmatch=True),
    st.from_regex(r"naa\.([0-9a-f]{16}|[0-9A-F]{32})", fullmatch=True),
)


@st.composite
def chap(draw: st.DrawFn, cls: type[ChapPair]) -> ChapPair:
    mutual = draw(st.booleans())
    return cls(userid=draw(TEXT), password=draw(SECRETS),  # type: ignore[arg-type]
               mutual_userid=draw(TEXT) if mutual else None,
               mutual_password="m" + draw(SECRETS) if mutual else None)  # type: ignore[arg-type]


@st.composite
def acls(draw: st.DrawFn) -> AclConfig:
    auth = draw(st.none() | chap(ChapPair))
    if auth is None:
        return AclConfig(initiator=draw(IQNS))
    return AclConfig(initiator=draw(IQNS), **auth.model_dump())


@st.composite
def portals(draw: st.DrawFn) -> str:
    ip = draw(st.ip_addresses())
    port = draw(st.sampled_from([3260, 1, 65535]) | st.integers(1, 65535))
    host = f"[{ip}]" if ip.version == 6 else str(ip)
    return host if port == 3260 and draw(st.booleans()) else f"{host}:{port}"


@st.composite
def tpgs(draw: st.DrawFn, tag: int, volumes: list[str], images: list[str]) -> TpgConfig:
    refs = [LunConfig(volume=v) for v in volumes] + [LunConfig(image=i) for i in images]
    luns = draw(st.dictionaries(st.integers(0, 16383), st.sampled_from(refs), max_size=3)) \
        if refs else {}
    ports = draw(st.lists(portals(), max_size=3,
                          unique_by=lambda p: TpgConfig(portals=[p]).portals[0]))
    allowed = draw(st.lists(acls(), max_size=2, unique_by=lambda a: a.initiator.lower()))
    return TpgConfig(tag=tag, portals=ports, luns=luns, auth=draw(st.none() | chap(ChapPair)),
                     acls=allowed)


@st.composite
def volumes(draw: st.DrawFn, name: str) -> VolumeConfig:
    block: Literal[512, 4096] = draw(st.sampled_from([512, 4096]))
    return VolumeConfig(
        size=draw(st.integers(1, (1 << 44) // block)) * block,
        block_size=block,
        primary=draw(st.sampled_from([None, f"{name}.img", f"/srv/{name}/primary"])),
        secondary=draw(st.sampled_from([None, f"{name}.cdp", f"/srv/{name}/cdp"])),
        policy=draw(st.none() | NAMES), thin=draw(st.booleans()))


@st.composite
def configs(draw: st.DrawFn) -> SwitchConfig:
    names = draw(st.lists(NAMES, unique=True, max_size=6))
    vol_names, img_names = names[: len(names) // 2 + 1], names[len(names) // 2 + 1:]
    vols = {n: draw(volumes(n)) for n in vol_names}
    imgs = {n: ImageConfig(volume=draw(st.sampled_from(vol_names)), at=draw(POINTS),
                           writable=draw(st.booleans())) for n in img_names}
    targets = []
    for iqn in draw(st.lists(IQNS, max_size=3, unique_by=str.lower)):
        tags = draw(st.lists(st.integers(1, 65535), unique=True, max_size=2))
        alias = draw(st.none() | TEXT)
        if not tags and draw(st.booleans()):
            targets.append(TargetConfig(iqn=iqn, alias=alias))  # the default TPG
        else:
            targets.append(TargetConfig(iqn=iqn, alias=alias, tpgs=[
                draw(tpgs(t, vol_names, img_names)) for t in tags]))
    return SwitchConfig(
        volumes=vols, images=imgs, targets=targets,
        discovery_auth=draw(st.none() | chap(ChapConfig)),  # type: ignore[arg-type]
        metrics=draw(st.none() | st.builds(MetricsConfig, listen=st.sampled_from(
            ["127.0.0.1:9470", "[::1]:1", "localhost:65535", "metrics.example:80"]))),
        policies_file=draw(st.none() | TEXT))


@settings(max_examples=100, deadline=None)
@given(configs())
@example(SwitchConfig())
def test_dump_then_parse_gives_the_same_config(cfg: SwitchConfig) -> None:
    text = dump_config(cfg)
    assert text.startswith("# Written by cdpswitch")
    assert "secret" in text.splitlines()[0]
    again = parse_config(text, "saved.yaml")
    assert again == cfg
    assert dump_config(again) == text


def test_long_and_odd_strings_round_trip() -> None:
    odd = ["  leading and trailing  ", "x" * 300, "word " * 60, "# not a comment", "- item",
           "key: value", "'quoted'", '"dq"', "yes", "null", "1e3", "0x10", "2026-11-02",
           "tab\there", "line\nbreak", "nel\x85here", "\u2028", "caf\u00e9 \U0001f600",
           "trailing newline\n", "@at", "`tick", "!bang", "%pct", "&amp", "*star", "|pipe"]
    for text in odd:
        cfg = SwitchConfig(
            targets=[TargetConfig(iqn="iqn.2026-11.org.a", alias=text)],
            discovery_auth=ChapConfig(userid=text[:255], password=(text + "-secret-pad")[-255:]),  # type: ignore[arg-type]
            policies_file=text)
        assert parse_config(dump_config(cfg), "saved.yaml") == cfg, repr(text)


def test_the_example_round_trips() -> None:
    cfg = load_config(EXAMPLE)
    assert parse_config(dump_config(cfg), "saved.yaml") == cfg


# --- save_config ------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_save_config_writes_mode_0600_and_restores(tmp_path: Path) -> None:
    cfg = load_config(EXAMPLE)
    path = tmp_path / "saveconfig.yaml"
    old_umask = os.umask(0)
    try:
        save_config(cfg, path)
    finally:
        os.umask(old_umask)
    assert _mode(path) == 0o600
    assert load_config(path) == cfg
    assert os.listdir(tmp_path) == ["saveconfig.yaml"]


def test_save_config_replaces_an_old_file_and_tightens_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "saveconfig.yaml"
    path.write_text("old\n")
    path.chmod(0o644)
    save_config(SwitchConfig(), str(path))
    assert _mode(path) == 0o600
    assert load_config(path) == SwitchConfig()
    assert os.listdir(tmp_path) == ["saveconfig.yaml"]


@pytest.fixture
def old_file(tmp_path: Path) -> Path:
    path = tmp_path / "saveconfig.yaml"
    path.write_text("# the old configuration\n")
    path.chmod(0o640)
    return path


def _intact(path: Path) -> None:
    assert path.read_text() == "# the old configuration\n"
    assert _mode(path) == 0o640
    assert sorted(os.listdir(path.parent)) == [path.name]


def test_save_config_leaves_the_old_file_when_the_config_cannot_be_dumped(old_file: Path) -> None:
    broken = SwitchConfig.model_construct(policies_file=object())  # not a string
    with pytest.raises(ValueError, match="cannot dump the configuration"):
        save_config(broken, old_file)
    _intact(old_file)


def test_save_config_refuses_a_config_that_would_not_restore(old_file: Path) -> None:
    dangling = SwitchConfig(targets=[TargetConfig(iqn="iqn.2026-11.org.a", tpgs=[
        TpgConfig(luns={0: LunConfig(volume="gone")})])])
    with pytest.raises(ConfigError, match=r"luns\.0\.volume: no volume named 'gone'"):
        save_config(dangling, old_file)
    _intact(old_file)


def test_save_config_onto_a_directory_fails_and_leaves_no_temp_file(tmp_path: Path) -> None:
    dest = tmp_path / "saveconfig.yaml"
    dest.mkdir()
    (dest / "keep").write_text("x")
    with pytest.raises(IsADirectoryError):
        save_config(SwitchConfig(), dest)
    assert sorted(os.listdir(tmp_path)) == ["saveconfig.yaml"]
    assert os.listdir(dest) == ["keep"]


CHILD = """
import errno, resource, signal, sys
from switch.config import SwitchConfig, VolumeConfig, save_config
cfg = SwitchConfig(volumes={f"vol{i}": VolumeConfig(size=1 << 30) for i in range(50)})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (256, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    save_config(cfg, sys.argv[1])
except OSError as exc:
    sys.exit(0 if exc.errno == errno.EFBIG else 2)
sys.exit(3)
"""


def test_save_config_leaves_the_old_file_when_the_write_fails(old_file: Path) -> None:
    # A real failure in the middle of writing: the file size limit makes write() fail.
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(old_file)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    _intact(old_file)
