"""The hardening benchmarks run end to end with tiny sizes; no timing is asserted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run(script: str, *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def table(output: str) -> dict[str, list[str]]:
    rows = {}
    for line in output.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def test_load_bench_reports_every_row() -> None:
    output = run(
        "load.py", "--rounds", "1", "--streams", "8", "--concurrency", "4", "--chunks", "10"
    )
    rows = table(output)
    assert list(rows)[1:] == [
        "bare uvicorn",
        "otel-stream",
        "otel-stream, payloads=False",
        "otel asgi (default)",
        'otel asgi, exclude_spans=["send","receive"]',
    ]
    assert rows["bare uvicorn"][1] == "1 (baseline)"
    assert all(
        float(cells[0].replace(",", "")) > 0 for name, cells in rows.items() if name != "server"
    )
    assert "target: otel-stream within 3 % of bare throughput" in output


def test_pipeline_faults_bench_reports_each_exporter() -> None:
    rows = table(run("pipeline_faults.py", "--rounds", "5"))
    assert list(rows) == ["exporter", "up", "down", "hanging"]
    assert rows["up"][2:] == ["1.000", "1.000"]


def test_stream_memory_bench_counts_every_stream() -> None:
    output = run("stream_memory.py", "--streams", "200")
    assert "spans started with otel-stream: 400 for 200 streams" in output
    assert "| held by otel-stream |" in output
