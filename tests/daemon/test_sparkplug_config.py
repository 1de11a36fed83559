"""The sparkplug: section loads like every other: one line per problem, naming the key."""

from __future__ import annotations

import pytest

from edgescribe.daemon.config import InvalidConfig, load_config


def load(tmp_path, section: str):
    path = tmp_path / "config.yaml"
    path.write_text(f"device_id: press-1\nsparkplug:\n{section}")
    return load_config(path, check_host=False)


def test_defaults_and_a_full_section(tmp_path):
    config = load(tmp_path, "  enabled: true\n  group_id: Line 3\n  primary_host_id: scada1\n"
                            "  wait_for_primary_host: true\n")
    assert (config.sparkplug.group_id, config.sparkplug.edge_node_id, config.sparkplug.primary_host_id) == \
        ("Line 3", "", "scada1")
    assert not load(tmp_path, "  {}\n").sparkplug.enabled


@pytest.mark.parametrize("section,expected", [
    ("  wait_for_primary_host: true\n", "sparkplug.wait_for_primary_host: needs primary_host_id"),
    ("  group_id: line/3\n", "sparkplug.group_id"),
    ("  edge_node_id: 'press#1'\n", "sparkplug.edge_node_id"),
])
def test_problems_name_the_key(tmp_path, section, expected):
    with pytest.raises(InvalidConfig) as error:
        load(tmp_path, section)
    assert expected in str(error.value)
    assert "config.yaml:" in str(error.value) and "Traceback" not in str(error.value)
