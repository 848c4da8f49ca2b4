"""The ways in: the entry point, ``OTEL_STREAM_ENABLED=true``, and the disable switch."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests import processes
from tests.processes import child_environment

_PROBE = """
import json, httpx, httpx2, aiohttp
print(json.dumps({
    name: hasattr(vars(owner)[attribute], "__wrapped__")
    for name, owner, attribute in (
        ("httpx", httpx.Client, "send"),
        ("httpx2", httpx2.AsyncClient, "send"),
        ("aiohttp", aiohttp.ClientSession, "_request"),
    )
}))
"""


def probe(**variables: str) -> dict[str, bool]:
    env = child_environment(OTEL_SDK_DISABLED="true", **variables)
    result = processes.run([sys.executable, "-c", _PROBE], env=env, timeout=60, check=True)
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


def test_the_entry_point_names_the_client_instrumentor() -> None:
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()  # no tomllib on 3.10
    section = pyproject.split("[project.entry-points.opentelemetry_instrumentor]", 1)[1]
    found = re.search(r'^otel_stream_client = "([\w.]+):(\w+)"$', section, re.MULTILINE)
    assert found is not None
    module, name = found.groups()
    imported = __import__(module, fromlist=[name])
    from otel_stream import StreamingClientInstrumentor

    assert getattr(imported, name) is StreamingClientInstrumentor


def test_otel_stream_enabled_instruments_the_clients() -> None:
    assert probe(OTEL_STREAM_ENABLED="true") == {"httpx": True, "httpx2": True, "aiohttp": True}


@pytest.mark.parametrize("names", ["otel_stream_client", "httpx, otel_stream_client", "*"])
def test_the_disable_switch_leaves_the_clients_alone(names: str) -> None:
    patched = probe(OTEL_STREAM_ENABLED="true", OTEL_PYTHON_DISABLED_INSTRUMENTATIONS=names)
    assert patched == {"httpx": False, "httpx2": False, "aiohttp": False}


def test_nothing_is_patched_without_the_variable() -> None:
    assert probe() == {"httpx": False, "httpx2": False, "aiohttp": False}
