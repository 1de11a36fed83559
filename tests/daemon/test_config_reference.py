"""The generated reference: checked-in files are current, and what they show actually loads."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import jsonschema
import yaml

from edgescribe.daemon.config import Config, load_config
from edgescribe.daemon.config.loader import load_text
from edgescribe.daemon.config.reference import (
    MARKDOWN_PATH,
    REGENERATE,
    REPO,
    SCHEMA_PATH,
    YAML_PATH,
    keys,
    main,
    outputs,
    render_json_schema,
    render_markdown,
    render_yaml,
    section_of,
)
from tests.fixtures.config_sections import Root, Stream, Tls


def test_checked_in_files_are_current():
    assert set(outputs()) == {YAML_PATH, MARKDOWN_PATH, SCHEMA_PATH}
    for path, text in outputs().items():
        assert path.read_text() == text, f"{path.name} is out of date: run {REGENERATE}"
    assert main([]) == 0


def test_shipped_config_loads_and_shows_the_defaults():
    # the files it names (the model package) exist only on an installed device
    config = load_config(YAML_PATH, check_host=False)
    for key in keys(Config):
        if key.example is None:
            assert getattr(config, key.name) == key.default, key.name


def test_shipped_config_is_valid_for_the_json_schema_and_the_schema_catches_mistakes():
    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    shipped = yaml.safe_load(YAML_PATH.read_text())
    assert list(validator.iter_errors(shipped)) == []
    mistakes = {**shipped, "mqtt": {**shipped["mqtt"], "port": 0, "hots": "x"}, "logging": {"level": "loud"}}
    found = sorted(list(error.absolute_path) for error in validator.iter_errors(mistakes))
    assert found == [["logging", "level"], ["mqtt"], ["mqtt", "port"]]
    assert "Allowed: an integer from 1 to 65535." in schema["$defs"]["MqttConfig"]["properties"]["port"]["description"]


def test_json_schema_of_a_test_schema():
    schema = json.loads(render_json_schema(Root))
    assert schema["required"] == ["device_id"] and schema["additionalProperties"] is False
    gain = schema["$defs"]["Stream"]["properties"]["gain_db"]
    assert gain == {"default": 0.0, "description": "Gain. Allowed: a number from -20 to 20 dB.", "maximum": 20,
                    "minimum": -20, "type": "number"}


def test_checking_the_shipped_config_is_quick():
    """Under a second of CPU, in a fresh interpreter (imports included); CPU time, so a busy
    test machine does not make it fail. The edgescribe command adds what its parser imports."""
    code = ("import argparse, sys; from edgescribe.daemon.config import check_command; "
            "sys.exit(check_command.run(argparse.Namespace(file=sys.argv[1], show=False)))")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run([sys.executable, "-c", code, str(YAML_PATH)], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # on a development machine the model package it names is missing: that is the one problem
    assert result.stderr.splitlines()[-1] == f"{YAML_PATH}: 1 problem found"
    assert cpu_s < 1.0, cpu_s


def _walk(cls, prefix=""):
    for key in keys(cls, prefix):
        yield key
        section, is_list = section_of(key)
        if section is not None:
            yield from _walk(section, key.path + ("[]." if is_list else "."))


def test_every_key_is_documented():
    undocumented = [key.path for key in _walk(Config) if not key.help.strip()]
    assert undocumented == []
    markdown = MARKDOWN_PATH.read_text()
    missing = [key.path for key in _walk(Config) if f"`{key.path}`" not in markdown]
    assert missing == []


def test_rendered_yaml_round_trips_with_examples():
    text = render_yaml(Root)
    assert load_text(text, Root) == Root(device_id="dev-1", streams=[Stream(name="mic-1")])
    assert "# Allowed: a number from -20 to 20 dB. Default: 0.0." in text


def test_commented_out_section_template_is_valid_when_uncommented():
    text = render_yaml(Root)
    block = text[text.index("  tls: null\n") :]
    block = block[: block.index("\n\n") + 1] if "\n\n" in block else block
    uncommented = "\n".join(line.replace("  # ", "  ", 1) for line in block.splitlines()[1:]) + "\n"
    enabled = text.replace(block, uncommented)
    assert load_text(enabled, Root).link.tls == Tls()


def test_markdown_has_every_key_of_a_test_schema():
    markdown = render_markdown(Root)
    for key in _walk(Root):
        assert f"`{key.path}`" in markdown, key.path
    assert "| `streams[].gain_db` | a number from -20 to 20 dB | `0.0` | Gain. |" in markdown
    assert "| `device_id` | text matching [A-Za-z0-9_-]{1,64} | **required** | Device id. Example: `dev-1`. |" in markdown
