"""`edgescribe build-engines` as a user meets it (through daemon.cli.main), and its systemd unit.

The command (daemon/build_engines_command.py) reads the daemon's config; the building itself
is engines/tensorrt/build.py, tested in tests/engines/test_tensorrt_builder.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest

from edgescribe.daemon import cli
from edgescribe.daemon.build_engines_command import add_arguments, build_settings
from tests.conftest import REPO
from tests.fixtures.model_package import tiny_package  # noqa: F401 (fixture)

UNIT = REPO / "systemd" / "edgescribe-engines.service"


@pytest.fixture
def main(monkeypatch):
    """edgescribe.daemon.cli.main with only this subcommand registered (others may not be importable yet)."""
    monkeypatch.setattr(cli, "COMMANDS", {"build-engines": cli.COMMANDS["build-engines"]})
    return cli.main


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, never a traceback
    return err[0]


def test_without_tensorrt_the_command_fails_with_one_line(main, capsys, tiny_package, tmp_path):  # noqa: F811
    if shutil.which("nvidia-smi") or _has_tensorrt():
        pytest.skip("this machine has TensorRT")
    assert main(["build-engines", "--model", str(tiny_package.dir), "--out", str(tmp_path)]) == 1
    line = error_line(capsys)
    assert line.startswith("edgescribe build-engines: error: TensorRT is not installed for this Python")
    assert "--system-site-packages" in line
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_missing_model_and_out_is_a_usage_error(main, capsys):
    assert main(["build-engines"]) == 2
    assert error_line(capsys) == "edgescribe build-engines: error: build-engines needs --model and --out (or --config)"


def test_bad_package_dir_is_named(main, capsys, tmp_path):
    assert main(["build-engines", "--model", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 1
    assert error_line(capsys) == f"edgescribe build-engines: error: model package {tmp_path / 'nope'}: no such directory; run edgescribe export to create it"


def test_settings_the_model_cannot_take_are_refused_before_touching_the_gpu(main, capsys, tiny_package, tmp_path):  # noqa: F811
    assert main(["build-engines", "--model", str(tiny_package.dir), "--out", str(tmp_path), "--max-prompt-tokens", "449"]) == 2
    assert error_line(capsys).endswith(f"build-engines: model package {tiny_package.dir}: max_prompt_tokens 449 exceeds the model's text context 448")
    assert main(["build-engines", "--model", str(tiny_package.dir), "--out", str(tmp_path), "--max-batch", "0"]) == 2
    assert error_line(capsys).endswith("build-engines: max_batch must be at least 1")


def _has_tensorrt() -> bool:
    return importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_engines_unit_passes_systemd_analyze_verify_without_warnings(tmp_path):
    text = UNIT.read_text()
    assert "ExecStart=/opt/edgescribe/venv/bin/edgescribe build-engines --config /etc/edgescribe/config.yaml" in text
    assert "Type=oneshot" in text and "Before=edgescribe.service" in text
    # verify checks that ExecStart's binary exists: point it at one that does.
    unit = tmp_path / "edgescribe-engines.service"
    unit.write_text(text.replace("/opt/edgescribe/venv/bin/edgescribe", shutil.which("true")))
    result = verify(unit)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""
    # The check has teeth: a misspelt key is reported on stderr.
    unit.write_text(unit.read_text().replace("ProtectClock=yes", "ProtectClok=yes"))
    assert "ProtectClok" in verify(unit).stderr


def verify(unit) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)


def test_settings_come_from_the_config_engine_section(main, capsys, tiny_package, tmp_path):  # noqa: F811
    config = tmp_path / "config.yaml"
    config.write_text(f"device_id: line3\nmodels:\n  serving: {tiny_package.dir}\nengine:\n  max_batch: 2\n  max_prompt_tokens: 400\n")
    # Flags override the file: the file's 400 is fine, the flag's 449 is not.
    code = main(["build-engines", "--config", str(config), "--out", str(tmp_path / "e"), "--max-prompt-tokens", "449"])
    assert code == 2 and error_line(capsys).endswith("max_prompt_tokens 449 exceeds the model's text context 448")
    if not _has_tensorrt():
        # Past the settings and the package: it got as far as opening TensorRT.
        assert main(["build-engines", "--config", str(config), "--out", str(tmp_path / "e")]) == 1
        assert "TensorRT is not installed" in error_line(capsys)


def test_invalid_config_is_reported_by_the_loader(main, capsys, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("device_id: line3\nengine:\n  precision: fp8\n")
    assert main(["build-engines", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "precision" in err and "fp8" in err and "Traceback" not in err


def _settings_for(*argv: str):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return build_settings(parser.parse_args(list(argv)))


def _package_dir(path: Path) -> None:
    """Enough of a model package for the config loader, which checks that each one has a manifest."""
    path.mkdir(parents=True)
    (path / "manifest.json").write_text("{}")


def test_the_config_builds_every_package_the_daemon_may_serve(tmp_path):
    tiny, base = tmp_path / "m" / "tiny.en", tmp_path / "m" / "base"
    for package in (tiny, base):
        _package_dir(package)
    config = tmp_path / "config.yaml"
    config.write_text(f"device_id: line3\nmodels:\n  serving: {tiny}\n  upgrade: {base}\nengine:\n  engine_dir: /e\n")
    settings = _settings_for("--config", str(config))
    assert settings.package_dirs == [tiny, base]  # serving first: start-up needs it
    assert settings.engine_dir == Path("/e")
    # without an upgrade, only the serving package; --model builds just the one named
    config.write_text(f"device_id: line3\nmodels:\n  serving: {tiny}\n")
    assert _settings_for("--config", str(config)).package_dirs == [tiny]
    assert _settings_for("--config", str(config), "--model", "/x/small").package_dirs == [Path("/x/small")]


def test_a_missing_serving_package_is_named_from_the_config(main, capsys, tmp_path):
    _package_dir(tmp_path / "base")
    config = tmp_path / "config.yaml"
    config.write_text(f"device_id: line3\nmodels:\n  serving: {tmp_path / 'gone'}\n  upgrade: {tmp_path / 'base'}\n")
    assert main(["build-engines", "--config", str(config), "--out", str(tmp_path / "e")]) == 2
    assert error_line(capsys).startswith(f"edgescribe build-engines: error: {config}:3: models.serving: {tmp_path / 'gone'}: "
                                         "no such directory")


def test_the_old_package_key_names_the_new_one(main, capsys, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("device_id: line3\nengine:\n  package_dir: /var/lib/edgescribe/model\n")
    assert main(["build-engines", "--config", str(config)]) == 2
    assert error_line(capsys) == f"edgescribe build-engines: error: {config}:3: engine.package_dir: this key moved: set models.serving instead"
