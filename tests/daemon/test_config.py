"""The config loader: values, defaults, and one precise line per problem."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from edgescribe.daemon import mqtt_link
from edgescribe.daemon.config import Config, InvalidConfig, load_config
from edgescribe.daemon.config.audio import CaptureOptions, SegmenterOptions, StreamConfig, VadOptions
from edgescribe.daemon.config.engine import EngineConfig
from edgescribe.daemon.config.loader import load_file, load_text
from edgescribe.daemon.config.models import ALIGNER, MANIFEST
from edgescribe.daemon.config.mqtt import MqttConfig
from edgescribe.daemon.config.reference import MISSING, keys, section_of
from edgescribe.daemon.config.schema import Loading, Spec, choices, is_section, item_spec
from edgescribe.daemon.config.secrets import read_password
from edgescribe.daemon.config.transcription import TranscriptionConfig
from edgescribe.daemon.pipeline import StreamPipeline
from edgescribe.daemon.scheduler import InferenceScheduler
from edgescribe.engines.encoder_window import ENCODER_WINDOWS
from edgescribe.engines.errors import ConfigError
from edgescribe.engines.package import ALIGNER as WRITTEN_ALIGNER
from edgescribe.engines.package import MANIFEST as WRITTEN_MANIFEST
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
        streams=[Stream(name="mic-a", device="hw:1,0", channels=[0, 1], gain_db=-3.5), Stream(name="mic-b")],
        link=Link(host="broker.local", port=8883, qos=2, password_file="/etc/edgescribe/mqtt-password",
                  tls=Tls(verify=False)),
    )
    assert isinstance(config.timeout_s, float)


def test_defaults_fill_everything_but_the_required_key():
    assert load_text("device_id: x\n", Root) == Root(device_id="x")
    assert load_text("device_id: x\n", Config) == Config(device_id="x")


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
    for key in keys(cls, prefix):
        yield key.path
        section, is_list = section_of(key)
        if section is not None:
            yield from _declared(section, key.path + ("[]." if is_list else "."))


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
    assert config.streams[1] == Stream(name="b", device="hw:1", channels=[0], gain_db=3.0)
    # YAML merge order: the mapping's own keys, then each merged mapping in the order listed.
    config = load_text(
        "device_id: x\nstreams:\n  - &a {name: a, device: hw:1, gain_db: 1}\n"
        "  - &b {name: b, device: hw:2, channels: [1]}\n  - {<<: [*a, *b], name: c}\n",
        Root,
    )
    assert config.streams[2] == Stream(name="c", device="hw:1", channels=[1], gain_db=1.0)


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


@pytest.mark.parametrize("text, expected", [
    # a key indented less than its section's keys: PyYAML says "expected <block end>, but found ?"
    ("device_id: x\nlink:\n  host: a\n port: 1\nenabled: true\n",
     "c.yaml:4: YAML syntax error: this line's indentation matches no key above it; keys of one section must "
     "start in the same column"),
    ("device_id: x\nstreams:\n  - name: a\n   device: b\n",
     "c.yaml:4: YAML syntax error: this line's indentation matches no key above it; keys of one section must "
     "start in the same column"),
    # unclosed quotes and brackets: where they open, not at the end of the file where PyYAML noticed
    ('device_id: "x\nlink:\n  host: a\n', "c.yaml:1: YAML syntax error: the \" opened on this line is never "
     "closed; close it at the end of the value"),
    ("device_id: x\nlink:\n  host: 'abc\n  port: 1\nenabled: true\n", "c.yaml:3: YAML syntax error: the ' opened "
     "on this line is never closed; close it at the end of the value"),
    ("device_id: x\nlink: {port: 1\nenabled: true\n", "c.yaml:2: YAML syntax error: the '{' opened on this line "
     "is never closed; close it with '}'"),
    ("device_id: x\nlabels\n  a: b\n", "c.yaml:2: YAML syntax error: a key without ':' on this line; expected "
     "key: value"),
])
def test_yaml_mistakes_are_explained_on_the_line_where_they_are(text, expected):
    assert problems(text) == [expected]


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
        "c.yaml:6: streams[2].name: 'a' is already the name of streams[0]; each stream needs its own"
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


def test_check_config_command(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "manifest.json").write_text("{}")
    good = tmp_path / "good.yaml"
    good.write_text(f"device_id: press-1\nmodels: {{serving: {tmp_path / 'model'}}}\n")
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


def _values(spec: Spec):
    """Any value the declaration allows (type, range, choices, pattern), as plain YAML data."""
    tp, facts = spec.type, spec.facts
    if choices(tp):
        strategy = st.sampled_from(list(choices(tp)))
    elif is_section(tp):
        strategy = _documents(tp)
    elif typing.get_origin(tp) is list:
        strategy = st.lists(_values(item_spec(spec)), max_size=3)
    elif typing.get_origin(tp) is dict:
        strategy = st.dictionaries(st.text(max_size=8), _values(item_spec(spec)), max_size=3)
    elif tp is bool:
        strategy = st.booleans()
    elif tp is int:
        strategy = st.integers(min_value=facts.get("min"), max_value=facts.get("max"))
    elif tp is float:
        strategy = st.floats(facts.get("min"), facts.get("max"), allow_nan=False, allow_infinity=False)
    elif tp is Path:
        strategy = st.text(min_size=0 if spec.optional else 1, max_size=20)
    elif facts.get("pattern"):
        strategy = st.from_regex(facts["pattern"].removeprefix("^(?:").removesuffix(")$"), fullmatch=True)
    else:
        strategy = st.text(max_size=20)
    return st.one_of(st.none(), strategy) if spec.optional else strategy


def _documents(cls):
    """Mappings for section ``cls``: its required keys always, the others sometimes."""
    required, optional = {}, {}
    for key in keys(cls):
        (required if key.default is MISSING else optional)[key.name] = _values(key.spec)
    return st.fixed_dictionaries(required, optional=optional)


def _empty_paths_unset(cls, data):
    """The document as Python code would pass it: an empty path is "not set"."""
    if not isinstance(data, dict):
        return data
    out = {}
    for key in keys(cls):
        if key.name not in data:
            continue
        value = data[key.name]
        section, is_list = section_of(key)
        if key.spec.type is Path and value == "":
            value = None
        elif section is not None and value is not None:
            value = [_empty_paths_unset(section, v) for v in value] if is_list else _empty_paths_unset(section, value)
        out[key.name] = value
    return out


VALID = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))


def _loads_as_written(root, document):
    try:  # what the document should load as, built by pydantic from the Python values directly
        expected = root.model_validate(_empty_paths_unset(root, document), context=Loading())
    except ValidationError:  # a cross-key rule, tested above
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


# ---------------------------------------------------------------- issue 10: what error messages list


def test_moved_keys_is_not_offered_as_a_key():
    (line,) = problems("device_id: x\nfoo: 1\n", Config)
    assert line.startswith("c.yaml:2: foo: unknown key; expected one of device_id, service,") and "moved_keys" not in line
    # the table of old keys is not a key either, and a near miss is not pointed at it
    assert problems("device_id: x\nmoved_keys: {}\nmoved_key: 1\n", Config) == [
        "c.yaml:2: moved_keys: unknown key; did you mean models?",
        "c.yaml:3: moved_key: unknown key; expected one of " + ", ".join(Config.model_fields),
    ]


def test_one_knob_per_concept():
    declared = set(_declared(Config))
    assert {"transcription.partials", "vad.threshold", "vad.off_threshold", "engine.engine_dir"} <= declared
    assert not declared & {"mqtt.publish_partials", "segmenter.threshold", "segmenter.off_threshold", "service.cache_dir"}
    assert problems("device_id: x\nsegmenter:\n  threshold: 0.6\n", Config) == [
        "c.yaml:3: segmenter.threshold: this key moved: set vad.threshold instead"
    ]


def test_the_manifest_name_is_the_one_the_packages_are_written_with():
    assert MANIFEST == WRITTEN_MANIFEST
    assert ALIGNER == WRITTEN_ALIGNER


# ---------------------------------------------------------------- check-config and run agree


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "CREDENTIALS_DIRECTORY")}
    return subprocess.run([sys.executable, "-m", "edgescribe.daemon.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env={**environ, **(env or {})})


@pytest.fixture
def package(tmp_path) -> Path:
    """A directory that passes for a model package (check-config does not load the model)."""
    directory = tmp_path / "tiny.en"
    directory.mkdir()
    (directory / "manifest.json").write_text("{}")
    return directory


# Each of these passed check-config before, while run refused it or failed at the first use.
HOST_CASES = {
    "missing password file": ("mqtt:\n  username: u\n  password_file: {tmp}/nope\n",
                              "{file}:4: mqtt.password_file: cannot read {tmp}/nope: No such file or directory"),
    "missing model package": ("models:\n  serving: {tmp}/base\n",
                              "{file}:3: models.serving: {tmp}/base: no such directory; write one with: "
                              "edgescribe export --source <model> --out {tmp}/base"),
    "missing CA file": ("mqtt:\n  tls: true\n  tls_ca_file: {tmp}/ca.pem\n",
                        "{file}:4: mqtt.tls_ca_file: cannot read {tmp}/ca.pem: No such file or directory"),
    "NUL in topic prefix": ('mqtt:\n  topic_prefix: "plant\\0"\n',
                            "{file}:3: mqtt.topic_prefix: got 'plant\\x00'; expected one or more topic levels separated "
                            "by '/', without '+', '#' or control characters"),
    "# in discovery prefix": ("homeassistant:\n  discovery_prefix: ha/#\n",
                              "{file}:3: homeassistant.discovery_prefix: got 'ha/#'; expected one or more topic levels "
                              "separated by '/', without '+', '#' or control characters"),
    "+ in discovery prefix": ("homeassistant:\n  discovery_prefix: ha/+/x\n",
                              "{file}:3: homeassistant.discovery_prefix: got 'ha/+/x'; expected one or more topic "
                              "levels separated by '/', without '+', '#' or control characters"),
    "port in host": ("mqtt:\n  host: broker.lan:1883\n",
                     "{file}:3: mqtt.host: got 'broker.lan:1883'; expected a host name or IP address, without a port "
                     "(the port is mqtt.port)"),
    "word timestamps from a package without an aligner": (
        "transcription:\n  word_timestamps: true\n",
        "{file}:3: transcription.word_timestamps: is true but model package {tmp}/tiny.en has no word timing "
        "(aligner.onnx); re-export it with: edgescribe export --source <model> --out {tmp}/tiny.en "
        "(or set word_timestamps: false)"),
    "two streams on one device": ("streams:\n  - name: a\n    device: hw:1,0\n  - name: b\n    device: plughw:1,0\n",
                                  "{file}:6: streams[1].device: 'plughw:1,0' is already the device of streams[0]; "
                                  "each stream needs its own"),
}


@pytest.mark.parametrize("case", sorted(HOST_CASES))
def test_check_config_and_run_refuse_the_same_file_with_the_same_line(case, tmp_path, package):
    body, expected = HOST_CASES[case]
    path = tmp_path / "config.yaml"
    text = f"device_id: press-1\nmodels: {{serving: {package}}}\n" if "models:" not in body else "device_id: press-1\n"
    path.write_text(text + body.format(tmp=tmp_path))
    line = expected.format(file=path, tmp=tmp_path)
    if "models:" not in body:  # the package line comes first: shift the expected line by one
        number = int(line[len(str(path)) + 1:].split(":")[0])
        line = line.replace(f"{path}:{number}:", f"{path}:{number + 1}:", 1)
    checked = _cli("check-config", str(path))
    assert (checked.returncode, checked.stderr.splitlines()) == (2, [line, f"{path}: 1 problem found"])
    ran = _cli("run", "--config", str(path))
    assert ran.returncode == 2 and "Traceback" not in ran.stderr
    assert ran.stderr.splitlines() == [f"edgescribe run: error: {line}"]


def test_word_timestamps_need_an_aligner_in_every_package_named(tmp_path, package):
    timed = tmp_path / "base"
    timed.mkdir()
    (timed / MANIFEST).write_text("{}")
    (timed / ALIGNER).write_text("")
    path = tmp_path / "config.yaml"
    path.write_text(f"device_id: press-1\nmodels: {{serving: {timed}, upgrade: {package}}}\n"
                    "transcription: {word_timestamps: true}\n")
    with pytest.raises(InvalidConfig) as caught:
        load_config(path)
    assert caught.value.lines() == [
        f"{path}:3: transcription.word_timestamps: is true but model package {package} has no word timing "
        f"(aligner.onnx); re-export it with: edgescribe export --source <model> --out {package} "
        "(or set word_timestamps: false)"]
    path.write_text(f"device_id: press-1\nmodels: {{serving: {timed}}}\ntranscription: {{word_timestamps: true}}\n")
    assert load_config(path).transcription.word_timestamps
    # off, no package needs one; a missing package is reported once, by models.serving
    path.write_text(f"device_id: press-1\nmodels: {{serving: {package}}}\n")
    assert not load_config(path).transcription.word_timestamps
    path.write_text(f"device_id: press-1\nmodels: {{serving: {tmp_path}/gone}}\n"
                    "transcription: {word_timestamps: true}\n")
    with pytest.raises(InvalidConfig) as caught:
        load_config(path)
    assert [p.path for p in caught.value.problems] == ["models.serving"]


# ---------------------------------------------------------------- the MQTT password (issue 11, item 11)


def _mqtt_file(tmp_path, package, mqtt: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"device_id: press-1\nmodels: {{serving: {package}}}\nmqtt:\n{textwrap.indent(mqtt, '  ')}")
    return path


def test_a_password_file_every_user_can_read_is_a_warning_and_refused_under_systemd(tmp_path, package):
    secret = tmp_path / "mqtt-password"
    secret.write_text("hunter2\n")
    secret.chmod(0o644)
    path = _mqtt_file(tmp_path, package, f"username: u\npassword_file: {secret}\n")
    checked = _cli("check-config", str(path))
    assert checked.returncode == 0 and "hunter2" not in checked.stderr
    (warning,) = checked.stderr.splitlines()
    assert warning.startswith(f"{path}:5: mqtt.password_file: warning: {secret} can be read by every user")
    assert "chmod 640" in warning
    under_systemd = {"INVOCATION_ID": "0123456789abcdef"}
    for command in (["check-config", str(path)], ["run", "--config", str(path)]):
        refused = _cli(*command, env=under_systemd)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert f"{path}:5: mqtt.password_file: {secret} can be read by every user" in refused.stderr
    secret.chmod(0o640)
    assert _cli("check-config", str(path)).stderr == ""
    assert _cli("check-config", str(path), env=under_systemd).returncode == 0


def test_a_password_sent_without_tls_to_another_machine_is_a_warning(tmp_path, package):
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    secret.chmod(0o600)
    remote = _cli("check-config", str(_mqtt_file(tmp_path, package, f"host: broker.lan\nusername: u\npassword_file: {secret}\n")))
    assert remote.returncode == 0
    assert remote.stderr.splitlines() == [
        f"{tmp_path / 'config.yaml'}:4: mqtt.tls: warning: is false, so the password goes to broker.lan unencrypted; "
        "set tls: true (port 8883), or use a broker on this machine"
    ]
    for mqtt in (f"host: 127.0.0.1\nusername: u\npassword_file: {secret}\n",  # a broker on this machine
                 f"host: ::1\nusername: u\npassword_file: {secret}\n",
                 "host: broker.lan\n"):  # no password to protect
        assert _cli("check-config", str(_mqtt_file(tmp_path, package, mqtt))).stderr == "", mqtt


@pytest.mark.parametrize("name", ["/etc/shadow", "../mqtt-password", "..", ".", "a/b", ".hidden"])
def test_a_credential_is_a_plain_name_never_a_path(name):
    (line,) = problems(f"device_id: x\nmqtt:\n  username: u\n  password_credential: '{name}'\n", Config)
    assert line.startswith(f"c.yaml:4: mqtt.password_credential: got '{name}'; expected text of a credential name")
    with pytest.raises(ValidationError):
        MqttConfig(username="u", password_credential=name)


def test_one_password_reader_for_files_and_credentials(tmp_path):
    (tmp_path / "pw").write_text("s3cret\nsecond line\n")
    assert read_password(MqttConfig(username="u", password_file=str(tmp_path / "pw")), {}) == "s3cret"
    assert read_password(MqttConfig(), {}) is None
    credential = MqttConfig(username="u", password_credential="pw")
    assert read_password(credential, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "s3cret"
    with pytest.raises(ConfigError, match=r"CREDENTIALS_DIRECTORY is not .*LoadCredential="):
        read_password(credential, {})
    with pytest.raises(ConfigError, match=r"^mqtt.password_file: cannot read .*nope: No such file"):
        read_password(MqttConfig(username="u", password_file=str(tmp_path / "nope")), {})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match=r"^mqtt.password_credential: .*empty is empty"):
        read_password(MqttConfig(username="u", password_credential="empty"), {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert mqtt_link.read_password is read_password  # the link reads the password with this one reader


def test_a_credential_is_checked_when_the_service_has_credentials(tmp_path, package, monkeypatch):
    path = _mqtt_file(tmp_path, package, "username: u\npassword_credential: mqtt-password\n")
    assert load_config(path).mqtt.password_credential == "mqtt-password"  # no $CREDENTIALS_DIRECTORY to look in
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "credentials"))
    with pytest.raises(InvalidConfig) as caught:
        load_config(path)
    assert caught.value.lines() == [
        f"{path}:5: mqtt.password_credential: cannot read {tmp_path}/credentials/mqtt-password: No such file or directory"
    ]


def test_the_daemon_built_segmenter_takes_its_thresholds_from_the_vad_section():
    vad = VadOptions(engine="energy", threshold=0.8, off_threshold=0.6)
    pipeline = StreamPipeline.build(
        StreamConfig(name="mic", file="unused.wav"), CaptureOptions(), vad, SegmenterOptions(),
        TranscriptionConfig(), InferenceScheduler(), engines=None, emit=lambda event: None,
    )
    assert (pipeline.segmenter.threshold, pipeline.segmenter.off_threshold) == (0.8, 0.6)


def test_encoder_window_choices_are_the_engines_own():
    """check-config does not import the engines (numpy); its list of windows must match theirs."""
    assert typing.get_args(EngineConfig.model_fields["encoder_window"].annotation) == ENCODER_WINDOWS
