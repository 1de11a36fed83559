"""Configuration section: sparkplug (the Sparkplug B edge node, docs/sparkplug.md).

Sparkplug ids are single topic levels: UTF-8 without '/', '+', '#' (spec 4.1.1); control
characters are refused too, as for every topic name edgescribe makes.
"""

from __future__ import annotations

from edgescribe.daemon.config.schema import Section, setting

SPARKPLUG_ID_PATTERN = r"[^/+#\x00-\x1f\x7f]{1,64}"
SPARKPLUG_ID_TEXT = "1-64 characters without '/', '+', '#' or control characters"


class SparkplugConfig(Section):
    enabled: bool = setting(
        False, "Also publish as a Sparkplug B edge node (spBv1.0/...), each stream a device, on its own "
        "connection to the mqtt broker; the JSON topics stay as they are.")
    group_id: str = setting("edgescribe", "Sparkplug group id: the first level under spBv1.0/.",
                            example="line3", pattern=SPARKPLUG_ID_PATTERN, pattern_text=SPARKPLUG_ID_TEXT)
    edge_node_id: str = setting("", "Sparkplug edge node id; empty means device_id.",
                                pattern=f"|{SPARKPLUG_ID_PATTERN}", pattern_text=SPARKPLUG_ID_TEXT)
    primary_host_id: str = setting(
        "", "Host id of the primary host application (SCADA) whose spBv1.0/STATE/<id> this node follows.",
        example="scada1", pattern=f"|{SPARKPLUG_ID_PATTERN}", pattern_text=SPARKPLUG_ID_TEXT)
    wait_for_primary_host: bool = setting(
        False, "Birth only while the primary host says it is online; while it is offline, finals are kept "
        "in the outbox and sent as historical metrics when it is back.")

    def problems(self) -> list[tuple[str, str]]:
        if self.wait_for_primary_host and not self.primary_host_id:
            return [("wait_for_primary_host", "needs primary_host_id (the host whose STATE to wait for)")]
        return []
