"""The fleet table: what each device last said on its availability and health topics.

Pure: the model is fed (topic, payload, retained, time) and asked for rows; the MQTT
client and the terminal live in fleet_command.py. A device is flagged when it says it is
not online (``offline`` is the broker-sent will, ``stopped`` a clean stop), when its
bridge to the plant broker is down, or when it has sent no health for ``stale_after_s``
(a device whose power or network died before its broker noticed, or whose daemon hangs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Optional

# Rails that measure the whole module's input on Jetson boards (Orin: VDD_IN; Xavier/Nano: POM_5V_IN);
# the other rails are parts of it, so adding them up would count power twice.
_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")


@dataclass(frozen=True)
class DeviceRow:
    device: str
    availability: Optional[str]  # online | offline | stopped | None (not heard yet)
    flag: str  # "" when healthy, else what is wrong in a few words
    streams_up: Optional[int]
    streams_total: Optional[int]
    model: Optional[str]
    backend: Optional[str]
    latency_p95_s: Optional[float]
    real_time_factor: Optional[float]
    outbox_depth: Optional[int]
    dropped_audio_s: Optional[float]
    temperature_c: Optional[float]  # hottest thermal zone
    power_w: Optional[float]  # module input rail (or the largest rail)
    health_age_s: Optional[float]  # seconds since the last health snapshot was taken


@dataclass
class _DeviceState:
    availability: Optional[str] = None
    bridge: Optional[str] = None  # "1" connected, "0" down (mosquitto bridge notifications)
    health: Optional[dict] = None
    health_time: Optional[float] = None  # POSIX time the snapshot stands for


def _posix(iso: object) -> Optional[float]:
    if not isinstance(iso, str):
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _number(value: object) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _section(health: dict, name: str) -> dict:
    value = health.get(name)
    return value if isinstance(value, dict) else {}


def _power_w(rails: object) -> Optional[float]:
    if not isinstance(rails, list):
        return None
    readings = {r.get("name"): _number(r.get("power_mw")) for r in rails if isinstance(r, dict)}
    readings = {name: mw for name, mw in readings.items() if mw is not None}
    if not readings:
        return None
    chosen = next((readings[name] for name in _INPUT_RAILS if name in readings), max(readings.values()))
    return round(chosen / 1000.0, 1)


class FleetModel:
    def __init__(self, prefix: str = "edgescribe", stale_after_s: float = 90.0):
        self.prefix = prefix
        self.stale_after_s = stale_after_s
        self._devices: dict[str, _DeviceState] = {}

    @property
    def topics(self) -> list[str]:
        return [f"{self.prefix}/+/availability", f"{self.prefix}/+/health", f"{self.prefix}/bridge/+"]

    def update(self, topic: str, payload: bytes, retained: bool, now: float) -> bool:
        """Take one message; False if it is not one of ours or cannot be read (it is ignored)."""
        parts = topic.split("/")
        if len(parts) != 3 or parts[0] != self.prefix:
            return False
        if parts[2] in ("availability", "health"):
            device, kind = parts[1], parts[2]
        elif parts[1] == "bridge":  # <prefix>/bridge/<device_id>: the state of its mosquitto bridge
            device, kind = parts[2], "bridge"
        else:
            return False
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return False
        if kind == "health":
            try:
                health = json.loads(text) if text else None
            except ValueError:
                return False
            if health is not None and not isinstance(health, dict):
                return False
            state = self._devices.setdefault(device, _DeviceState())
            state.health = health
            # A live snapshot is as fresh as its arrival (device clocks may be off); a retained
            # one is as old as it says it is, which is what tells a long-dead device apart.
            stamped = _posix(health.get("time")) if health else None
            if health is None:  # the retained snapshot was cleared
                state.health_time = None
            else:
                state.health_time = min(stamped, now) if retained and stamped is not None else now
            return True
        state = self._devices.setdefault(device, _DeviceState())
        if kind == "availability":
            state.availability = text or None
        else:
            state.bridge = text or None
        return True

    def rows(self, now: float) -> list[DeviceRow]:
        """One row per device heard of; flagged devices first, then by name."""
        rows = [self._row(device, state, now) for device, state in self._devices.items()]
        return sorted(rows, key=lambda row: (row.flag == "", row.device))

    def _row(self, device: str, state: _DeviceState, now: float) -> DeviceRow:
        health = state.health or {}
        service, inference = _section(health, "service"), _section(health, "inference")
        outbox, jetson = _section(health, "outbox"), _section(health, "jetson")
        streams = [s for s in _section(health, "streams").values() if isinstance(s, dict)]
        dropped = [_number(s.get("dropped_audio_s")) for s in streams]
        temperatures = [t for t in (_number(v) for v in (jetson.get("temperatures_c") or {}).values()) if t is not None]
        age = None if state.health_time is None else max(0.0, now - state.health_time)
        return DeviceRow(
            device=device,
            availability=state.availability,
            flag=self._flag(state, age),
            streams_up=sum(1 for s in streams if s.get("state") == "up") if state.health else None,
            streams_total=len(streams) if state.health else None,
            model=service.get("model"),
            backend=service.get("backend"),
            latency_p95_s=_number(inference.get("latency_p95_s")),
            real_time_factor=_number(inference.get("real_time_factor")),
            outbox_depth=outbox.get("depth") if isinstance(outbox.get("depth"), int) else None,
            dropped_audio_s=round(sum(d for d in dropped if d is not None), 2) if streams else None,
            temperature_c=max(temperatures) if temperatures else None,
            power_w=_power_w(jetson.get("power_rails")),
            health_age_s=None if age is None else round(age, 1),
        )

    def _flag(self, state: _DeviceState, age: Optional[float]) -> str:
        if state.availability in ("offline", "stopped"):
            return state.availability.upper()
        if state.bridge == "0":
            return "BRIDGE DOWN"
        if age is None:
            return "NO HEALTH"
        if age > self.stale_after_s:
            return "SILENT"
        streams = [s for s in _section(state.health or {}, "streams").values() if isinstance(s, dict)]
        if any(s.get("state") != "up" for s in streams):
            return "STREAM DOWN"
        return ""


# column title, width, how a row shows it
_COLUMNS = (
    ("DEVICE", 18, lambda r: r.device),
    ("STATE", 8, lambda r: r.availability or "?"),
    ("FLAG", 11, lambda r: r.flag),
    ("STREAMS", 7, lambda r: "-" if r.streams_total is None else f"{r.streams_up}/{r.streams_total}"),
    ("MODEL", 14, lambda r: r.model or "-"),
    ("BACKEND", 11, lambda r: r.backend or "-"),
    ("P95", 6, lambda r: _fmt(r.latency_p95_s, "{:.2f}s")),
    ("RTF", 5, lambda r: _fmt(r.real_time_factor, "{:.2f}")),
    ("OUTBOX", 6, lambda r: _fmt(r.outbox_depth, "{}")),
    ("DROPPED", 7, lambda r: _fmt(r.dropped_audio_s, "{:.1f}s")),
    ("TEMP", 5, lambda r: _fmt(r.temperature_c, "{:.0f}C")),
    ("POWER", 6, lambda r: _fmt(r.power_w, "{:.1f}W")),
    ("LAST", 6, lambda r: _age(r.health_age_s)),
)


def _fmt(value, template: str) -> str:
    return "-" if value is None else template.format(value)


def _age(seconds: Optional[float]) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def table_lines(rows: list[DeviceRow]) -> list[str]:
    """The plain table: a header line, then one line per row (cells cut to their column)."""
    def line(cells) -> str:
        return " ".join(str(cell)[:width].ljust(width) for cell, (_, width, _) in zip(cells, _COLUMNS)).rstrip()

    return [line(title for title, _, _ in _COLUMNS)] + [line(show(row) for _, _, show in _COLUMNS) for row in rows]


def summary_line(rows: list[DeviceRow]) -> str:
    flagged = sum(1 for row in rows if row.flag)
    return f"{len(rows)} devices, {len(rows) - flagged} ok, {flagged} flagged"


def rows_json(rows: list[DeviceRow]) -> str:
    return json.dumps([asdict(row) for row in rows], indent=1)
