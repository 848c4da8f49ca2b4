"""docs/clients.md describes the client side: every instrument with its Prometheus name
from the real exporter, every client termination reason, every GenAI instrument."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest

from otel_stream import termination
from otel_stream.clients.telemetry import CLIENT_HISTOGRAMS, GEN_AI_HISTOGRAMS, ClientTelemetry
from otel_stream.config import Settings

DOC = (Path(__file__).resolve().parent.parent / "docs" / "clients.md").read_text("utf-8")


def table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def exported_names() -> dict[str, str]:
    """Prometheus name of every client instrument, from the real exporter."""
    registry = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)], shutdown_on_exit=False
    )
    try:
        telemetry = ClientTelemetry(Settings.from_options(), meter_provider=provider)
        instruments = telemetry.instruments
        for row in CLIENT_HISTOGRAMS:
            getattr(instruments, row.attribute).record(1.0, {"instrument": row.name})
        instruments.terminations.add(1, {"instrument": "http.client.stream.terminations"})
        telemetry.active.add(1, {"instrument": "http.client.stream.active"})
        exposition = generate_latest(registry).decode()
    finally:
        provider.shutdown()
    names = {}
    for line in exposition.splitlines():
        found = re.match(r'(\w+?)(_bucket|_sum|_count|_created)?\{.*instrument="([^"]+)"', line)
        if found:
            names[found.group(3)] = found.group(1)
    return names


CLIENT_INSTRUMENTS = [
    *(row.name for row in CLIENT_HISTOGRAMS),
    "http.client.stream.terminations",
    "http.client.stream.active",
]


@pytest.mark.parametrize("name", CLIENT_INSTRUMENTS)
def test_every_client_instrument_is_documented_with_its_prometheus_name(name: str) -> None:
    row = table_rows(DOC)[f"`{name}`"]
    assert row[3] == f"`{exported_names()[name]}`"


@pytest.mark.parametrize("row", GEN_AI_HISTOGRAMS, ids=lambda row: row.name)
def test_every_gen_ai_instrument_is_documented(row: object) -> None:
    cells = table_rows(DOC)[f"`{row.name}`"]  # type: ignore[attr-defined]
    assert cells[1] == f"`{row.unit}`"  # type: ignore[attr-defined]


@pytest.mark.parametrize("reason", termination.CLIENT_REASONS)
def test_every_client_termination_reason_is_documented(reason: str) -> None:
    reasons = table_rows(DOC[DOC.index("## Termination reasons") :])
    assert f"`{reason}`" in reasons
