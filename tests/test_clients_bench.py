"""bench/client_overhead.py runs end to end and prints every row; no timing is asserted."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from tests import processes

BENCH = Path(__file__).resolve().parent.parent / "bench" / "client_overhead.py"
ROWS = (
    "bare httpx.Client (baseline)",
    "contrib httpx instrumentation",
    "otel-stream StreamingClientInstrumentor",
    "otel-stream, payloads=False",
    "otel-stream + contrib",
)


def test_the_client_bench_prints_every_row() -> None:
    smallest = ["--rounds", "2", "--chunks", "20", "--streams", "1", "--requests", "5"]
    completed = processes.run([sys.executable, str(BENCH), *smallest], timeout=120)
    assert completed.returncode == 0, completed.stderr  # check() passed for every row
    lines = completed.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| client |"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    assert tuple(rows) == ROWS
    number = r"-?[\d,]+(\.\d+)?"
    for row, cells in rows.items():
        for cell in cells[:4]:
            assert re.fullmatch(rf"{number} (± {number}|\(its own cost\))", cell), (row, cell)
    assert re.search(r"Per chunk, byte stream: server side .* is [\d.]+x that", completed.stdout)
