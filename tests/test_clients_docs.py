"""docs/clients.md describes the client side: every instrument with its Prometheus name
from the real exporter, every client termination reason, every GenAI instrument."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import Histogram
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest

from otel_stream import recorder, termination
from otel_stream.config import Settings

DOC = (Path(__file__).resolve().parent.parent / "docs" / "clients.md").read_text("utf-8")

#: Server-side measurements the client's instruments table has but never records.
SERVER_ONLY = ("send_wait", "hop_time_to_first_byte")


def table_rows(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def client_instruments(provider: MeterProvider) -> dict[str, Any]:
    meter = recorder.get_meter(provider)
    instruments = vars(recorder.Instruments(meter, Settings.from_options(), recorder.CLIENT))
    return {key: value for key, value in instruments.items() if key not in SERVER_ONLY}


def exported_names() -> dict[str, str]:
    """Prometheus name of every client instrument, from the real exporter."""
    registry = CollectorRegistry()
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)], shutdown_on_exit=False
    )
    try:
        for instrument in client_instruments(provider).values():
            tag = {"instrument": instrument.name}
            if isinstance(instrument, Histogram):
                instrument.record(1.0, tag)
            else:
                instrument.add(1, tag)
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
    instrument.name
    for instrument in client_instruments(MeterProvider(shutdown_on_exit=False)).values()
]
GEN_AI_INSTRUMENTS = [
    instrument
    for instrument in vars(
        recorder.GenAiInstruments(
            recorder.get_meter(MeterProvider(shutdown_on_exit=False)),
            Settings.from_options(),
            recorder.CLIENT,
        )
    ).values()
    if instrument is not None
]


@pytest.mark.parametrize("name", CLIENT_INSTRUMENTS)
def test_every_client_instrument_is_documented_with_its_prometheus_name(name: str) -> None:
    row = table_rows(DOC)[f"`{name}`"]
    assert row[3] == f"`{exported_names()[name]}`"


@pytest.mark.parametrize("instrument", GEN_AI_INSTRUMENTS, ids=lambda item: item.name)
def test_every_gen_ai_instrument_is_documented(instrument: Histogram) -> None:
    cells = table_rows(DOC)[f"`{instrument.name}`"]
    assert cells[1] == f"`{instrument.unit}`"


def test_the_server_only_instruments_are_never_recorded_by_a_client() -> None:
    assert all(f"`http.client.stream.{name}`" not in DOC for name in ("send_wait", "hop"))


@pytest.mark.parametrize("reason", termination.CLIENT_REASONS)
def test_every_client_termination_reason_is_documented(reason: str) -> None:
    reasons = table_rows(DOC[DOC.index("## Termination reasons") :])
    assert f"`{reason}`" in reasons
