"""scripts/install.sh as far as it can run off a Jetson: clean refusals and a dry-run plan."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "scripts" / "install.sh"


def install(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIRTUAL_ENV")}
    return subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True, timeout=120, env=env)


def test_script_parses_and_passes_shellcheck():
    assert subprocess.run(["bash", "-n", str(INSTALL)], capture_output=True, timeout=30).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", str(INSTALL)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


@pytest.mark.skipif(Path("/etc/nv_tegra_release").exists(), reason="this is a Jetson")
def test_refuses_a_machine_that_is_not_a_jetson_in_one_line(tmp_path):
    result = install("--dry-run", "--root", str(tmp_path))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (
        f"install.sh: error: not a Jetson: {tmp_path}/etc/nv_tegra_release is missing "
        "(this installer is for Jetson Orin with JetPack 6)\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_refuses_an_older_jetpack(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text("# R35 (release), REVISION: 4.1, GCID: 1, BOARD: t186ref\n")
    result = install("--dry-run", "--root", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "install.sh: error: JetPack 6 (L4T R36) is required; /etc/nv_tegra_release says: "
        "# R35 (release), REVISION: 4.1, GCID: 1, BOARD: t186ref"
    ]


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path):
    result = install("--dry-run", "--skip-platform-check", "--root", str(tmp_path), "--model", "base")
    assert result.returncode == 0, result.stderr
    plan = result.stdout
    assert f"python3 -m venv --system-site-packages {tmp_path}/opt/edgescribe/venv" in plan
    assert f"pip install --quiet --upgrade {REPO}[jetson,systemd,models-base]" in plan
    assert f"would write {tmp_path}/etc/edgescribe/config.yaml" in plan
    assert "edgescribe export --source base --out" in plan
    assert "edgescribe build-engines --config" in plan
    assert f"install -D -m 0644 {REPO}/systemd/edgescribe.service {tmp_path}/etc/systemd/system/edgescribe.service" in plan
    assert "skipped (--root): systemctl enable edgescribe-engines.service edgescribe.service" in plan
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_dry_run_keeps_an_existing_config(tmp_path):
    (tmp_path / "etc" / "edgescribe").mkdir(parents=True)
    (tmp_path / "etc" / "edgescribe" / "config.yaml").write_text("device_id: mine\n")
    (tmp_path / "etc" / "edgescribe" / "mqtt-password").write_text("secret\n")
    result = install("--dry-run", "--skip-platform-check", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert f"keeping your {tmp_path}/etc/edgescribe/config.yaml" in result.stdout
    assert "LoadCredential=mqtt-password:/etc/edgescribe/mqtt-password" in result.stdout
    assert (tmp_path / "etc" / "edgescribe" / "config.yaml").read_text() == "device_id: mine\n"


def test_uninstall_dry_run_keeps_config_and_spool(tmp_path):
    for d in ("opt/edgescribe/venv", "etc/edgescribe", "var/lib/edgescribe/outbox", "var/lib/edgescribe/model", "var/cache/edgescribe"):
        (tmp_path / d).mkdir(parents=True)
    result = install("--dry-run", "--uninstall", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    removed = [line.split()[-1] for line in result.stdout.splitlines() if line.startswith("would run: rm -rf")]
    assert removed == [f"{tmp_path}/opt/edgescribe", f"{tmp_path}/var/cache/edgescribe", f"{tmp_path}/var/lib/edgescribe/model"]


def test_unknown_option_is_one_line():
    result = install("--frobnicate")
    assert (result.returncode, result.stderr) == (1, "install.sh: error: unknown option --frobnicate (see --help)\n")
