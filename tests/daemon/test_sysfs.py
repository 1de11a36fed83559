"""Jetson readings from the reconstructed Orin NX tree in tests/data/orin-sysfs."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgescribe.daemon.sysfs import PowerRail, read_jetson, read_meminfo, read_power_rails, read_temperatures

ORIN = Path(__file__).resolve().parents[1] / "data" / "orin-sysfs"


def test_gpu_load_frequency_board_and_shared_memory():
    readings = read_jetson(ORIN)
    assert readings.board == "NVIDIA Jetson Orin NX Engineering Reference Developer Kit"
    assert readings.gpu_load_percent == 43.7  # load file is per mille
    assert readings.gpu_freq_mhz == 624.75 and readings.gpu_freq_max_mhz == 918.0
    assert readings.gpu_shared_memory_mb == round(987432 / 1024, 1)  # NvMapMemUsed


def test_temperatures_skip_zones_without_a_sensor():
    temperatures = read_temperatures(ORIN)
    assert temperatures["cpu-thermal"] == 48.59 and temperatures["tj-thermal"] == 48.59
    assert "cv0-thermal" not in temperatures  # reads -256000 on Orin NX
    assert set(temperatures) == {"cpu-thermal", "gpu-thermal", "soc0-thermal", "soc1-thermal", "soc2-thermal",
                                 "tj-thermal"}


def test_power_rails_in_volts_milliamps_milliwatts():
    assert read_power_rails(ORIN) == [
        PowerRail("VDD_IN", 5.072, 1427.0, 7237.7),
        PowerRail("VDD_CPU_GPU_CV", 5.064, 571.0, 2891.5),
        PowerRail("VDD_SOC", 5.064, 310.0, 1569.8),
    ]  # "sum of shunt voltages" has no current and is not a rail


def test_meminfo_parses_kilobytes():
    assert read_meminfo(ORIN)["MemTotal"] == 15655356


def test_not_a_jetson_gives_none(tmp_path):
    assert read_jetson(tmp_path) is None


def test_missing_pieces_are_left_out(tmp_path):
    shutil.copytree(ORIN, tmp_path / "root")
    shutil.rmtree(tmp_path / "root" / "sys" / "bus")
    (tmp_path / "root" / "sys/devices/platform/bus@0/17000000.gpu/devfreq/17000000.gpu/cur_freq").write_text("garbage")
    readings = read_jetson(tmp_path / "root")
    assert readings.power_rails == [] and readings.gpu_freq_mhz is None and readings.gpu_load_percent == 43.7
