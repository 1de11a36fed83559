"""The generated reference: checked-in files are current, and what they show actually loads."""

from __future__ import annotations

import dataclasses

from edgescribe.daemon.config import Config, load_config
from edgescribe.daemon.config.loader import load_text
from edgescribe.daemon.config.reference import (
    MARKDOWN_PATH,
    REGENERATE,
    YAML_PATH,
    keys,
    main,
    outputs,
    render_markdown,
    render_yaml,
    section_of,
)
from tests.fixtures.config_sections import Root, Stream, Tls


def test_checked_in_files_are_current():
    for path, text in outputs().items():
        assert path.read_text() == text, f"{path.name} is out of date: run {REGENERATE}"
    assert main([]) == 0


def test_shipped_config_loads_and_shows_the_defaults():
    config = load_config(YAML_PATH)
    for field in dataclasses.fields(Config):
        if field.metadata.get("example") is None:
            default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
            assert getattr(config, field.name) == default, field.name


def _walk(cls, prefix=""):
    for key in keys(cls, prefix):
        yield key
        section, is_list = section_of(key.type)
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
    assert load_text(text, Root) == Root(device_id="dev-1", streams=[Stream("mic-1")])
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
