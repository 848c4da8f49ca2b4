"""Real WSGI servers on loopback for the WSGI tests.

werkzeug's development server and waitress run in a thread of the test process, so a
test reads the in-memory exporters directly. gunicorn (sync and gthread workers) runs as
a real process in its own process group, started the way a user types it, exporting
OTLP/HTTP to a receiver in the test; stopping it signals the whole group.

Every server is reached the same way: a base URL, and the spans it produced as
:class:`~tests.otlp_receiver.ReceivedSpan` values (in-process spans are converted), so
one test body runs on each server.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from tests.auto_support import ServerProcess, environment
from tests.otlp_receiver import OTLPReceiver, ReceivedPoint, ReceivedSpan
from tests.processes import BIN
from tests.servers import free_port, wait_until
from tests.telemetry_harness import Telemetry

IN_PROCESS = ("werkzeug", "waitress")
PROCESSES = ("gunicorn-sync", "gunicorn-gthread")
SERVERS = IN_PROCESS + PROCESSES
#: The repository root: gunicorn imports ``tests.wsgi_served`` from there.
ROOT = Path(__file__).resolve().parents[1]


# In-process servers ---------------------------------------------------------------------


@contextlib.contextmanager
def serve(app: Any, server: str = "werkzeug") -> Iterator[str]:
    """Serve the WSGI ``app`` in a thread on a free loopback port; yields its base URL."""
    if server == "werkzeug":
        yield from _werkzeug(app)
    elif server == "waitress":
        yield from _waitress(app)
    else:
        raise ValueError(server)


def _werkzeug(app: Any) -> Iterator[str]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _waitress(app: Any) -> Iterator[str]:
    from waitress import create_server

    server: Any = create_server(app, host="127.0.0.1", port=0, threads=8)
    stop = threading.Event()

    def run() -> None:
        # waitress' own loop, a few polls at a time, so this thread can stop it and close
        # every dispatcher itself (no other thread touches the loop's sockets)
        try:
            while not stop.is_set() and server._map:
                server.asyncore.loop(
                    timeout=0.05, map=server._map, use_poll=server.adj.asyncore_use_poll, count=1
                )
        finally:
            for dispatcher in list(server._map.values()):
                dispatcher.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    port = server.effective_port
    _wait_listening(port, thread.is_alive)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.task_dispatcher.shutdown(timeout=5)
        stop.set()
        thread.join(10)


def _wait_listening(port: int, alive: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        if not alive() or time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {port}")
        time.sleep(0.005)


# Spans, whatever server produced them --------------------------------------------------


def received(span: ReadableSpan) -> ReceivedSpan:
    """An SDK span as the OTLP receiver would have decoded it."""
    context = span.get_span_context()
    parent = span.parent
    assert context is not None
    return ReceivedSpan(
        name=span.name,
        kind=span.kind.name,
        trace_id=f"{context.trace_id:032x}",
        span_id=f"{context.span_id:016x}",
        parent_span_id=f"{parent.span_id:016x}" if parent is not None else "",
        attributes=dict(span.attributes or {}),
        resource=dict(span.resource.attributes),
        scope=span.instrumentation_scope.name if span.instrumentation_scope else "",
        status=span.status.status_code.name,
        start_ns=span.start_time or 0,
        end_ns=span.end_time or 0,
    )


@dataclass
class Served:
    """One running server: its URL and the telemetry its app produced."""

    name: str
    url: str
    telemetry: Telemetry | None = None
    receiver: OTLPReceiver | None = None
    service: str = ""
    process: ServerProcess | None = None

    def spans(self, scope: str | None = "otel_stream") -> list[ReceivedSpan]:
        if self.telemetry is not None:
            spans = [received(span) for span in self.telemetry.spans()]
        else:
            assert self.receiver is not None
            spans = [
                span
                for span in self.receiver.spans()
                if span.resource.get("service.name") == self.service
            ]
        return [span for span in spans if scope is None or span.scope == scope]

    def wait_spans(
        self, count: int, timeout: float = 10.0, scope: str | None = "otel_stream"
    ) -> list[ReceivedSpan]:
        """The spans once at least ``count`` have arrived (or whatever came by ``timeout``)."""
        wait_until(lambda: len(self.spans(scope)) >= count, timeout)
        return self.spans(scope)

    def span(self, name: str, timeout: float = 10.0) -> ReceivedSpan:
        wait_until(lambda: any(span.name == name for span in self.spans()), timeout)
        matches = [span for span in self.spans() if span.name == name]
        assert len(matches) == 1, f"{len(matches)} spans named {name!r}: {self.names()}"
        return matches[0]

    def names(self) -> list[str]:
        return sorted(span.name for span in self.spans())

    def exchange(self, test_id: str, timeout: float = 10.0) -> Exchange:
        """The spans of the request sent with ``X-Test-Id: test_id``, once they ended."""
        found: list[Exchange | None] = [None]

        def ready() -> bool:
            found[0] = exchange_in(self.spans(), test_id)
            return found[0] is not None

        wait_until(ready, timeout)
        assert found[0] is not None, f"no spans for {test_id}: {self.names()}"
        return found[0]

    def points(self, metric: str) -> list[ReceivedPoint]:
        """Metric points (in-process: read now; gunicorn: what the receiver has)."""
        if self.telemetry is not None:
            found = []
            for point in self.telemetry.points(metric):
                found.append(
                    ReceivedPoint(
                        metric=metric,
                        attributes=dict(point.attributes),
                        resource={},
                        scope="otel_stream",
                        value=getattr(point, "value", None),
                        count=getattr(point, "count", None),
                        total=getattr(point, "sum", None),
                        bounds=tuple(getattr(point, "explicit_bounds", ()) or ()),
                    )
                )
            return found
        assert self.receiver is not None
        return [
            point
            for point in self.receiver.points(metric)
            if point.resource.get("service.name") == self.service
        ]


# gunicorn -------------------------------------------------------------------------------


def gunicorn_command(target: str, port: int, worker: str, *extra: str) -> list[str]:
    """``gunicorn`` serving ``target`` with one ``worker`` ("sync" or "gthread") process."""
    from gunicorn.config import KNOWN_SETTINGS

    argv = [str(BIN / "gunicorn"), "-k", worker, "-w", "1", "-b", f"127.0.0.1:{port}"]
    if worker == "gthread":
        argv += ["--threads", "8"]
    if any(setting.name == "control_socket_disable" for setting in KNOWN_SETTINGS):
        argv.append("--no-control-socket")  # a socket in the home directory otherwise
    return [*argv, "--graceful-timeout", "10", *extra, target]


def gunicorn_process(
    worker: str,
    receiver: OTLPReceiver,
    service: str,
    target: str = "tests.wsgi_served:app",
    *extra: str,
    directory: Path = ROOT,
    **variables: str,
) -> ServerProcess:
    """A gunicorn process (not started) whose app exports to ``receiver``; its output goes
    to files in a temporary directory."""
    env = environment(receiver, service, directory, **variables)
    env.setdefault("DJANGO_SETTINGS_MODULE", "tests.wsgi_django_settings")
    port = free_port()
    argv = gunicorn_command(target, port, worker, *extra)
    return ServerProcess(argv, env, _logs(), port, name=f"{service}-{worker}")


_LOGS: list[tempfile.TemporaryDirectory[str]] = []


def _logs() -> Path:
    """One directory for the server processes' output, removed when the tests end."""
    if not _LOGS:
        _LOGS.append(tempfile.TemporaryDirectory(prefix="otel-stream-wsgi-"))
    return Path(_LOGS[0].name)


#: Every test request carries this header; the spans of a request are found by it.
TEST_ID_HEADER = "X-Test-Id"
TEST_ID_ATTRIBUTE = "http.request.header.x_test_id"
CAPTURE = {"OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": "x-test-id"}


def test_id_of(span: ReceivedSpan) -> str | None:
    value = span.attributes.get(TEST_ID_ATTRIBUTE)
    if isinstance(value, (list, tuple)) and value:
        return str(value[0])
    return None


@dataclass
class Exchange:
    """The spans of one request: its request span, and its stream span if it streamed."""

    request: ReceivedSpan
    stream: ReceivedSpan | None

    @property
    def ended(self) -> ReceivedSpan:
        """The span that holds the termination reason."""
        return self.stream if self.stream is not None else self.request

    @property
    def reason(self) -> Any:
        return self.ended.attributes.get("http.stream.termination_reason")


def exchange_in(spans: Sequence[ReceivedSpan], test_id: str) -> Exchange | None:
    requests = [span for span in spans if test_id_of(span) == test_id]
    if len(requests) != 1:
        return None
    (request,) = requests
    streams = [
        span
        for span in spans
        if span.parent_span_id == request.span_id and span.name.endswith(" stream")
    ]
    if streams:
        return Exchange(request, streams[0])
    if "http.stream.termination_reason" in request.attributes:
        return Exchange(request, None)
    return None


@contextlib.contextmanager
def running_app(
    server: str,
    app_name: str,
    receiver: OTLPReceiver,
    *,
    wrap: str = "middleware",
    **variables: str,
) -> Iterator[Served]:
    """The test app ``app_name`` of ``tests.wsgi_served`` on ``server``, with otel-stream
    (``wrap="none"``: bare). In-process servers record into a fresh in-memory
    :class:`Telemetry`; gunicorn exports to ``receiver``. Request spans carry the
    ``X-Test-Id`` header."""
    service = f"wsgi-{app_name}-{server}-{wrap}-{free_port()}"
    if server in IN_PROCESS:
        from tests import wsgi_served

        telemetry = Telemetry()
        saved = {name: os.environ.get(name) for name in {**CAPTURE, **variables}}
        os.environ.update({**CAPTURE, **variables})  # read when the middleware is built
        try:
            app = wsgi_served.build(
                app_name, telemetry.tracer_provider, telemetry.meter_provider, wrap=wrap
            )
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        try:
            with serve(app, server) as url:
                yield Served(server, url, telemetry=telemetry)
        finally:
            telemetry.shutdown()
        return
    worker = server.split("-", 1)[1]
    process = gunicorn_process(
        worker,
        receiver,
        service,
        WSGI_TEST_APP=app_name,
        WSGI_TEST_WRAP=wrap,
        OTEL_METRIC_EXPORT_INTERVAL="500",
        **CAPTURE,
        **variables,
    )
    try:
        process.start()
        process.wait_ready()
        yield Served(server, process.url, receiver=receiver, service=service, process=process)
    except BaseException:
        print(f"--- {' '.join(process.argv)}: stderr ---\n{process.stderr()[-4000:]}")
        raise
    finally:
        process.stop()


@dataclass
class Fetched:
    """What a streaming client received."""

    status: int
    headers: dict[str, str]
    body: bytes
    sent_at: float  # time.monotonic() when the request was sent
    arrivals: list[float]  # time.monotonic() of each chunk


def fetch(url: str, target: str, test_id: str, *, timeout: float = 10.0) -> Fetched:
    """GET ``url + target`` with httpx streaming, as ``X-Test-Id: test_id``."""
    import httpx

    arrivals: list[float] = []
    body = b""
    headers = {TEST_ID_HEADER: test_id}
    with httpx.Client(timeout=timeout) as client:
        sent_at = time.monotonic()
        with client.stream("GET", url + target, headers=headers) as response:
            for chunk in response.iter_raw():
                arrivals.append(time.monotonic())
                body += chunk
            return Fetched(response.status_code, dict(response.headers), body, sent_at, arrivals)


def by_name(spans: Sequence[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    return {span.name: span for span in spans}


def open_raw(
    url: str, target: str, headers: dict[str, str] | None = None, *, receive_buffer: int = 0
) -> socket.socket:
    """A raw socket that sent ``GET target`` (path and query) to the server at ``url``
    (``receive_buffer``: its SO_RCVBUF, set before connecting)."""
    host, port = url.rsplit("//", 1)[1].split(":")
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def reset(sock: socket.socket) -> None:
    """Close abortively: the peer gets an RST, not a FIN."""
    import struct

    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_all(url: str, target: str, test_id: str, timeout: float = 10.0) -> bytes:
    """The raw bytes of a ``Connection: close`` response, read until the server closes."""
    sock = open_raw(url, target, {TEST_ID_HEADER: test_id, "Connection": "close"})
    sock.settimeout(timeout)
    received = b""
    with sock:
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
    return received


def without_date(response: bytes) -> bytes:
    """A raw response without its ``Date`` header (the one line that may differ)."""
    head, _, body = response.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"date:")]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
