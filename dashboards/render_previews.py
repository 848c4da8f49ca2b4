"""Render docs/dashboard-*.png: each dashboard's panels drawn from a live run.

    pip install matplotlib
    python -m dashboards.render_previews            # about 3 minutes
    python -m dashboards.render_previews --seconds 60

The run is the live test's (dashboards/live.py): the instrumented demo app on uvicorn, the
same kinds of requests, and a real ``prometheus`` scraping it every second; only longer,
with a slow spell in the middle so the charts have something to show. Every panel query
then goes to Prometheus' ``/api/v1/query_range`` exactly as Grafana would send it, and
matplotlib draws the result on the dashboard's own grid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from dashboards import live

ROOT = live.HERE.parent
OUTPUT = {
    "streaming-overview": ROOT / "docs" / "dashboard-streaming-overview.png",
    "llm-streams": ROOT / "docs" / "dashboard-llm-streams.png",
}
STEP = 2.0
RATE_INTERVAL = "20s"

# Grafana's dark theme.
BACKGROUND = "#111217"
PANEL = "#181b1f"
BORDER = "#2a2d32"
TEXT = "#ccccdc"
MUTED = "#8e8e9e"
GRID = "#25282d"
NAMED = {
    "green": "#73bf69",
    "yellow": "#fade2a",
    "blue": "#5794f2",
    "orange": "#ff9830",
    "red": "#f2495c",
    "purple": "#b877d9",
    "text": TEXT,
}
PALETTE = ["#73bf69", "#fade2a", "#5794f2", "#ff9830", "#f2495c", "#b877d9", "#8ab8ff", "#ffb357"]


def mix_at(progress: float) -> live.Mix:
    """Normal traffic, then a slow spell (a cold model, a busy upstream), then recovery."""
    slow = 5.0 if 0.45 <= progress < 0.7 else 1.0
    return live.Mix(
        ttfb=0.04 * slow,
        ttft=0.06 * slow,
        token_gap=0.004 * slow,
        jitter=0.6,
        extra_streams=6,
        impatient=2,
    )


async def drive(url: str, seconds: float, hop: live.HopStandIn) -> int:
    """Waves of every kind of request, one a second, bounded in time and count."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks: set[asyncio.Task[int]] = set()
    for index in range(int(seconds)):
        progress = (loop.time() - started) / seconds
        if progress >= 1:
            break
        wave = live.wave(url, mix_at(progress), random.Random(index), hop)
        tasks.add(asyncio.create_task(wave))
        await asyncio.sleep(1.0)
    return sum(await asyncio.gather(*tasks))


def legend(template: str, metric: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), template) or "value"


def minutes(axes: Any) -> None:
    """Elapsed time of the run on the x axis, as m:ss every 30 s."""
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    axes.xaxis.set_major_locator(MultipleLocator(0.5))
    axes.xaxis.set_major_formatter(
        FuncFormatter(lambda v, _: f"{int(v)}:{round((v % 1) * 60):02d}")
    )


def fmt(value: float, unit: str) -> str:
    if not math.isfinite(value):
        return "-"
    if unit == "s":
        if value < 1:
            return f"{value * 1000:.3g} ms"
        return f"{value:.3g} s"
    if unit == "percentunit":
        return f"{value * 100:.3g}%"
    if unit == "reqps":
        return f"{value:.3g} req/s"
    if unit == "Bps":
        for factor, name in ((1e6, "MB/s"), (1e3, "kB/s")):
            if value >= factor:
                return f"{value / factor:.3g} {name}"
        return f"{value:.3g} B/s"
    if unit.startswith("suffix:"):
        return f"{value:.3g}{unit.removeprefix('suffix:')}"
    return f"{value:.3g}"


class Renderer:
    def __init__(self, prometheus: live.Prometheus, start: float, end: float) -> None:
        self.prometheus = prometheus
        self.start = start
        self.end = end
        self.variables = {
            "job": live.JOB,
            "instance": ".*",
            "route": ".*",
            "__rate_interval": RATE_INTERVAL,
            "__interval": f"{int(STEP)}s",
            "__range": f"{int(end - start)}s",
        }

    def series(self, expr: str) -> list[tuple[dict[str, str], list[float], list[float]]]:
        result = self.prometheus.query_range(
            live.substitute(expr, self.variables), self.start, self.end, STEP
        )
        found = []
        for item in result:
            times = [(float(t) - self.start) / 60 for t, _ in item["values"]]
            values = [float(v) for _, v in item["values"]]
            found.append((item["metric"], times, values))
        return found

    def instant(self, expr: str) -> list[tuple[dict[str, str], float]]:
        result = self.prometheus.query(live.substitute(expr, self.variables), at=self.end)
        return [(item["metric"], float(item["value"][1])) for item in result]

    def render(self, board: dict[str, Any], path: Path, caption: str) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        height_units = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in board["panels"])
        unit_w, unit_h = 0.75, 0.36  # inches per grid column and row
        header = 0.9
        fig_w, fig_h = 24 * unit_w, height_units * unit_h + header
        fig = plt.figure(figsize=(fig_w, fig_h), dpi=100, facecolor=BACKGROUND)
        plt.rcParams.update({"font.size": 9, "text.color": TEXT, "axes.labelcolor": TEXT})
        fig.text(
            0.008,
            1 - 0.3 / fig_h,
            board["title"],
            color=TEXT,
            fontsize=15,
            weight="bold",
            va="center",
        )
        fig.text(0.008, 1 - 0.65 / fig_h, caption, color=MUTED, fontsize=9, va="center")

        def box(grid: dict[str, int], pad: float = 0.06) -> tuple[float, float, float, float]:
            left = (grid["x"] * unit_w + pad) / fig_w
            top = (header + grid["y"] * unit_h + pad) / fig_h
            width = (grid["w"] * unit_w - 2 * pad) / fig_w
            height = (grid["h"] * unit_h - 2 * pad) / fig_h
            return left, 1 - top - height, width, height

        for panel in board["panels"]:
            grid = panel["gridPos"]
            if panel["type"] == "row":
                left, bottom, _, height = box(grid, 0)
                fig.text(
                    left + 0.003,
                    bottom + height / 2,
                    panel["title"],
                    color=TEXT,
                    fontsize=12,
                    weight="bold",
                    va="center",
                )
                continue
            frame = fig.add_axes(box(grid), facecolor=PANEL)
            frame.set_xticks([])
            frame.set_yticks([])
            for spine in frame.spines.values():
                spine.set_color(BORDER)
            frame.text(
                0.012,
                0.985,
                panel["title"],
                transform=frame.transAxes,
                color=TEXT,
                fontsize=10,
                weight="bold",
                va="top",
            )
            left, bottom, width, height = box(grid)
            title_h = 0.3 / fig_h
            inner = (
                left + 0.045 * width + 0.25 / fig_w,
                bottom + 0.16 * height,
                width * 0.93 - 0.3 / fig_w,
                height * 0.84 - title_h - 0.1 * height,
            )
            drawer = getattr(self, f"draw_{panel['type']}")
            drawer(fig, panel, inner, frame)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, facecolor=BACKGROUND, dpi=100)
        plt.close(fig)

    # Panels ---------------------------------------------------------------------------

    def style(self, axes: Any) -> None:
        axes.set_axisbelow(True)
        axes.set_facecolor(PANEL)
        axes.tick_params(colors=MUTED, labelsize=8, length=0)
        axes.grid(True, color=GRID, linewidth=0.6)
        for spine in axes.spines.values():
            spine.set_visible(False)

    def draw_timeseries(self, fig: Any, panel: dict[str, Any], inner: Any, frame: Any) -> None:
        from matplotlib.ticker import FuncFormatter

        unit = panel["fieldConfig"]["defaults"]["unit"]
        stacked = panel["fieldConfig"]["defaults"].get("custom", {}).get("stacking", {})
        colors = {
            o["matcher"]["options"]: NAMED.get(o["properties"][0]["value"]["fixedColor"])
            for o in panel["fieldConfig"]["overrides"]
            if o["properties"][0]["id"] == "color"
        }
        axes = fig.add_axes(inner)
        self.style(axes)
        lines = []
        for target in panel["targets"]:
            found = [
                (legend(target["legendFormat"], metric), times, values)
                for metric, times, values in self.series(target["expr"])
            ]
            lines += sorted(found, key=lambda line: line[0])
        base: dict[float, float] = {}
        for index, (name, times, values) in enumerate(lines):
            color = colors.get(name) or PALETTE[index % len(PALETTE)]
            clean = [v if math.isfinite(v) else float("nan") for v in values]
            if stacked.get("mode") == "normal":
                lower = [base.get(t, 0.0) for t in times]
                upper = [
                    low + (v if math.isfinite(v) else 0.0)
                    for low, v in zip(lower, clean, strict=True)
                ]
                axes.fill_between(times, lower, upper, color=color, alpha=0.35, linewidth=0)
                axes.plot(times, upper, color=color, linewidth=1.2, label=name)
                base.update(zip(times, upper, strict=True))
            else:
                axes.plot(times, clean, color=color, linewidth=1.4, label=name)
        axes.set_ylim(bottom=0)
        axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v, unit)))
        minutes(axes)
        if lines:
            columns = max(1, min(len(lines), panel["gridPos"]["w"] // 3))
            axes.legend(
                loc="upper center",
                bbox_to_anchor=(0.5, -0.1),
                ncol=columns,
                frameon=False,
                fontsize=7.5,
                labelcolor=TEXT,
                handlelength=1.0,
                columnspacing=1.0,
            )
        else:
            axes.text(0.5, 0.5, "No data", transform=axes.transAxes, color=MUTED, ha="center")

    def draw_heatmap(self, fig: Any, panel: dict[str, Any], inner: Any, frame: Any) -> None:
        import numpy as np
        from matplotlib.colors import PowerNorm

        (target,) = panel["targets"]
        rows = []
        for metric, times, values in self.series(target["expr"]):
            le = metric.get("le", "+Inf")
            rows.append((math.inf if le == "+Inf" else float(le), times, values))
        rows.sort(key=lambda row: row[0])
        axes = fig.add_axes(inner)
        self.style(axes)
        axes.grid(False)
        if not rows:
            axes.text(0.5, 0.5, "No data", transform=axes.transAxes, color=MUTED, ha="center")
            return
        cumulative = np.array([row[2] for row in rows])
        cumulative = np.nan_to_num(cumulative)
        counts = np.diff(cumulative, axis=0, prepend=0)
        occupied = np.nonzero(counts.sum(axis=1) > 0)[0]
        low, high = max(occupied.min() - 1, 0), min(occupied.max() + 2, len(rows))
        counts = counts[low:high]
        bounds = [row[0] for row in rows][low:high]
        masked = np.ma.masked_less_equal(counts, 1e-9)
        times = rows[0][1]
        axes.pcolormesh(
            np.array([*times, times[-1] + STEP / 60]),
            np.arange(len(bounds) + 1),
            masked,
            cmap="Spectral_r",
            norm=PowerNorm(0.5, vmin=0, vmax=max(float(masked.max()), 1e-9)),
            shading="flat",
        )
        labels = [fmt(b, "s") if math.isfinite(b) else "+Inf" for b in bounds]
        ticks = list(range(0, len(bounds), max(1, len(bounds) // 6)))
        axes.set_yticks([t + 1 for t in ticks], [labels[t] for t in ticks])
        axes.set_xlim(times[0], times[-1])
        minutes(axes)
        axes.text(
            1.0,
            -0.13,
            "upper bound of each bucket; colour: requests per bucket",
            transform=axes.transAxes,
            color=MUTED,
            fontsize=7,
            ha="right",
            va="top",
        )

    def draw_stat(self, fig: Any, panel: dict[str, Any], inner: Any, frame: Any) -> None:
        unit = panel["fieldConfig"]["defaults"]["unit"]
        (target,) = panel["targets"]
        found = self.series(target["expr"])
        values = found[0][2] if found else []
        last = next((v for v in reversed(values) if math.isfinite(v)), math.nan)
        frame.text(
            0.5,
            0.5,
            fmt(last, unit),
            transform=frame.transAxes,
            color=NAMED["green"],
            fontsize=24,
            weight="bold",
            ha="center",
            va="center",
        )
        if found:
            left, bottom, width, height = inner
            spark = fig.add_axes((left, bottom - 0.1 * height, width, height * 0.45))
            spark.set_axis_off()
            times = found[0][1]
            clean = [v if math.isfinite(v) else 0.0 for v in values]
            spark.fill_between(times, 0, clean, color=NAMED["green"], alpha=0.15, linewidth=0)
            spark.set_ylim(bottom=0)

    def draw_table(self, fig: Any, panel: dict[str, Any], inner: Any, frame: Any) -> None:
        organize = panel["transformations"][1]["options"]
        rename = organize["renameByName"]
        units = {
            o["matcher"]["options"]: o["properties"][0]["value"]
            for o in panel["fieldConfig"]["overrides"]
        }
        columns = [rename[f"Value #{t['refId']}"] for t in panel["targets"]]
        rows: dict[str, dict[str, float]] = {}
        for target, column in zip(panel["targets"], columns, strict=True):
            for metric, value in self.instant(target["expr"]):
                rows.setdefault(metric.get("http_route", ""), {})[column] = value
        order = sorted(rows, key=lambda route: -rows[route].get(columns[0], 0))
        cells = [
            [route or "(none)"] + [fmt(rows[route].get(c, math.nan), units[c]) for c in columns]
            for route in order
        ]
        axes = fig.add_axes(inner)
        axes.set_axis_off()
        table = axes.table(
            cellText=cells,
            colLabels=["Route", *columns],
            loc="upper left",
            cellLoc="left",
            colLoc="left",
            bbox=(0, 0, 1, 1),
        )
        table.auto_set_font_size(False)
        table.set_fontsize(9)
        for (row, _), cell in table.get_celld().items():
            cell.set_edgecolor(BORDER)
            cell.set_facecolor(PANEL)
            cell.get_text().set_color(TEXT if row else MUTED)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the run")
    args = parser.parse_args(argv)
    binary = live.prometheus_binary()
    if binary is None:
        raise SystemExit("prometheus is not installed: apt-get install prometheus")
    with (
        tempfile.TemporaryDirectory() as tmp,
        live.serve_demo() as service,
        live.running_prometheus(binary, Path(tmp), service.metrics_target) as prometheus,
    ):
        started = time.time()
        requests = asyncio.run(drive(service.url, args.seconds, service.hop))
        end = time.time()
        with contextlib.suppress(TimeoutError):
            prometheus.wait_until(
                f'sum(http_server_stream_terminations_total{{job="{live.JOB}"}})', requests
            )
        time.sleep(1.5)
        renderer = Renderer(prometheus, started + 25, end)
        caption = (
            f"Rendered from a live run: {requests} requests to the instrumented demo app "
            f"(dashboards/live.py) over {(end - started) / 60:.1f} min, scraped every 1 s by "
            f"Prometheus; $__rate_interval = {RATE_INTERVAL}, all routes."
        )
        for name, board in live.load_dashboards().items():
            renderer.render(board, OUTPUT[name], caption)
            print(f"wrote {OUTPUT[name].relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
