"""Node and device figures for Sparkplug, read from the daemon's health snapshot.

The health reporter already gathers everything a Sparkplug host is shown (model, backend,
uptime, real-time factor, latency, temperatures, input levels); this reads its snapshot
(docs/schemas/health.json) so there is one source for those figures.
"""

from __future__ import annotations

from typing import Optional

from edgescribe.daemon.sparkplug.session import NodeStatus


def status_from_health(snapshot: dict, outbox_depth: int) -> tuple[NodeStatus, dict[str, Optional[float]]]:
    """(node figures, input level of each stream) of one health snapshot; sections the
    snapshot could not fill (null) leave their metrics null."""
    service = snapshot.get("service") or {}
    inference = snapshot.get("inference") or {}
    jetson = snapshot.get("jetson") or {}
    status = NodeStatus(
        model=service.get("model"),
        backend=service.get("backend"),
        uptime_s=float(snapshot.get("uptime_s") or 0.0),
        real_time_factor=inference.get("real_time_factor"),
        latency_p95_s=inference.get("latency_p95_s"),
        outbox_depth=outbox_depth,
        temperatures_c=dict(jetson.get("temperatures_c") or {}),
    )
    levels = {name: stream.get("level_dbfs") for name, stream in (snapshot.get("streams") or {}).items()}
    return status, levels
