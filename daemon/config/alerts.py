"""Configuration section: alerts (phrase alerts, daemon/alerts.py, docs/mqtt.md "Alerts").

Phrase alerts are a convenience for operators, not a safety function: see docs/mqtt.md.
"""

from __future__ import annotations

from edgescribe.daemon.config.schema import Section, setting

ALERT_NAME_PATTERN = r"[a-z0-9][a-z0-9_]{0,63}"
ALERT_NAME_TEXT = "1-64 lowercase letters, digits and '_', starting with a letter or digit"


class AlertRule(Section):
    name: str = setting(
        help="Names the alert in its payloads, in Home Assistant and in the metrics; unique per device.",
        pattern=ALERT_NAME_PATTERN,
        pattern_text=ALERT_NAME_TEXT,
        example="stop_line",
    )
    phrases: list[str] = setting(
        help="Any of these phrases raises the alert, in any language the model speaks. Case and "
        "punctuation are ignored; Chinese, Japanese and Korean are matched character by character.",
        example=["stop the line", "line stop"],
    )
    tolerance: float = setting(
        0.2,
        "Errors allowed in a match, as a fraction of the phrase's characters (edit distance, also "
        "across word boundaries); 0 matches the words exactly. Higher catches more of what a small "
        "model mishears, and more false alerts.",
        min=0.0,
        max=0.5,
    )
    streams: list[str] = setting(
        default_factory=list,
        help="Stream names this alert listens to; empty for every stream of the device.",
        example=["press"],
    )

    def problems(self) -> list[tuple[str, str]]:
        found = []
        if not self.phrases:
            found.append(("phrases", "needs at least one phrase"))
        if any(not phrase.strip() for phrase in self.phrases):
            found.append(("phrases", "phrases must not be empty strings"))
        return found


class AlertsConfig(Section):
    rules: list[AlertRule] = setting(
        default_factory=list,
        help="Named phrase alerts, published on <prefix>/<device_id>/alert early (from a partial) and "
        "then confirmed or retracted by the final. Not a safety function.",
        example=[{"name": "stop_line", "phrases": ["stop the line"]}],
    )
    hotwords: bool = setting(
        True,
        "Also give every alert phrase to Whisper as a hotword (in its prompt) on the streams the "
        "alert listens to, so it is more likely to be written as configured.",
    )

    def problems(self) -> list[tuple[str, str]]:
        found = []
        seen: set[str] = set()
        for index, rule in enumerate(self.rules):
            if rule.name in seen:
                found.append((f"rules[{index}].name", f"{rule.name!r} is already the name of another alert"))
            seen.add(rule.name)
        return found

    def unknown_streams(self, stream_names: list[str]) -> list[tuple[str, str]]:
        """Streams an alert names that the configuration does not have (key relative to this section)."""
        return [(f"rules[{index}].streams", f"{stream!r} is not a configured stream ({', '.join(stream_names)})")
                for index, rule in enumerate(self.rules) for stream in rule.streams if stream not in stream_names]
