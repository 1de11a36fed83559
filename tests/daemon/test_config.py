"""The config loader: values, defaults, and one precise line per problem."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgescribe.daemon.config import Config, InvalidConfig, load_config
from edgescribe.daemon.config.loader import field_default, field_types, load_file, load_text, read_secret, unwrap_optional
from edgescribe.daemon.config.service import LoggingConfig, ServiceConfig
from edgescribe.engines.errors import ConfigError
from tests.fixtures.config_sections import Link, Root, Stream, Tls

REPO = Path(__file__).resolve().parents[2]


def problems(text: str, root=Root) -> list[str]:
    with pytest.raises(InvalidConfig) as caught:
        load_text(textwrap.dedent(text), root, "c.yaml")
    return caught.value.lines()


def test_full_file_gives_typed_values():
    config = load_text(
        textwrap.dedent(
            """\
            device_id: press-7
            enabled: no
            mode: accurate
            timeout_s: 2
            labels: {site: north, line: "3"}
            streams:
              - name: mic-a
                device: hw:1,0
                channels: [0, 1]
                gain_db: -3.5
              - name: mic-b
            link:
              host: broker.local
              port: 8883
              qos: 2
              password_file: /etc/edgescribe/mqtt-password
              tls: {verify: false}
            """
        ),
        Root,
    )
    assert config == Root(
        device_id="press-7",
        enabled=False,
        mode="accurate",
        timeout_s=2.0,
        labels={"site": "north", "line": "3"},
        streams=[Stream("mic-a", "hw:1,0", [0, 1], -3.5), Stream("mic-b")],
        link=Link("broker.local", 8883, 2, "/etc/edgescribe/mqtt-password", None, Tls(verify=False)),
    )
    assert isinstance(config.timeout_s, float)


def test_defaults_fill_everything_but_the_required_key():
    assert load_text("device_id: x\n", Root) == Root(device_id="x")
    assert load_text("device_id: x\n", Config) == Config("x", ServiceConfig(), LoggingConfig())


def test_text_keys_take_what_was_typed():
    # YAML 1.1 would read these as false, 7 and 1.5; a device name or id must not change.
    config = load_text("device_id: '007'\nstreams: [{name: mic, device: no}, {name: '1', device: 1.50}]\n", Root)
    assert [s.device for s in config.streams] == ["no", "1.50"]
    assert load_text("device_id: 007\n", Root).device_id == "007"


def test_every_problem_is_reported_at_once_with_its_line():
    lines = problems(
        """\
        device_id: a/b
        enabled: maybe
        mode: fsat
        timeout_s: -1
        streams:
          - name: Mic A
            channels: [0, 9]
            gain_db: loud
          - device: hw:2
        link:
          port: 70000
          qos: 3
          hots: x
        """
    )
    assert lines == [
        "c.yaml:1: device_id: got 'a/b'; expected text matching [A-Za-z0-9_-]{1,64}",
        "c.yaml:2: enabled: got 'maybe'; expected true or false",
        "c.yaml:3: mode: got 'fsat'; expected one of fast, accurate (did you mean fast?)",
        "c.yaml:4: timeout_s: got -1; expected a number >= 0 s, or null",
        "c.yaml:6: streams[0].name: got 'Mic A'; expected text of lower-case letters, digits and '-'",
        "c.yaml:7: streams[0].channels[1]: got 9; expected an integer from 0 to 7",
        "c.yaml:8: streams[0].gain_db: got 'loud'; expected a number from -20 to 20 dB",
        "c.yaml:9: streams[1].name: missing; expected text of lower-case letters, digits and '-'",
        "c.yaml:11: link.port: got 70000; expected an integer from 1 to 65535",
        "c.yaml:12: link.qos: got 3; expected one of 0, 1, 2",
        "c.yaml:13: link.hots: unknown key; did you mean host?",
    ]


def test_missing_required_key_and_empty_file():
    assert problems("") == ["c.yaml:1: device_id: missing; expected text matching [A-Za-z0-9_-]{1,64}"]
    assert problems("# only a comment\n") == problems("")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("device_id: x\nenabled: 1\n", "c.yaml:2: enabled: got 1; expected true or false"),
        ("device_id: x\nlink: {port: 1883.5}\n", "c.yaml:2: link.port: got 1883.5; expected an integer from 1 to 65535"),
        ("device_id: x\nlink: {port: true}\n", "c.yaml:2: link.port: got true; expected an integer from 1 to 65535"),
        ("device_id: x\ntimeout_s: .inf\n", "c.yaml:2: timeout_s: got .inf; expected a number >= 0 s, or null"),
        ("device_id: x\nlink: {port: }\n", "c.yaml:2: link.port: got an empty value; expected an integer from 1 to 65535"),
        ("device_id: x\nlink: [1]\n", "c.yaml:2: link: got a list; expected a mapping with keys host, port, qos, password_file, password_credential, tls"),
        ("device_id: x\nstreams: {name: a}\n", "c.yaml:2: streams: got a mapping; expected a list of mappings"),
        ("device_id: x\nlabels: {a: [1]}\n", "c.yaml:2: labels.a: got a list; expected text"),
        ("device_id: x\nenabled: !!binary aGVsbG8=\n", "c.yaml:2: enabled: got !!binary aGVsbG8=; expected true or false"),
        ("[1, 2]\n", "c.yaml:1: (top level): got a list; expected a mapping with keys device_id, enabled, mode, timeout_s, labels, streams, link"),
        ("device_id: x\nport: 1\n", "c.yaml:2: port: unknown key; it belongs under link:"),
        ("device_id: x\nstreams: [{name: reserved}]\n", "c.yaml:2: streams[0]: stream name 'reserved' is taken by the daemon"),
    ],
)
def test_wrong_values(text, expected):
    assert problems(text) == [expected]


def test_huge_numbers_are_range_errors_not_crashes():
    # 5000 digits is past Python's int parsing limit; 100 digits parses but is out of range.
    for digits in (5000, 100):
        assert problems("device_id: x\nlink: {port: " + "9" * digits + "}\n") == [
            "c.yaml:2: link.port: got " + "9" * 40 + "...; expected an integer from 1 to 65535"
        ]


def test_keys_written_one_level_too_high_are_pointed_home():
    assert problems("device_id: x\nhost: broker\ngain_db: 3\n") == [
        "c.yaml:2: host: unknown key; it belongs under link:",
        "c.yaml:3: gain_db: unknown key; it belongs under each item of streams:",
    ]


def test_keys_that_moved_name_the_key_to_set_instead():
    text = "device_id: x\ntimeout: 3\nlink:\n  server: broker\nstreams:\n  - name: a\n  - name: b\n    volume_db: 2\n"
    assert problems(text) == [
        "c.yaml:2: timeout: this key moved: set timeout_s instead",
        "c.yaml:4: link.server: this key moved: set link.host instead",
        "c.yaml:8: streams[1].volume_db: this key moved: set streams[].gain_db instead",
    ]


def _declared(cls, prefix=""):
    """Every dotted key path a section declares (list items as ``streams[]``)."""
    hints = field_types(cls)
    for field in dataclasses.fields(cls):
        yield prefix + field.name
        inner = unwrap_optional(hints[field.name])[0]
        is_list = typing.get_origin(inner) is list
        item = typing.get_args(inner)[0] if is_list else inner
        if dataclasses.is_dataclass(item):
            yield from _declared(item, prefix + field.name + ("[]." if is_list else "."))


def test_every_moved_key_of_the_real_config_points_at_a_key_that_exists():
    declared = set(_declared(Config))
    assert Config.moved_keys  # the table the loader reads is the one the daemon declares
    for old, new in Config.moved_keys.items():
        assert old not in declared, f"{old} is still a key"
        assert new in declared, f"{old} points at {new}, which is not a key"
        section, key = old.split(".")
        text = f"device_id: x\n{section}:\n  {key}: 1\n"
        assert problems(text, Config) == [f"c.yaml:3: {old}: this key moved: set {new} instead"]


def test_a_file_still_naming_the_package_under_engine_is_told_where_it_went(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("device_id: line3\nengine:\n  backend: auto\n  package_dir: /var/lib/edgescribe/model\n")
    with pytest.raises(InvalidConfig) as caught:
        load_config(path)
    assert str(caught.value) == f"{path}:4: engine.package_dir: this key moved: set models.serving instead"


def test_the_upgrade_package_must_differ_from_the_serving_one():
    assert load_text("device_id: x\nmodels: {serving: /m/tiny.en, upgrade: /m/base}\n", Config).models.upgrade == Path("/m/base")
    assert problems("device_id: x\nmodels:\n  serving: /m/tiny.en\n  upgrade: /m/tiny.en\n", Config) == [
        "c.yaml:4: models.upgrade: is the serving package; name a different package, or leave it empty"
    ]
    (line,) = problems("device_id: x\nmodels:\n  serving: /a/model\n  upgrade: /b/model\n", Config)
    assert line.startswith("c.yaml:4: models.upgrade: has the same directory name as serving (model)")


def test_duplicate_keys_are_errors():
    assert problems("device_id: x\nlink: {}\nenabled: true\nlink: {port: 1}\n") == [
        "c.yaml:4: link: duplicate key (first given on line 2); keep one"
    ]


def test_inline_password_is_refused_with_the_way_to_do_it():
    (line,) = problems("device_id: x\nlink:\n  password: hunter2\n")
    assert line.startswith("c.yaml:3: link.password: an inline password is not accepted")
    assert "password_file:" in line and "password_credential:" in line and "LoadCredential=" in line
    assert "hunter2" not in line


def test_cross_key_checks_point_at_the_key():
    text = "device_id: x\nlink:\n  password_file: /a\n  password_credential: b\n"
    assert problems(text) == ["c.yaml:4: link.password_credential: give password_file or password_credential, not both"]


def test_merge_keys_and_aliases_work():
    config = load_text(
        "device_id: x\nstreams:\n  - &base {name: a, device: hw:1, gain_db: 3}\n  - {<<: *base, name: b}\n", Root
    )
    assert config.streams[1] == Stream("b", "hw:1", [0], 3.0)
    # YAML merge order: the mapping's own keys, then each merged mapping in the order listed.
    config = load_text(
        "device_id: x\nstreams:\n  - &a {name: a, device: hw:1, gain_db: 1}\n"
        "  - &b {name: b, device: hw:2, channels: [1]}\n  - {<<: [*a, *b], name: c}\n",
        Root,
    )
    assert config.streams[2] == Stream("c", "hw:1", [1], 1.0)


def test_alias_bomb_under_a_known_key_is_bounded():
    # 10**11 keys if expanded; the loader gives up after a bounded number of nodes.
    bomb = ["device_id: x", "labels:", "  l0: &l0 {k: v}"]
    for level in range(1, 12):
        bomb.append(f"  l{level}: &l{level} {{<<: [" + ", ".join([f"*l{level - 1}"] * 10) + "]}")
    found = problems("\n".join(bomb) + "\n")
    assert found and all(line.startswith("c.yaml:") for line in found)


def test_syntax_errors_name_the_line():
    (line,) = problems("device_id: x\nlink:\n\tport: 1\n")
    assert line.startswith("c.yaml:3: YAML syntax error") and "tabs" in line
    (line,) = problems("device_id: x\nlink: {port: 1\n")
    assert line.startswith("c.yaml:3: YAML syntax error")


def test_file_level_problems(tmp_path):
    with pytest.raises(InvalidConfig, match=r"missing.yaml: no such file"):
        load_file(tmp_path / "missing.yaml", Root)
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"device_id: x\n# caf\xe9\n")
    with pytest.raises(InvalidConfig, match=r"latin1.yaml:2: byte 0xe9 is not UTF-8"):
        load_file(latin1, Root)
    with pytest.raises(InvalidConfig, match="is a directory"):
        load_file(tmp_path, Root)


def test_invalid_config_is_a_config_error_with_exit_status_2():
    with pytest.raises(ConfigError) as caught:
        load_text("device_id: [\n", Root)
    assert caught.value.exit_code == 2


def test_stream_names_are_unique_and_streams_not_empty():
    text = "device_id: x\nstreams:\n  - {name: a, device: hw:0}\n  - {name: b, device: hw:1}\n  - device: hw:2\n    name: a\n"
    assert problems(text, Config) == [
        "c.yaml:6: streams[2].name: 'a' is already the name of streams[0]; names must be unique"
    ]
    assert problems("device_id: x\nstreams: []\n", Config) == [
        "c.yaml:2: streams: needs at least one stream (a device or a file)"
    ]


def test_an_empty_path_means_not_set_never_the_current_directory():
    assert load_text("device_id: x\nmodels: {upgrade: ''}\n", Config).models.upgrade is None
    assert problems("device_id: x\nmodels: {serving: ''}\n", Config) == [
        "c.yaml:2: models.serving: got ''; expected a path"
    ]


def test_device_id_must_be_topic_safe(tmp_path):
    path = tmp_path / "config.yaml"
    for bad in ("line/3", "line+3", "#", "a b", "-x", "x" * 65):
        path.write_text(f"device_id: '{bad}'\n")
        with pytest.raises(InvalidConfig, match="config.yaml:1: device_id: got"):
            load_config(path)
    path.write_text("device_id: Line_3-press\nlogging: {level: debug}\n")
    assert load_config(path).logging.level == "debug"


def test_read_secret_from_file_and_credential(tmp_path, monkeypatch):
    (tmp_path / "pw").write_text("s3cret\n")
    assert read_secret(str(tmp_path / "pw"), None, "mqtt.password_file") == "s3cret"
    assert read_secret(None, None, "mqtt") is None
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_secret(None, "pw", "mqtt.password_credential") == "s3cret"
    with pytest.raises(ConfigError, match="mqtt.password_file: cannot read secret file .*nope"):
        read_secret(str(tmp_path / "nope"), None, "mqtt.password_file")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="LoadCredential=pw:"):
        read_secret(None, "pw", "mqtt.password_credential")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edgescribe.daemon.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_check_config_command(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("device_id: press-1\n")
    result = _cli("check-config", str(good))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"{good}: OK (device_id press-1)\n"

    shown = _cli("check-config", "--show", str(good))
    assert "stall_timeout_s: 60.0" in shown.stdout and shown.returncode == 0

    bad = tmp_path / "bad.yaml"
    bad.write_text("device_id: a/b\nservice:\n  stal_timeout_s: 5\nlogging: {level: loud}\n")
    result = _cli("check-config", str(bad))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{bad}:1: device_id: got 'a/b'; expected text of 1-64 letters, digits, '-' or '_', starting with a letter or digit",
        f"{bad}:3: service.stal_timeout_s: unknown key; did you mean stall_timeout_s?",
        f"{bad}:4: logging.level: got 'loud'; expected one of debug, info, warning, error",
        f"{bad}: 3 problems found",
    ]



# ---------------------------------------------------------------- valid documents always load


def _values(tp, meta):
    """Any value the declaration allows (type, range, choices, pattern), as plain YAML data."""
    inner, optional = unwrap_optional(tp)
    if typing.get_origin(inner) is typing.Literal or meta.get("choices"):
        strategy = st.sampled_from(list(meta.get("choices") or typing.get_args(inner)))
    elif dataclasses.is_dataclass(inner):
        strategy = _documents(inner)
    elif typing.get_origin(inner) is list:
        strategy = st.lists(_values(typing.get_args(inner)[0], meta), max_size=3)
    elif typing.get_origin(inner) is dict:
        strategy = st.dictionaries(st.text(max_size=8), _values(typing.get_args(inner)[1], meta), max_size=3)
    elif inner is bool:
        strategy = st.booleans()
    elif inner is int:
        strategy = st.integers(min_value=meta.get("min"), max_value=meta.get("max"))
    elif inner is float:
        strategy = st.floats(meta.get("min"), meta.get("max"), allow_nan=False, allow_infinity=False)
    elif inner is Path:
        strategy = st.text(min_size=0 if optional else 1, max_size=20)
    elif meta.get("pattern"):
        strategy = st.from_regex(meta["pattern"], fullmatch=True)
    else:
        strategy = st.text(max_size=20)
    return st.one_of(st.none(), strategy) if optional else strategy


def _documents(cls):
    """Mappings for section ``cls``: its required keys always, the others sometimes."""
    hints = field_types(cls)
    required, optional = {}, {}
    for field in dataclasses.fields(cls):
        has_default = field_default(field) is not dataclasses.MISSING
        (optional if has_default else required)[field.name] = _values(hints[field.name], dict(field.metadata))
    return st.fixed_dictionaries(required, optional=optional)


def _build(tp, data):
    """What the document should load as, built directly (independently of the loader)."""
    inner, _ = unwrap_optional(tp)
    if data is None:
        return None
    if dataclasses.is_dataclass(inner):
        hints = field_types(inner)
        instance = inner(**{key: _build(hints[key], value) for key, value in data.items()})
        assume(not list(getattr(instance, "problems", lambda: [])()))  # cross-key rules, tested above
        return instance
    if typing.get_origin(inner) is list:
        return [_build(typing.get_args(inner)[0], item) for item in data]
    if inner is Path:
        return Path(data) if data != "" else None
    return data


VALID = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


def _loads_as_written(root, document):
    try:
        expected = _build(root, document)
    except ValueError:  # a __post_init__ rule, tested above
        assume(False)
    # allow_unicode=False: PyYAML would write U+0085 raw, and reading it back is a line break.
    assert load_text(yaml.safe_dump(document), root) == expected


@VALID
@given(_documents(Root))
def test_any_document_the_schema_allows_loads_as_written(document):
    _loads_as_written(Root, document)


@VALID
@given(_documents(Config))
def test_any_document_the_real_sections_allow_loads_as_written(document):
    _loads_as_written(Config, document)
