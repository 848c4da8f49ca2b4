"""bench/overhead.py runs end to end and prints every row; no timing is asserted."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from tests import processes

BENCH = Path(__file__).resolve().parent.parent / "bench" / "overhead.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_overhead", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def table_rows(output: str, header_start: str) -> dict[str, list[str]]:
    """The rows of the markdown table whose header begins with ``header_start``."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def test_overhead_bench_prints_every_row() -> None:
    bench = load_bench()
    smallest = ["--rounds", "2", "--chunks", "20", "--streams", "1", "--requests", "5"]
    completed = processes.run(
        [sys.executable, str(BENCH), *smallest],
        timeout=90,
    )
    assert completed.returncode == 0, completed.stderr
    output = completed.stdout
    number = r"-?[\d,]+(\.\d+)?"

    costs = table_rows(output, "| middleware | per chunk")
    assert list(costs) == list(bench.ROWS)
    for row, cells in costs.items():
        assert len(cells) == 6, row
        for cell in cells[:4]:
            assert re.fullmatch(rf"{number} (± {number}|\(its own cost\))", cell), (row, cell)
    spans_per_stream = {row: int(cells[4].split(" / ")[0]) for row, cells in costs.items()}
    assert spans_per_stream[bench.BARE] == 0
    assert spans_per_stream[bench.OTEL_STREAM] == 2  # request span + stream span
    assert spans_per_stream[bench.UPSTREAM] > spans_per_stream[bench.UPSTREAM_EXCLUDE]

    split = table_rows(output, "| middleware | fixed cost")
    assert list(split) == list(bench.ROWS[1:])

    targets = table_rows(output, "| otel-stream's added cost")
    verdicts = [cells[2] for label, cells in targets.items() if not label.startswith("(")]
    assert len(verdicts) == 5
    assert set(verdicts) <= {"PASS", "FAIL"}
