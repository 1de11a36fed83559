#!/usr/bin/env python3
"""Draw config/grafana/edgescribe-dashboard.json's panels from a real Prometheus, without Grafana.

For docs/fleet-dashboard.png: Grafana is not packaged for Debian, npm or PyPI, so this
asks a running Prometheus for each panel's own query (instant for stat panels, a range for
time series, ``$instance`` as every device) and lays the answers out on the dashboard's
grid with matplotlib. It is a rendering of the dashboard's queries, not Grafana. Runs on a
workstation (system python3 with python3-matplotlib), not on the appliance:

    python3 scripts/render_dashboard.py --prometheus http://127.0.0.1:9090 --minutes 5 \\
        --out docs/fleet-dashboard.png
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UNITS = {"s": "s", "percent": "%", "celsius": "°C", "watt": "W", "dB": "dBFS", "none": ""}


def query(base: str, path: str, **params) -> list[dict]:
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise SystemExit(f"render_dashboard: Prometheus refused {params.get('query')}: {body.get('error')}")
    return body["data"]["result"]


def legend(template: str, labels: dict) -> str:
    for key, value in labels.items():
        template = template.replace("{{" + key + "}}", value)
    return template


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--dashboard", type=Path, default=REPO / "config" / "grafana" / "edgescribe-dashboard.json")
    parser.add_argument("--minutes", type=float, default=5.0, help="time range of the time-series panels")
    parser.add_argument("--end", type=float, help="end of the range (POSIX seconds; default now)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "fleet-dashboard.png")
    args = parser.parse_args()

    dashboard = json.loads(args.dashboard.read_text())
    end = args.end or time.time()
    start = end - args.minutes * 60
    step = max(1, int(args.minutes * 60 / 200))
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    figure = plt.figure(figsize=(16, rows * 0.42), facecolor="#111217")
    grid = figure.add_gridspec(rows, 24, hspace=0.0, wspace=0.0, left=0.01, right=0.99, top=0.94, bottom=0.01)
    stamp = datetime.fromtimestamp(end, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    figure.suptitle(f"{dashboard['title']}  ·  {args.dashboard.name} panels from Prometheus, drawn with matplotlib "
                    f"(not Grafana)  ·  {args.minutes:.0f} min to {stamp}", color="#d8d9da", fontsize=12)
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        cell = grid[pos["y"]: pos["y"] + pos["h"], pos["x"]: pos["x"] + pos["w"]].subgridspec(1, 1)[0]
        axes = figure.add_subplot(cell)
        axes.set_facecolor("#181b1f")
        box = axes.get_position()  # room for the title above and the tick labels left and below
        axes.set_position([box.x0 + box.width * 0.07, box.y0 + box.height * 0.08, box.width * 0.9, box.height * 0.76])
        axes.set_title(panel["title"], color="#d8d9da", fontsize=10, loc="left")
        unit = UNITS.get(panel["fieldConfig"]["defaults"].get("unit", "none"), "")
        target = panel["targets"][0]
        expr = target["expr"].replace("$instance", ".*")
        if panel["type"] == "stat":
            result = query(args.prometheus, "query", query=expr, time=end)
            value = float(result[0]["value"][1]) if result else float("nan")
            steps = panel["fieldConfig"]["defaults"].get("thresholds", {}).get("steps", [])
            colour = next((s["color"] for s in reversed(steps) if s["value"] is None or value >= s["value"]), "green")
            axes.text(0.5, 0.45, f"{value:g}{unit}", color={"green": "#73bf69", "red": "#f2495c",
                                                           "orange": "#ff9830"}.get(colour, "#73bf69"),
                      fontsize=28, ha="center", va="center", transform=axes.transAxes, weight="bold")
            axes.set_xticks([])
            axes.set_yticks([])
        else:
            result = query(args.prometheus, "query_range", query=expr, start=start, end=end, step=step)
            for series in result:
                times = [datetime.fromtimestamp(float(t), timezone.utc) for t, _ in series["values"]]
                values = [float(v) for _, v in series["values"]]
                axes.plot(times, values, linewidth=1.4, label=legend(target["legendFormat"], series["metric"]))
            if result:
                axes.legend(fontsize=7, loc="upper left", facecolor="#181b1f", labelcolor="#d8d9da", framealpha=0.6)
            else:
                axes.text(0.5, 0.5, "No data", color="#8e8e8e", ha="center", va="center", transform=axes.transAxes)
            axes.set_xlim(datetime.fromtimestamp(start, timezone.utc), datetime.fromtimestamp(end, timezone.utc))
            axes.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M" if args.minutes > 20 else "%H:%M:%S"))
            axes.tick_params(colors="#8e8e8e", labelsize=7)
            axes.set_ylabel(unit, color="#8e8e8e", fontsize=8)
            axes.grid(color="#2c3235", linewidth=0.5)
        for spine in axes.spines.values():
            spine.set_color("#2c3235")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=80, facecolor=figure.get_facecolor())
    print(f"render_dashboard: wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
