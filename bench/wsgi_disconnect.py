"""How long after a client vanishes a WSGI server's stream span ends, per server.

A WSGI server learns that its client has gone only when a write to the socket fails;
then it stops iterating the response and calls ``close()``, and otel-stream ends the
stream span with ``client_disconnect``. How many writes that takes depends on the
server and on how the client left:

* **FIN** (the client closes its socket normally): the first write after the close still
  succeeds (the kernel accepts it, and the client's kernel answers with a reset); the
  next one fails.
* **RST** (the client aborts: ``SO_LINGER`` 0, a crashed process, a proxy timing out):
  the next write fails.

Each server below runs as its own process, serving one SSE stream that writes an event
every ``--interval`` seconds (20 ms), wrapped in ``StreamingWSGIMiddleware``. A raw
socket reads the first events and closes; the server process reports when the stream
span ended (a span processor writes each stream span's end time and reason to a file).
The latency is that end time minus the moment of the close, on the same clock.

    python bench/wsgi_disconnect.py            # about 30 s
    python bench/wsgi_disconnect.py --quick    # about 10 s

It is a report, not a test: it prints a table and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from _servers import start, stop, wait_ready  # bench/ is on sys.path when a script runs
from load import free_port, percentile

SRC = Path(__file__).resolve().parents[1] / "src"
SERVERS = ("gunicorn sync", "gunicorn gthread", "waitress", "werkzeug")

APP = """
import json
import os
import time

from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from otel_stream import StreamingWSGIMiddleware

INTERVAL = float(os.environ["BENCH_INTERVAL"])
REPORT = os.environ["BENCH_REPORT"]
ids = {}


class Report(SpanProcessor):
    def on_end(self, span):
        if not span.name.endswith(" stream"):
            ids[span.context.span_id] = span.attributes.get("bench.id")
            return
        line = {
            "id": ids.pop(span.parent.span_id, None),
            "end_ns": span.end_time,
            "reason": span.attributes.get("http.stream.termination_reason"),
            "chunks": span.attributes.get("http.stream.chunks"),
        }
        with open(REPORT, "a") as report:
            report.write(json.dumps(line) + "\\n")


def hook(span, environ):
    span.set_attribute("bench.id", environ.get("HTTP_X_BENCH_ID", ""))


def tokens(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/event-stream")])
    for index in range(int(30 / INTERVAL)):  # at most 30 s
        yield f"data: {index}\\n\\n".encode()
        time.sleep(INTERVAL)


provider = TracerProvider()
provider.add_span_processor(Report())
app = StreamingWSGIMiddleware(tokens, tracer_provider=provider, server_request_hook=hook)
"""

RUN = """
import sys

from app import app

server, port = sys.argv[1], int(sys.argv[2])
if server == "waitress":
    from waitress import serve

    serve(app, host="127.0.0.1", port=port, threads=8, _quiet=True)
else:
    import logging

    from werkzeug.serving import run_simple

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    run_simple("127.0.0.1", port, app, threaded=True)
"""


def command(server: str, port: int) -> list[str]:
    if server.startswith("gunicorn"):
        worker = server.split()[1]
        argv = [sys.executable, "-m", "gunicorn", "-k", worker, "-w", "1"]
        if worker == "gthread":
            argv += ["--threads", "8"]
        return [*argv, "-b", f"127.0.0.1:{port}", "--log-level", "warning", "app:app"]
    return [sys.executable, "run.py", server, str(port)]


@contextlib.contextmanager
def running(server: str, directory: Path, interval: float) -> Iterator[tuple[int, Path]]:
    port = free_port()
    report = directory / f"{server.replace(' ', '-')}.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(directory), str(SRC), os.environ.get("PYTHONPATH", "")]),
        "BENCH_INTERVAL": str(interval),
        "BENCH_REPORT": str(report),
    }
    process = start(
        command(server, port),
        cwd=directory,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_ready(process, port)
        yield port, report
    finally:
        stop(process)


def one_trial(
    port: int, report: Path, trial_id: str, close: str, events: int, pause: float
) -> tuple[float, int, str]:
    """Read ``events`` events, wait ``pause`` s, close (FIN or RST). Returns the ms until
    the stream span ended, the writes the server made after the close (the one that
    failed included) and the reason."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    request = f"GET /chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Bench-Id: {trial_id}\r\n\r\n"
    sock.sendall(request.encode())
    marker = f"data: {events - 1}\n".encode()
    received = b""
    while marker not in received:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("the server closed first")
        received += data
    time.sleep(pause)
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while data := sock.recv(65536):
            received += data
    seen = received.count(b"data: ")
    if close == "RST":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    closed_ns = time.time_ns()
    sock.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if report.exists():
            for line in report.read_text().splitlines():
                entry = json.loads(line)
                if entry["id"] == trial_id:
                    # the failed write is not counted in the chunks
                    writes = int(entry["chunks"] or 0) + 1 - seen
                    return (entry["end_ns"] - closed_ns) / 1e6, writes, entry["reason"]
        time.sleep(0.002)
    raise RuntimeError(f"no stream span for {trial_id}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="WSGI disconnect detection latency.")
    parser.add_argument("--interval", type=float, default=0.02, help="s between events (0.02)")
    parser.add_argument("--trials", type=int, help="trials per server and close (10, quick 3)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--servers", nargs="*", default=list(SERVERS), choices=SERVERS)
    args = parser.parse_args(argv)
    trials = args.trials or (3 if args.quick else 10)
    random.seed(20)
    rows: list[list[str]] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as temporary:
        directory = Path(temporary)
        (directory / "app.py").write_text(APP)
        (directory / "run.py").write_text(RUN)
        for server in args.servers:
            with running(server, directory, args.interval) as (port, report):
                for close in ("FIN", "RST"):
                    latencies, writes, reasons = [], [], set()
                    for trial in range(trials):
                        # the client leaves at an arbitrary moment between two events
                        pause = args.interval * random.random()
                        trial_id = f"{server}-{close}-{trial}"
                        latency, written, reason = one_trial(
                            port, report, trial_id, close, 5, pause
                        )
                        latencies.append(latency)
                        writes.append(written)
                        reasons.add(reason)
                    rows.append(
                        [
                            server,
                            close,
                            f"{statistics.median(latencies):.0f}",
                            f"{percentile(latencies, 0.9):.0f}",
                            f"{max(latencies):.0f}",
                            f"{statistics.median(writes):.0f}",
                            ", ".join(sorted(reasons)),
                        ]
                    )
    import importlib.metadata

    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("gunicorn", "waitress", "werkzeug")
    )
    print(
        f"WSGI disconnect detection: an SSE event every {args.interval * 1000:.0f} ms, "
        f"{trials} trials per row, {time.monotonic() - began:.0f} s\n"
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs; {versions}\n"
    )
    header = [
        "server",
        "client close",
        "median (ms)",
        "p90 (ms)",
        "max (ms)",
        "writes until detected (median)",
        "reason",
    ]
    print("| " + " | ".join(header) + " |")
    print("|---" * len(header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(
        "\nLatency: from the client's close to the end of the stream span. Writes until "
        "detected: the events the server wrote after the close, the failing one included."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
