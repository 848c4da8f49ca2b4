"""What the benchmark scripts share: starting a process in a process group of its own,
waiting for a server to accept connections, stopping the whole group, and the parts of
the load benchmarks' server apps that do not depend on the transport.

Choices made on purpose: every process a benchmark starts leads a new session
(``start_new_session=True``) and is stopped with ``os.killpg``, so a server that forks
workers (or a worker that outlives its parent) never keeps a loopback port after the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import Any


def start(argv: Sequence[str], **options: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(argv, **options)`` as the leader of a process group of its own."""
    return subprocess.Popen(list(argv), start_new_session=True, **options)


def stop(
    process: subprocess.Popen[Any], timeout: float = 10.0, first: int = signal.SIGTERM
) -> None:
    """Send ``first`` to the process's whole group, SIGKILL whatever is left after
    ``timeout`` (or once the leader has exited)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, first)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
    with contextlib.suppress(ProcessLookupError):  # the leader's children, if any remain
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)


def wait_ready(process: subprocess.Popen[Any], port: int, timeout: float = 30.0) -> None:
    """Return once ``process`` accepts connections on ``port``; raise if it exits or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


#: The start of a load benchmark's server app: the SDK, the stream's size and pace from
#: the environment, the SSE event it repeats, and an exporter that only counts.
APP_PRELUDE = """
import os

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

CHUNKS = int(os.environ["BENCH_CHUNKS"])
INTERVAL = float(os.environ["BENCH_INTERVAL"])
EVENT = (
    b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"tok"},"finish_reason":null}]}\\n\\n'
)


class CountingExporter(SpanExporter):
    def __init__(self):
        self.spans = 0

    def export(self, spans):
        self.spans += len(spans)
        return SpanExportResult.SUCCESS
"""

#: After the app: the providers every instrumented row gets, and the row to serve.
APP_PROVIDERS = """
tracer_provider = TracerProvider()
tracer_provider.add_span_processor(
    BatchSpanProcessor(CountingExporter(), max_queue_size=1_000_000, schedule_delay_millis=500)
)
meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
providers = {"tracer_provider": tracer_provider, "meter_provider": meter_provider}
row = os.environ["BENCH_ROW"]
"""
