"""The WSGI benchmark scripts run end to end and print every row; no timing is asserted."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from tests import processes
from tests.processes import child_environment
from tests.test_bench_smoke import table_rows

BENCH = Path(__file__).resolve().parent.parent / "bench"
NUMBER = r"-?[\d,]+(\.\d+)?"


def run(script: str, *args: str, timeout: float = 120) -> str:
    """The bench in a process group of its own (its servers go with it on a timeout)."""
    completed = processes.run(
        [sys.executable, str(BENCH / script), *args],
        timeout=timeout,
        env=child_environment(),
    )
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_wsgi_overhead_prints_every_row_and_verdict() -> None:
    output = run(
        "wsgi_overhead.py", "--rounds", "2", "--chunks", "20", "--streams", "1", "--requests", "5"
    )
    costs = table_rows(output, "| middleware | per chunk")
    assert list(costs) == [
        "bare app (baseline)",
        "otel-stream StreamingWSGIMiddleware",
        "otel-stream, payloads=False",
        "otel wsgi OpenTelemetryMiddleware",
    ]
    for row, cells in costs.items():
        for cell in cells[:3]:
            assert re.fullmatch(rf"{NUMBER} (± {NUMBER}|\(its own cost\))", cell), (row, cell)
    spans = {row: cells[3] for row, cells in costs.items()}
    assert spans["otel-stream StreamingWSGIMiddleware"] == "2 / 1"  # stream / single item
    assert spans["otel wsgi OpenTelemetryMiddleware"] == "1 / 1"
    targets = table_rows(output, "| otel-stream's added cost")
    verdicts = [cells[2] for label, cells in targets.items() if not label.startswith("(")]
    assert len(verdicts) == 4
    assert set(verdicts) <= {"PASS", "FAIL"}


@pytest.mark.slow
def test_wsgi_disconnect_reports_client_disconnect_on_a_server() -> None:
    output = run("wsgi_disconnect.py", "--trials", "1", "--servers", "werkzeug")
    lines = [line for line in output.splitlines() if line.startswith("| werkzeug |")]
    assert len(lines) == 2  # FIN and RST
    for line in lines:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[-1] == "client_disconnect"
        assert re.fullmatch(NUMBER, cells[2])


@pytest.mark.slow
def test_wsgi_load_prints_every_row() -> None:
    output = run(
        "wsgi_load.py",
        *("--rounds", "1", "--streams", "4", "--concurrency", "2", "--chunks", "5"),
        *("--threads", "2"),
    )
    rows = table_rows(output, "| server | throughput")
    assert list(rows) == [
        "bare gunicorn gthread",
        "otel-stream",
        "otel-stream, payloads=False",
        "otel wsgi OpenTelemetryMiddleware",
    ]
