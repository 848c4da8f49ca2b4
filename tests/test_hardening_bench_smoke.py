"""The hardening benchmarks run end to end with tiny sizes; no timing is asserted."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from tests import processes

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run(script: str, *args: str) -> str:
    completed = processes.run(
        [sys.executable, str(BENCH / script), *args],
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def table(output: str, header_start: str = "| ") -> dict[str, list[str]]:
    """The body rows of the first markdown table whose header begins with ``header_start``."""
    rows: dict[str, list[str]] = {}
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


LOAD_ROWS = [
    "bare uvicorn",
    "otel-stream",
    "otel-stream, payloads=False",
    "otel asgi (default)",
    'otel asgi, exclude_spans=["send","receive"]',
]


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_load", BENCH / "load.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_load_bench_reports_every_row_in_both_loops() -> None:
    output = run(
        *("load.py", "--rounds", "1", "--streams", "8", "--concurrency", "4", "--chunks", "10"),
        *("--open-streams", "8", "--rate", "200"),
    )
    assert "closed loop: 8 streams, 4 at a time" in output
    assert "open loop: 8 Poisson arrivals at 200.0 streams/s (--rate)" in output
    throughput = table(output, "| server | throughput")
    assert list(throughput) == LOAD_ROWS
    assert throughput["bare uvicorn"][1] == "1 (baseline)"
    assert all(float(cells[0].replace(",", "")) > 0 for cells in throughput.values())

    ttfb = table(output, "| server | closed loop TTFB p50")
    assert list(ttfb) == LOAD_ROWS
    for row, cells in ttfb.items():
        assert len(cells) == 9, row
        values = [float(cells[i]) for i in (0, 2, 4, 6)]  # closed p50, p99, open p50, p99
        assert all(value > 0 for value in values), (row, cells)
        assert values[0] <= values[1], (row, cells)
        assert values[2] <= values[3], (row, cells)
        added = [cells[i] for i in (1, 3, 5, 7)]
        if row == "bare uvicorn":
            assert added == ["-"] * 4
        else:
            assert all(re.fullmatch(r"[+-]\d+\.\d\d", cell) for cell in added), (row, cells)
        assert float(cells[8]) > 0  # streams in flight

    targets = table(output, "| target |")
    assert len(targets) == 4
    assert {cells[1] for cells in targets.values()} <= {"PASS", "FAIL"}
    assert "open loop: otel-stream TTFB p50 within +1 ms of bare" in targets


def test_load_bench_open_loop_defaults_to_half_the_slowest_closed_rate() -> None:
    output = run(
        "load.py",
        "--rounds",
        "1",
        "--streams",
        "8",
        "--concurrency",
        "4",
        "--chunks",
        "5",
        "--open-streams",
        "4",
    )
    found = re.search(r"open loop: (\d+) Poisson arrivals at ([\d.]+) streams/s \(0.5 x", output)
    assert found, output
    assert int(found[1]) <= 4
    assert float(found[2]) > 0


def ttfb(
    ms: dict[str, dict[str, tuple[float, float]]],
) -> dict[str, dict[str, tuple[float, float]]]:
    return {
        row: {mode: (p50 / 1000, p99 / 1000) for mode, (p50, p99) in modes.items()}
        for row, modes in ms.items()
    }


def measured(
    bare: tuple[float, float],
    mine: tuple[float, float],
    exclude_p99: float,
    closed_mine: float,
    closed_upstream: float,
) -> dict[str, dict[str, tuple[float, float]]]:
    """TTFB (ms) per row and loop: bare and otel-stream as given, upstream rows around them
    (``closed_upstream``: the closed-loop p50 that upstream with exclude_spans adds)."""
    return ttfb(
        {
            "bare uvicorn": {"open": bare, "closed": (10.0, 20.0)},
            "otel-stream": {"open": mine, "closed": (10.0 + closed_mine, 25.0)},
            "otel asgi (default)": {"open": (9.0, 9.0), "closed": (30.0, 40.0)},
            'otel asgi, exclude_spans=["send","receive"]': {
                "open": (1.0, exclude_p99),
                "closed": (10.0 + closed_upstream, 25.0),
            },
        }
    )


def test_each_ttfb_target_can_fail() -> None:
    targets = load_bench().ttfb_targets
    passing = targets(measured((1.0, 2.0), (1.9, 2.5), 2.6, 3.0, 3.9))
    assert [verdict for _, _, verdict in passing] == ["PASS", "PASS", "PASS"]
    assert passing[0][1] == "+0.90 ms"
    assert passing[1][1] == "2.50 ms vs 2.60 ms"
    assert passing[2][1] == "+3.00 ms vs +3.90 ms"
    p50_over = targets(measured((1.0, 2.0), (2.1, 2.5), 2.6, 3.0, 3.9))
    assert [verdict for _, _, verdict in p50_over] == ["FAIL", "PASS", "PASS"]
    p99_over = targets(measured((1.0, 2.0), (1.5, 2.7), 2.6, 3.0, 3.9))
    assert [verdict for _, _, verdict in p99_over] == ["PASS", "FAIL", "PASS"]
    closed_over = targets(measured((1.0, 2.0), (1.5, 2.5), 2.6, 5.7, 3.9))
    assert [verdict for _, _, verdict in closed_over] == ["PASS", "PASS", "FAIL"]


def test_pipeline_faults_bench_reports_each_exporter() -> None:
    rows = table(run("pipeline_faults.py", "--rounds", "5"), "| exporter |")
    assert list(rows) == ["up", "down", "hanging"]
    assert rows["up"][2:] == ["1.000", "1.000"]


def test_stream_memory_bench_counts_every_stream() -> None:
    output = run("stream_memory.py", "--streams", "200")
    assert "spans started with otel-stream: 400 for 200 streams" in output
    assert "| held by otel-stream |" in output
