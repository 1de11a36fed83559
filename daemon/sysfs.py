"""Jetson readings from sysfs/procfs: GPU load and clock, temperatures, power rails, GPU memory.

Every path is taken relative to ``root`` ("/" on a device) so tests read a recorded tree
(tests/data/orin-sysfs). A reading that is missing or unreadable is left out rather than
failing the health snapshot: kernels and modules differ in what they expose.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

# GPU load (per mille): gpu.0 on older L4T, the devfreq device itself on JetPack 6.
_GPU_LOAD = ("sys/devices/platform/gpu.0/load", "sys/devices/platform/bus@0/17000000.gpu/load",
             "sys/devices/gpu.0/load", "sys/devices/17000000.ga10b/load")
_GPU_DEVFREQ = ("sys/devices/platform/bus@0/17000000.gpu/devfreq/*", "sys/devices/platform/17000000.ga10b/devfreq/*",
                "sys/devices/17000000.ga10b/devfreq/*", "sys/class/devfreq/17000000.g*")
_INA3221 = ("sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*", "sys/bus/i2c/drivers/ina3221x/*/hwmon/hwmon*")
_THERMAL_OFFLINE = -256000  # zones without a sensor (cv0..2 on Orin NX/Nano) read this


@dataclass(frozen=True)
class PowerRail:
    name: str
    voltage_v: float
    current_ma: float
    power_mw: float


@dataclass(frozen=True)
class JetsonReadings:
    board: Optional[str]
    gpu_load_percent: Optional[float]
    gpu_freq_mhz: Optional[float]
    gpu_freq_max_mhz: Optional[float]
    gpu_shared_memory_mb: Optional[float]
    temperatures_c: dict[str, float] = field(default_factory=dict)
    power_rails: list[PowerRail] = field(default_factory=list)


def _read(path: Path) -> Optional[str]:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip().strip("\x00")
    except OSError:
        return None


def _read_number(path: Path) -> Optional[float]:
    text = _read(path)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _first(root: Path, patterns: tuple[str, ...]) -> Optional[Path]:
    for pattern in patterns:
        for match in sorted(root.glob(pattern)):
            return match
    return None


def read_meminfo(root: Path) -> dict[str, int]:
    """``/proc/meminfo`` as {field: kB}."""
    values = {}
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key.strip()] = int(parts[0])
    return values


def read_temperatures(root: Path) -> dict[str, float]:
    temperatures = {}
    for zone in sorted(root.glob("sys/class/thermal/thermal_zone*")):
        name, milli = _read(zone / "type"), _read_number(zone / "temp")
        if name and milli is not None and milli != _THERMAL_OFFLINE:
            temperatures[name] = round(milli / 1000.0, 2)
    return temperatures


def read_power_rails(root: Path) -> list[PowerRail]:
    rails = []
    for pattern in _INA3221:
        for hwmon in sorted(root.glob(pattern)):
            for label_file in sorted(hwmon.glob("in*_label")):
                channel = label_file.name[2:-len("_label")]
                millivolts = _read_number(hwmon / f"in{channel}_input")
                milliamps = _read_number(hwmon / f"curr{channel}_input")
                if millivolts is None or milliamps is None:
                    continue  # e.g. "sum of shunt voltages": no current, not a rail
                rails.append(PowerRail(name=_read(label_file) or f"in{channel}", voltage_v=round(millivolts / 1000, 3),
                                       current_ma=milliamps, power_mw=round(millivolts * milliamps / 1000, 1)))
    return rails


def read_jetson(root: Path = Path("/")) -> Optional[JetsonReadings]:
    """Jetson figures under ``root``, or None if this is not a Jetson (no GPU load node)."""
    root = Path(root)
    load_path = _first(root, _GPU_LOAD)
    if load_path is None:
        return None
    load = _read_number(load_path)
    devfreq = _first(root, _GPU_DEVFREQ)
    freq = _read_number(devfreq / "cur_freq") if devfreq else None
    freq_max = _read_number(devfreq / "max_freq") if devfreq else None
    nvmap_kb = read_meminfo(root).get("NvMapMemUsed")
    return JetsonReadings(
        board=_read(root / "proc/device-tree/model"),
        gpu_load_percent=None if load is None else round(load / 10.0, 1),
        gpu_freq_mhz=None if freq is None else round(freq / 1e6, 2),
        gpu_freq_max_mhz=None if freq_max is None else round(freq_max / 1e6, 2),
        gpu_shared_memory_mb=None if nvmap_kb is None else round(nvmap_kb / 1024, 1),
        temperatures_c=read_temperatures(root),
        power_rails=read_power_rails(root),
    )
