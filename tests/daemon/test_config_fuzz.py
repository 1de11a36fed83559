"""Malformed configuration files never crash the loader: each gives a clean ConfigError.

In process (hypothesis plus a hand-made list of nasty files) and through the real
``edgescribe check-config`` command: exit status 2, one ``file:line:`` line per problem on
stderr, and never a traceback.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgescribe.daemon.config import Config, Host
from edgescribe.daemon.config.loader import InvalidConfig, load_file, load_text
from edgescribe.daemon.config.reference import keys, plain, section_of
from tests.fixtures.config_sections import Root

REPO = Path(__file__).resolve().parents[2]
ROOTS = [Config, Root]


def _key_names(cls) -> set[str]:
    names = set()
    for key in keys(cls):
        names.add(key.name)
        section, _ = section_of(key)
        if section is not None:
            names |= _key_names(section)
    return names


# Every key of the real sections and the test ones, so fuzzing reaches their cross-key checks.
KEYS = sorted(_key_names(Config) | _key_names(Root) | {"password", "<<"})
LINE = re.compile(r"^\S.*:(\d+:)? \S")

HANDMADE: dict[str, bytes] = {
    "empty": b"",
    "only-whitespace": b"   \n\n  \n",
    "only-document-marker": b"---\n",
    "null-document": b"~\n",
    "scalar-document": b"hello\n",
    "number-document": b"42\n",
    "list-document": b"- a\n- b\n",
    "two-documents": b"device_id: a\n---\ndevice_id: b\n",
    "tab-indent": b"device_id: x\nservice:\n\tstate_dir: /x\n",
    "tab-after-key": b"device_id:\tx\nlogging:\n  level:\tinfo\n\t\n",
    "unclosed-flow": b"device_id: x\nlogging: {level: info\n",
    "unclosed-quote": b'device_id: "x\n',
    "bad-indent": b"device_id: x\nservice:\n  state_dir: /a\n cache_dir: /b\n",
    "colon-in-value": b"device_id: x: y\n",
    "key-only": b"device_id\n",
    "nul-bytes": b"device_id: x\x00\n",
    "binary-junk": bytes(range(256)) * 4,
    "elf-header": b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 56,
    "latin-1": b"device_id: caf\xe9\n",
    "utf-16": "device_id: x\n".encode("utf-16"),
    "utf-8-bom": "\ufeffdevice_id: x\nservice: 3\n".encode(),
    "control-chars": b"device_id: \x1b[31mred\n",
    "huge-int": b"device_id: x\nservice: {stall_timeout_s: " + b"9" * 10000 + b"}\n",
    "huge-float": b"device_id: x\nservice: {stall_timeout_s: 1e400}\n",
    "nan": b"device_id: x\nservice: {stall_timeout_s: .nan}\n",
    "negative": b"device_id: x\nservice: {status_interval_s: -5}\n",
    "hex-int-out-of-range": b"device_id: x\nservice: {status_interval_s: 0xFFFF}\n",
    "sexagesimal-out-of-range": b"device_id: x\nservice: {status_interval_s: 190:30:00}\n",
    "bool-for-number": b"device_id: x\nservice: {stall_timeout_s: yes}\n",
    "list-for-text": b"device_id: [a, b]\n",
    "map-for-section": b"device_id: x\nservice: [1, 2]\n",
    "timestamp": b"device_id: x\nservice: {stall_timeout_s: 2024-01-01}\n",
    "unknown-keys": b"device_id: x\nservce: {}\nloging: {}\nfoo: 1\n",
    "duplicate-keys": b"device_id: x\ndevice_id: y\nservice: {}\nservice: {}\n",
    "inline-password": b"device_id: x\npassword: hunter2\n",
    "secret-token": b"device_id: x\nlogging: {token: abc}\n",
    "null-key": b"device_id: x\n~: 1\n",
    "complex-key": b"device_id: x\n? [a, b]\n: 1\n",
    "python-tag": b"device_id: !!python/object/apply:os.system ['true']\n",
    "custom-tag": b"device_id: !secret x\nservice: !include other.yaml\n",
    "undefined-alias": b"device_id: *nope\n",
    "duplicate-anchor": b"a: &x 1\nb: &x 2\n",
    "recursive-merge": b"device_id: x\nservice: &s\n  <<: *s\n  state_dir: [x]\n",
    "self-alias": b"device_id: x\nservice: &s {a: *s}\n",
    "merge-of-scalar": b"device_id: x\nservice: {<<: 3}\n",
    "deep-list": b"device_id: x\nservice: " + b"[" * 3000 + b"]" * 3000 + b"\n",
    "deep-map": b"device_id: x\nlogging: " + b"{a: " * 3000 + b"1" + b"}" * 3000 + b"\n",
    "deep-block": b"device_id: x\n" + b"".join(b"  " * i + b"k:\n" for i in range(2000)),
    "long-line": b"device_id: " + b"x" * 200_000 + b"\n",
    "too-big": b"# " + b"x" * (2 << 20) + b"\n",
    "many-keys": b"device_id: x\n" + b"".join(b"k%d: %d\n" % (i, i) for i in range(3000)),
    "billion-laughs": (
        b'device_id: x\nlogging:\n  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        b"  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
        b"  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
        b"  f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    ),
    "merge-bomb": b"device_id: x\nservice:\n  <<: &m0 {state_dir: /a}\n"
    + b"".join(b"  x%d: &m%d {<<: [%s]}\n" % (i, i, b", ".join([b"*m%d" % (i - 1)] * 10)) for i in range(1, 9))
    + b"logging:\n  <<: *m8\n",
    "windows-newlines": b"device_id: x\r\nservice:\r\n  stall_timeout_s: abc\r\n",
    "yaml-2-directive": b"%YAML 2.0\n---\ndevice_id: x\n",
    "document-end-junk": b"device_id: x\n...\njunk: [\n",
}


def _assert_clean(error: InvalidConfig, name: str) -> None:
    lines = str(error).splitlines()
    assert lines and len(lines) == len(error.problems)
    for line in lines:
        assert line.startswith(name + ":") and LINE.match(line), line
        assert len(line) < 600, line
    assert error.exit_code == 2


@pytest.mark.parametrize("case", sorted(HANDMADE))
def test_handmade_malformed_files(case, tmp_path):
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(HANDMADE[case])
    for root in ROOTS:
        with pytest.raises(InvalidConfig) as caught:
            load_file(path, root)
        _assert_clean(caught.value, str(path))


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.text(max_size=400))
def test_arbitrary_text(text):
    for root in ROOTS:
        try:
            load_text(text, root, "f.yaml")
        except InvalidConfig as error:
            _assert_clean(error, "f.yaml")


@FUZZ
@given(st.binary(max_size=400))
def test_arbitrary_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "b.yaml"
    path.write_bytes(data)
    for root in ROOTS:
        try:
            load_file(path, root)
        except InvalidConfig as error:
            _assert_clean(error, str(path))


# Plausible documents: real key names at random depths with values of random types, so the
# fuzzing reaches the type checks rather than stopping at the YAML parser.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=20),
    st.sampled_from(["info", "debug", "fast", "/var/lib/x", "hw:1,0", "mic-1", "1e999", "-0", "0x1F",
                     "/", "/dev/zero", "/dev/stdin", "/etc/shadow", "a\x00b", "..", "broker:1883", "ha/#"]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), children, max_size=6),
    ),
    max_leaves=30,
)


@FUZZ
@given(documents, st.sampled_from(["block", "flow"]), st.integers(min_value=0, max_value=400), st.sampled_from(["", "\t", ":", "- ", "&a ", "*a ", "{", "]", "'", "\x00"]))
def test_plausible_documents_with_damage(document, style, cut, junk):
    text = yaml.safe_dump(document, default_flow_style=(style == "flow"), allow_unicode=True)
    for variant in (text, text[:cut] + junk + text[cut:]):
        for root in ROOTS:
            try:
                load_text(variant, root, "p.yaml")
            except InvalidConfig as error:
                _assert_clean(error, "p.yaml")


# Near-valid documents: the full default configuration with a few values replaced, so every
# section's own checks (problems(), __post_init__) see odd but well-typed input too.
BASE = plain(load_text("device_id: x\n", Config))
replacements = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.sampled_from(KEYS), scalars, max_size=3))


@st.composite
def mutated_configs(draw):
    document = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        node = document
        while True:
            slots = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not slots:
                break
            slot = draw(st.sampled_from(slots))
            child = node[slot]
            if isinstance(child, (dict, list)) and child and draw(st.booleans()):
                node = child
                continue
            node[slot] = draw(replacements)
            break
    return document


@FUZZ
@given(mutated_configs())
def test_near_valid_configs(document):
    """Also with the checks of this machine: whatever the file names (a directory, a device,
    a name with a NUL), they give clean problems or warnings and never block."""
    text = yaml.safe_dump(document, sort_keys=False)
    for host in (None, Host(environ={"CREDENTIALS_DIRECTORY": "/nonexistent", "INVOCATION_ID": "1"}), Host(environ={})):
        warnings: list[str] = []
        try:
            load_text(text, Config, "m.yaml", host=host, warn=warnings.append)
        except InvalidConfig as error:
            _assert_clean(error, "m.yaml")
        assert all(line.startswith("m.yaml:") and LINE.match(line) and "\n" not in line for line in warnings)


CLI_CASES = ["empty", "tab-indent", "binary-junk", "latin-1", "unknown-keys", "duplicate-keys", "huge-int",
             "deep-list", "billion-laughs", "merge-bomb", "python-tag", "inline-password", "too-big", "two-documents"]


def test_check_config_command_on_malformed_files(tmp_path):
    """Through the real command: exit 2, a file:line: line per problem plus a count, no traceback."""
    for case in CLI_CASES:
        path = tmp_path / f"{case}.yaml"
        path.write_bytes(HANDMADE[case])
        result = subprocess.run(
            [sys.executable, "-m", "edgescribe.daemon.cli", "check-config", str(path)],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 2, (case, result.stderr)
        assert "Traceback" not in result.stderr, (case, result.stderr)
        *problems, summary = result.stderr.splitlines()
        assert problems and all(line.startswith(f"{path}:") and LINE.match(line) for line in problems), case
        assert summary == f"{path}: {len(problems)} problem{'s' if len(problems) > 1 else ''} found"
