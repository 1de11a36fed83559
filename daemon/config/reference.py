"""Generate the configuration reference from the section models.

Three outputs, all checked in and all kept current by a test:

* ``config/edgescribe.yaml`` - the commented example a technician edits (installed as
  ``/etc/edgescribe/config.yaml``); every key with its help, allowed values and default.
* ``docs/configuration.md`` - the same as tables.
* ``docs/schemas/config.json`` - the JSON Schema (pydantic's, with each description
  completed), so an editor with yaml-language-server completes and checks the file as
  it is typed.

Regenerate after changing a section: ``python -m edgescribe.daemon.config.reference --write``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import textwrap
from pathlib import Path
from typing import Any, Iterator

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from edgescribe.daemon.config import LIVE_KEYS, Config
from edgescribe.daemon.config.schema import Spec, describe, field_spec, is_section, item_spec

REPO = Path(__file__).resolve().parents[2]
YAML_PATH = REPO / "config" / "edgescribe.yaml"
MARKDOWN_PATH = REPO / "docs" / "configuration.md"
SCHEMA_PATH = REPO / "docs" / "schemas" / "config.json"
WIDTH = 92
REGENERATE = "python -m edgescribe.daemon.config.reference --write"
MISSING = dataclasses.MISSING  # the default of a required key


@dataclasses.dataclass(frozen=True)
class Key:
    """One documented key: where it sits, what it must be, its help and default."""

    path: str  # "service.state_dir", "streams[].name"
    name: str
    spec: Spec
    info: FieldInfo
    default: Any  # MISSING when required

    @property
    def help(self) -> str:
        return self.info.description or ""

    @property
    def example(self) -> Any:
        return self.info.examples[0] if self.info.examples else None

    @property
    def shows_example(self) -> bool:
        """The generated config shows the example where there is no usable default: a required
        key, or an empty list of sections (so the file works as it is and shows an item's shape)."""
        if self.example is None:
            return False
        return self.default is MISSING or (self.default == [] and section_of(self)[1])

    @property
    def shown(self) -> Any:
        return self.example if self.shows_example else self.default


def keys(cls: type[BaseModel], prefix: str = "") -> Iterator[Key]:
    for name, info in cls.model_fields.items():
        default = MISSING if info.is_required() else info.get_default(call_default_factory=True)
        yield Key(prefix + name, name, field_spec(info), info, default)


def section_of(key: Key) -> tuple[type | None, bool]:
    """(model, is_list) when ``key`` holds a section or a list of sections."""
    if is_section(key.spec.type):
        return key.spec.type, False
    item = item_spec(key.spec).type
    if key.spec.type is not item and is_section(item):
        return item, True
    return None, False


def _default_text(value: Any) -> str:
    return '"" (empty)' if value == "" else scalar_yaml(value)


def scalar_yaml(value: Any) -> str:
    """``value`` as it would be typed in YAML (flow style for short lists and mappings)."""
    if isinstance(value, BaseModel):
        value = plain(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True, width=1000, sort_keys=False).strip()
    text = yaml.safe_dump(value, width=1000)
    return text.removesuffix("\n...\n").strip()


def plain(value: Any) -> Any:
    """Sections as dicts and paths as text, so ``yaml.safe_dump`` can write any config value."""
    if isinstance(value, BaseModel):
        return {name: plain(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------- commented YAML


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}".rstrip() for line in textwrap.wrap(text, WIDTH - len(indent) - 2, break_on_hyphens=False) or [""]]


def _key_comment(key: Key, indent: str) -> list[str]:
    lines = _comment(key.help, indent) if key.help else []
    section, is_list = section_of(key)
    if section is not None:
        if is_list and key.shows_example:
            lines += _comment(f"Default: {scalar_yaml(key.default)} (an example is shown).", indent)
        elif key.default is None:
            lines += _comment("Default: null (off); the keys it takes are shown commented out.", indent)
    else:
        facts = f"Allowed: {describe(key.spec)}."
        if key.default is MISSING:
            facts += " Required."
        elif key.shows_example:
            facts += f" Default: {scalar_yaml(key.default)} (an example is shown)."
        else:
            facts += f" Default: {_default_text(key.default)}."
            if key.example is not None:
                facts += f" Example: {scalar_yaml(key.example)}"
        lines += _comment(facts, indent)
    return lines


def yaml_lines(cls: type, instance: Any, indent: str, documented: bool = True) -> list[str]:
    """The keys of section ``cls`` with the values of ``instance`` (None: shown values)."""
    lines: list[str] = []
    for key in keys(cls):
        value = getattr(instance, key.name) if instance is not None else key.shown
        if documented:
            lines += _key_comment(key, indent)
        lines += _value_lines(key, value, indent, documented)
        if documented and indent == "":
            lines.append("")
    return lines


def _value_lines(key: Key, value: Any, indent: str, documented: bool) -> list[str]:
    section, is_list = section_of(key)
    if section is None or value is MISSING:
        return [f"{indent}{key.name}: {scalar_yaml(value)}"]
    if not is_list:
        if value is None:
            template = _template(section, indent, as_list=False)
            return [f"{indent}{key.name}: null"] + _commented([f"{indent}{key.name}:"] + template, indent)
        return [f"{indent}{key.name}:"] + yaml_lines(section, value, indent + "  ", documented)
    items = [_as_instance(section, item) for item in value]
    if not items:
        # Show the shape of an item anyway, commented out, so the technician can copy it.
        template = _template(section, indent)
        lines = [f"{indent}{key.name}: []"]
        if template:
            lines += _commented([f"{indent}{key.name}:"] + template, indent)
        return lines
    lines = [f"{indent}{key.name}:"]
    for number, item in enumerate(items):
        body = yaml_lines(section, item, indent + "    ", documented and number == 0)
        lines += _as_list_item(body, indent + "  ")
    return lines


def _as_list_item(body: list[str], indent: str) -> list[str]:
    """Turn the first key line of an item's block into ``- key: value``; comments stay above it."""
    out = []
    dashed = False
    for line in body:
        if not dashed and not line.lstrip().startswith("#"):
            out.append(f"{indent}- {line.lstrip()}")
            dashed = True
        elif not dashed:
            out.append(indent + line.lstrip() if line.strip() else line)
        else:
            out.append(line)
    return out


def _as_instance(cls: type, item: Any) -> Any:
    return cls(**item) if isinstance(item, dict) else item


def _commented(lines: list[str], indent: str) -> list[str]:
    return [f"{indent}# {line[len(indent):]}" for line in lines]


def _template(cls: type, indent: str, as_list: bool = True) -> list[str]:
    """A ``cls`` as it would sit under its key at ``indent`` (to be commented out): one list item,
    or the section's keys."""
    # required keys show their declared examples; the rest their defaults
    instance = cls.model_construct(**{k.name: k.shown for k in keys(cls) if k.shown is not MISSING})
    if not as_list:
        return [line for line in yaml_lines(cls, instance, indent + "  ", documented=True) if line.strip()]
    body = [line for line in yaml_lines(cls, instance, indent + "    ", documented=True) if line.strip()]
    return _as_list_item(body, indent + "  ")


def render_yaml(root: type) -> str:
    header = [
        "# edgescribe configuration (installed as /etc/edgescribe/config.yaml).",
        "#",
        "# Every key is optional except device_id; the values below are the defaults unless the",
        "# comment says an example is shown. Validate after editing:",
        "#     edgescribe check-config /etc/edgescribe/config.yaml",
        "# then apply with: sudo systemctl restart edgescribe",
        "# Secrets never go in this file: use password_file (or a systemd credential).",
        "# Editors with yaml-language-server (VS Code's YAML extension) complete and check this",
        "# file as it is typed with the JSON Schema docs/schemas/config.json (docs/configuration.md).",
        f"# Generated from the section models by `{REGENERATE}`.",
        "",
    ]
    return "\n".join(header + yaml_lines(root, None, "")).rstrip("\n") + "\n"


# ---------------------------------------------------------------- Markdown


def _md(text: str) -> str:
    """Table-cell text: pipes escaped, and <prefix> kept visible instead of read as an HTML tag."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")


def _md_default(key: Key) -> str:
    if key.default is MISSING:
        return "**required**"
    section, is_list = section_of(key)
    if section is not None and not is_list and key.default is not None:
        return "(section)"
    return f"`{_md(scalar_yaml(key.default))}`"


def _md_items(cls: type, items: list) -> str:
    """A default list of sections, each item reduced to the keys that differ from the item defaults."""
    defaults = {k.name: k.default for k in keys(cls)}
    reduced = [{n: v for n, v in plain(item).items() if plain(defaults[n]) != v} for item in items]
    return scalar_yaml(reduced)


def _md_row(key: Key) -> str:
    text = key.help
    if key.example is not None:
        text += f" Example: `{scalar_yaml(key.example)}`."
    return f"| `{key.path}` | {_md(describe(key.spec))} | {_md_default(key)} | {_md(text)} |"


def _md_rows(cls: type, prefix: str) -> list[str]:
    rows = []
    nested = []
    for key in keys(cls, prefix):
        section, is_list = section_of(key)
        if section is not None:
            nested.append((key, section, is_list))
            if not is_list and key.default is not None:
                continue
        rows.append(_md_row(key))
    for key, section, is_list in nested:
        rows += _md_rows(section, key.path + ("[]." if is_list else "."))
    return rows


def render_markdown(root: type) -> str:
    out = [
        "# Configuration reference",
        "",
        f"<!-- Generated by `{REGENERATE}` from the section models; do not edit. -->",
        "",
        "edgescribe reads one YAML file, `/etc/edgescribe/config.yaml` (the commented example is",
        "[`config/edgescribe.yaml`](../config/edgescribe.yaml)). Every key has a default except",
        "`device_id`. Check a file before restarting the service:",
        "",
        "```",
        "edgescribe check-config /etc/edgescribe/config.yaml",
        "```",
        "",
        "Every problem is reported at once, one line each, as `file:line: key.path: got ...; expected ...`,",
        "and the command exits with status 2; the daemon refuses to start on the same problems, because",
        "`edgescribe run` loads the file through the same validation. Besides the values, it checks what",
        "it can without starting anything: the files the configuration names exist and are readable",
        "(password file, TLS files, stream WAV files, the VAD model, the model packages), topic prefixes",
        "are valid MQTT topic levels, and no two streams use one capture device. What deserves a word",
        "without being wrong (a password sent to a remote broker without TLS, a password file every",
        "user can read) is printed as a `warning:` line; under systemd a password file every user can",
        "read is refused.",
        "Unknown keys are errors (with a suggestion when one is close), and so are duplicate keys.",
        "A key that moved is an error naming the key to set instead (see [Keys that moved](#keys-that-moved)).",
        "Text keys take what was typed: `language: no` stays the text `no`.",
        "",
        "Secrets are never written in this file. The MQTT password is read from `mqtt.password_file`",
        "(a file readable only by root and the service) or from a systemd credential named by",
        "`mqtt.password_credential` (`LoadCredential=`, read from `$CREDENTIALS_DIRECTORY`); an inline",
        "`password:` key is rejected with these instructions. See [install.md](install.md).",
        "",
        "## Changing the file on a running device",
        "",
        "`systemctl reload edgescribe` (SIGHUP) re-reads and checks the file. An invalid file is",
        "rejected with the lines above and the daemon keeps running as it was. "
        + ", ".join(f"`{key}`" for key in LIVE_KEYS)
        + " take effect at once; a change to any other key is named in one log line and takes",
        "`systemctl restart edgescribe` (the restart loses no transcript: see docs/mqtt.md).",
        "",
        "## Completion and checking in an editor",
        "",
        "[`docs/schemas/config.json`](schemas/config.json) is the JSON Schema of this file, generated",
        "from the same models. With yaml-language-server (VS Code's YAML extension, Neovim, Helix...),",
        "put this line at the top of the configuration, pointing at a copy of the schema:",
        "",
        "```yaml",
        "# yaml-language-server: $schema=/path/to/config.json",
        "```",
        "",
        "or map it in the editor settings (VS Code: `\"yaml.schemas\": {\"/path/to/config.json\":",
        "\"/etc/edgescribe/config.yaml\"}`). The editor then completes keys, shows each key's",
        "description and flags unknown keys and out-of-range values as you type. It checks values",
        "only: `edgescribe check-config` remains the authority (files, cross-key rules, moved keys).",
        "",
    ]
    top = [k for k in keys(root) if section_of(k)[0] is None]
    if top:
        out += ["## Top level", "", "| key | allowed values | default | description |", "|---|---|---|---|"]
        out += [_md_row(k) for k in top]
        out.append("")
    for key in keys(root):
        section, is_list = section_of(key)
        if section is None:
            continue
        title = f"`{key.name}` (a list; each item has the keys below)" if is_list else f"`{key.name}`"
        out += [f"## {title}", ""]
        if key.help:
            out += [key.help, ""]
        if is_list and key.default:
            out += [f"Default: `{_md_items(section, key.default)}`", ""]
        out += ["| key | allowed values | default | description |", "|---|---|---|---|"]
        out += _md_rows(section, key.name + ("[]." if is_list else "."))
        out.append("")
    moved = getattr(root, "moved_keys", {})
    if moved:
        out += ["## Keys that moved", "",
                "Older files may use these keys; they are rejected with the key to set instead.", "",
                "| old key | set instead |", "|---|---|"]
        out += [f"| `{old}` | `{new}` |" for old, new in moved.items()]
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


# ---------------------------------------------------------------- JSON Schema


def render_json_schema(root: type[BaseModel]) -> str:
    """pydantic's JSON Schema of ``root``, each key's description completed with what it allows
    (editors show it on hover) and the documentation-only extras taken out."""
    schema = root.model_json_schema()
    _describe_keys(schema, schema, root)
    _tidy(schema)
    out = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "edgescribe configuration (/etc/edgescribe/config.yaml)",
        **schema,
    }
    return json.dumps(out, indent=2, ensure_ascii=False) + "\n"


def _describe_keys(document: dict, node: dict, cls: type[BaseModel]) -> None:
    for key in keys(cls):
        prop = node["properties"][key.name]
        section, _ = section_of(key)
        if section is not None:
            prop["description"] = key.help
            _describe_keys(document, document["$defs"][section.__name__], section)
        else:
            prop["description"] = f"{key.help} Allowed: {describe(key.spec)}."


def _tidy(node: Any, mapping_of_schemas: bool = False) -> None:
    if isinstance(node, list):
        for item in node:
            _tidy(item)
    elif isinstance(node, dict):
        if not mapping_of_schemas:
            for extra in ("title", "unit", "pattern_text"):
                if not isinstance(node.get(extra), dict):
                    node.pop(extra, None)
        for name, value in node.items():
            _tidy(value, mapping_of_schemas=name in ("properties", "$defs") and not mapping_of_schemas)


# ---------------------------------------------------------------- command line


def outputs() -> dict[Path, str]:
    return {
        YAML_PATH: render_yaml(Config),
        MARKDOWN_PATH: render_markdown(Config),
        SCHEMA_PATH: render_json_schema(Config),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="generate config/edgescribe.yaml, docs/configuration.md and docs/schemas/config.json")
    parser.add_argument("--write", action="store_true", help="write the files (default: report stale ones)")
    args = parser.parse_args(argv)
    stale = [path for path, text in outputs().items() if not path.is_file() or path.read_text() != text]
    if args.write:
        for path, text in outputs().items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path.relative_to(REPO)}")
        return 0
    for path in stale:
        print(f"{path.relative_to(REPO)} is out of date; run {REGENERATE}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
