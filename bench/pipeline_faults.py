"""Time to first byte seen by a client, with the OTLP exporter up, down, and hanging.

Three uvicorn processes serve the same SSE app wrapped by otel-stream, each with its own
SDK exporting OTLP/HTTP every 50 ms (``BatchSpanProcessor``, periodic metric reader):

* **up**: to a receiver in this process that answers every export;
* **down**: to a loopback port where nothing listens (every connection refused);
* **hanging**: to a socket that accepts connections and never answers.

The client (this process) opens one stream at a time over a raw socket and times the
request to the first ``data:`` byte, alternating the three servers in a rotating order.
The ratio of each faulty pipeline's TTFB to the healthy one's is the cost the fault puts
on the response (target: no measurable change).

    python bench/pipeline_faults.py            # about 30 s
    python bench/pipeline_faults.py --quick
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from _servers import start, stop, wait_ready  # bench/ is on sys.path when a script runs

SERVER_APP = """
import asyncio

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_stream import StreamingMiddleware



async def sse(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/event-stream")]})
    for _ in range(5):
        await send({"type": "http.response.body", "body": b"data: tok\\n\\n", "more_body": True})
        await asyncio.sleep(0.001)
    await send({"type": "http.response.body", "body": b""})


tracer_provider = TracerProvider()
tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
meter_provider = MeterProvider(
    metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
)
app = StreamingMiddleware(sse, tracer_provider=tracer_provider, meter_provider=meter_provider)
"""

PIPELINES = ("up", "down", "hanging")


class Receiver(BaseHTTPRequestHandler):
    """Answers every OTLP/HTTP export with an empty success."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def endpoints() -> Iterator[dict[str, str]]:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    receiver.daemon_threads = True
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    with socket.socket() as hanging:
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(1024)  # nobody accepts: connections complete, no answer ever comes
        try:
            yield {
                "up": f"http://127.0.0.1:{receiver.server_address[1]}",
                "down": f"http://127.0.0.1:{free_port()}",
                "hanging": f"http://127.0.0.1:{hanging.getsockname()[1]}",
            }
        finally:
            receiver.shutdown()
            receiver.server_close()


def start_server(directory: Path, endpoint: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_METRIC_EXPORT_INTERVAL": "50",
        "OTEL_STREAM_SHUTDOWN_FLUSH_TIMEOUT": "0.5",
        "PYTHONPATH": os.pathsep.join([str(directory), os.environ.get("PYTHONPATH", "")]),
    }
    argv = [sys.executable, "-m", "uvicorn", "faults_app:app", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--log-level", "warning", "--lifespan", "off"]
    process = start(argv, env=env, cwd=directory, stderr=subprocess.DEVNULL)
    return process, port


def time_to_first_byte(port: int) -> float:
    """Seconds from sending the request to the first ``data:`` byte; reads the whole body."""
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        began = time.perf_counter()
        sock.sendall(b"GET /chat HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        received = b""
        first = 0.0
        while data := sock.recv(65536):
            received += data
            if not first and b"data:" in received:
                first = time.perf_counter() - began
        if received.count(b"data: tok") != 5:
            raise RuntimeError(f"incomplete response: {received[-200:]!r}")
    return first


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TTFB with a healthy and a broken exporter.")
    parser.add_argument("--rounds", type=int, default=600, help="streams per pipeline")
    parser.add_argument("--quick", action="store_true", help="100 streams per pipeline")
    args = parser.parse_args(argv)
    rounds = 100 if args.quick else args.rounds

    began = time.monotonic()
    ttfbs: dict[str, list[float]] = {name: [] for name in PIPELINES}
    with tempfile.TemporaryDirectory() as tmp, endpoints() as urls:
        directory = Path(tmp)
        (directory / "faults_app.py").write_text(SERVER_APP)
        servers = {name: start_server(directory, urls[name]) for name in PIPELINES}
        try:
            for process, port in servers.values():
                wait_ready(process, port)
            for _, port in servers.values():
                for _ in range(20):  # warm up
                    time_to_first_byte(port)
            for index in range(rounds):
                order = PIPELINES[index % 3 :] + PIPELINES[: index % 3]
                for name in order:
                    ttfbs[name].append(time_to_first_byte(servers[name][1]))
        finally:
            for process, _ in servers.values():
                stop(process, first=signal.SIGKILL)  # no flush to wait for

    print(
        f"{rounds} streams per pipeline, one at a time, alternating; "
        f"{time.monotonic() - began:.0f} s; Python {sys.version.split()[0]}"
    )
    print()
    print("| exporter | TTFB p50 (ms) | TTFB p99 (ms) | p50 / up | p99 / up |")
    print("|---|---|---|---|---|")
    up = ttfbs["up"]
    for name in PIPELINES:
        values = sorted(ttfbs[name])
        p50 = statistics.median(values)
        p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
        up_p50 = statistics.median(up)
        up_p99 = sorted(up)[min(len(up) - 1, int(0.99 * len(up)))]
        print(
            f"| {name} | {p50 * 1000:.3f} | {p99 * 1000:.3f} "
            f"| {p50 / up_p50:.3f} | {p99 / up_p99:.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
