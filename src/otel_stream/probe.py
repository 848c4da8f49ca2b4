"""``otel-stream probe URL``: does the chain in front of a streaming endpoint stream?

The probe asks the way a browser does (``Accept-Encoding: gzip, deflate, br``, so a
compressing hop compresses) and timestamps every read that brings body bytes. It reads
the raw bytes (httpx ``iter_raw``): decompressing first would hide when bytes arrived.

The verdict rule:

* **error** (exit 1): the URL is unreachable, the status is not 2xx, no body byte came
  within the timeout, the response is not a stream (a non-streaming content type in a
  single read), or the exchange was too short to tell (under :data:`MIN_TOTAL` seconds
  from request to last byte: nothing had time to be held back).
* **buffers** (exit 2): the body arrived in lumps: at least :data:`LUMP_SHARE` of its
  bytes in one read; or at least :data:`TAIL_SHARE` of its bytes within the last
  :data:`TAIL_WINDOW` seconds (or the last tenth of the exchange, if longer); or, where
  the events can be counted (SSE or NDJSON, not compressed or gzip/deflate), the median
  read that completed an event completed more than :data:`MAX_EVENTS_PER_READ`. A hop
  that holds the stream (a proxy buffer, a gzip filter) releases it when its buffer fills
  or the response ends, so events produced one by one arrive together; on an unbuffered
  chain a streaming model's events arrive about one per read.
* **streams** (exit 0): otherwise; the bytes arrived spread over the exchange.

The rule judges what the client got, so an endpoint that itself produces its whole
answer at once "buffers" too: probe the app directly first, then each hop outwards; the
first hop that turns "streams" into "buffers" is the one to fix
(docs/buffering-chain.md).
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx

from otel_stream.version import __version__

EXIT_STREAMS = 0
EXIT_ERROR = 1
EXIT_BUFFERS = 2

#: A single read holding this share of the body is a lump.
LUMP_SHARE = 0.5
#: This share of the body arriving within the final window is a lump at the end.
TAIL_SHARE = 0.9
#: The final window, in seconds (or a tenth of the exchange, when that is longer).
TAIL_WINDOW = 0.1
#: An exchange shorter than this (seconds) cannot show buffering.
MIN_TOTAL = 0.2
#: More events than this in the median read means they were held and released together.
MAX_EVENTS_PER_READ = 3

STREAMING_TYPES = (
    "text/event-stream",
    "application/x-ndjson",
    "application/jsonl",
    "application/json-seq",
    "application/stream+json",
    "multipart/x-mixed-replace",
)
SHOWN_HEADERS = (
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "content-length",
    "x-accel-buffering",
    "cache-control",
    "via",
    "server",
)
DEFAULT_MODEL = "demo"


@dataclass
class Observation:
    """What arrived, timed from just before the request was sent (seconds)."""

    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    headers_at: float = 0.0
    arrivals: list[tuple[float, int]] = field(default_factory=list)
    #: Events completed by each read, when the body's events can be counted.
    events_per_read: list[int] | None = None
    timed_out: bool = False
    #: Why the body stopped early, when the connection broke.
    broken: str | None = None

    @property
    def events(self) -> int | None:
        return None if self.events_per_read is None else sum(self.events_per_read)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None

    @property
    def body_bytes(self) -> int:
        return sum(size for _, size in self.arrivals)


@dataclass
class Verdict:
    exit_code: int
    line: str
    evidence: list[str] = field(default_factory=list)


def request_for(
    url: str,
    method: str | None,
    data: str | None,
    headers: Sequence[str],
    model: str = DEFAULT_MODEL,
) -> tuple[str, dict[str, str], bytes | None]:
    """Method, headers and body: a browser's defaults, then the user's ``--header``s."""
    body: bytes | None = None
    content_type: str | None = None
    if data is None and url.split("?", 1)[0].rstrip("/").endswith("/v1/chat/completions"):
        data = json.dumps(
            {
                "model": model,
                "stream": True,
                "messages": [{"role": "user", "content": "Say hello in a few words."}],
            }
        )
    if data is not None:
        body = data.encode()
        try:
            json.loads(data)
            content_type = "application/json"
        except ValueError:
            content_type = "text/plain; charset=utf-8"
    chosen = (method or ("POST" if body is not None else "GET")).upper()
    result = {
        "user-agent": f"otel-stream-probe/{__version__}",
        "accept": "text/event-stream" if chosen == "GET" else "*/*",
        "accept-encoding": "gzip, deflate, br",
        "cache-control": "no-cache",
    }
    if content_type:
        result["content-type"] = content_type
    for header in headers:
        name, separator, value = header.partition(":")
        if not separator or not name.strip():
            raise ValueError(f"a header must look like 'Name: value', got {header!r}")
        result[name.strip().lower()] = value.strip()
    return chosen, result, body


def observe(
    url: str, method: str, headers: dict[str, str], body: bytes | None, timeout: float
) -> Observation:
    """Send the request and time every read that brings body bytes."""
    observation = Observation()
    counter = _EventCounter()
    limits = httpx.Timeout(timeout, connect=min(timeout, 10.0))
    with httpx.Client(timeout=limits, follow_redirects=True) as client:
        started = time.perf_counter()
        with client.stream(method, url, headers=headers, content=body) as response:
            _read(response, observation, counter, started, timeout)
    if counter.enabled:
        observation.events_per_read = counter.per_read
    return observation


def _read(
    response: httpx.Response,
    observation: Observation,
    counter: _EventCounter,
    started: float,
    timeout: float,
) -> None:
    observation.headers_at = time.perf_counter() - started
    observation.status = response.status_code
    observation.headers = [
        (k.decode("latin-1"), v.decode("latin-1")) for k, v in response.headers.raw
    ]
    counter.configure(observation.header("content-encoding"), observation.header("content-type"))
    if not 200 <= response.status_code < 300:
        return
    try:
        for chunk in response.iter_raw():
            at = time.perf_counter() - started
            observation.arrivals.append((at, len(chunk)))
            counter.feed(chunk)
            if at >= timeout:
                observation.timed_out = True
                break
    except httpx.ReadTimeout:
        observation.timed_out = True
    except httpx.TransportError as error:
        observation.broken = _reason(error)


class _EventCounter:
    """Counts SSE events or NDJSON lines per read in the (decompressed) body, where it can."""

    def __init__(self) -> None:
        self.decoder: Any = None
        self.enabled = False
        self.separator = b"\n\n"
        self.per_read: list[int] = []
        self.tail = b""

    def configure(self, encoding: str | None, content_type: str | None) -> None:
        media = (content_type or "").split(";", 1)[0].strip().lower()
        if media == "text/event-stream":
            self.separator = b"\n\n"
        elif media in ("application/x-ndjson", "application/jsonl"):
            self.separator = b"\n"
        else:
            return
        coding = (encoding or "identity").strip().lower()
        if coding == "gzip":
            self.decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif coding == "deflate":
            self.decoder = zlib.decompressobj()
        elif coding != "identity":
            return  # br, zstd: not counted
        self.enabled = True

    def feed(self, chunk: bytes) -> None:
        if not self.enabled:
            return
        try:
            data = self.decoder.decompress(chunk) if self.decoder is not None else chunk
        except zlib.error:
            self.enabled = False
            return
        text = (self.tail + data).replace(b"\r\n", b"\n")
        self.per_read.append(text.count(self.separator))
        # Keep what could start a separator split across reads, counted once.
        keep = len(self.separator) - 1
        self.tail = text[-keep:] if keep and not text.endswith(self.separator) else b""


def judge(observation: Observation) -> Verdict:
    """Apply the verdict rule of the module docstring."""
    status = observation.status
    if not 200 <= status < 300:
        return Verdict(EXIT_ERROR, f"error: HTTP {status}: not a successful response")
    arrivals = observation.arrivals
    if observation.broken is not None:
        received = f"{observation.body_bytes} bytes in {len(arrivals)} reads"
        return Verdict(
            EXIT_ERROR, f"error: the connection broke after {received}: {observation.broken}"
        )
    if not arrivals:
        if observation.timed_out:
            return Verdict(EXIT_ERROR, "error: no body byte arrived before the timeout")
        return Verdict(EXIT_ERROR, "error: the response has no body")
    total_bytes = observation.body_bytes
    first_at, last_at = arrivals[0][0], arrivals[-1][0]
    content_type = (observation.header("content-type") or "").split(";", 1)[0].strip().lower()
    streaming_type = content_type in STREAMING_TYPES
    largest = max(size for _, size in arrivals)
    window = max(TAIL_WINDOW, last_at / 10)
    in_tail = sum(size for at, size in arrivals if at >= last_at - window)
    evidence = [
        f"time to first byte {first_at:.3f} s (headers at {observation.headers_at:.3f} s), "
        f"last byte at {last_at:.3f} s",
        f"{len(arrivals)} reads, {total_bytes} bytes"
        + (f", {observation.events} events" if observation.events is not None else "")
        + f", spread over {last_at - first_at:.3f} s",
        f"largest read {largest} bytes ({largest / total_bytes:.0%} of the body); "
        f"{in_tail / total_bytes:.0%} of the body arrived in the last {window:.3f} s",
    ]
    described = _describe(observation, content_type)
    if not streaming_type and len(arrivals) == 1:
        return Verdict(
            EXIT_ERROR,
            f"error: not a stream: one {total_bytes}-byte {content_type or 'untyped'} body",
            evidence,
        )
    if last_at < MIN_TOTAL and not observation.timed_out:
        return Verdict(
            EXIT_ERROR,
            f"error: inconclusive: the whole response took {last_at * 1000:.0f} ms, too short "
            "to show buffering; probe an answer that takes longer",
            evidence,
        )
    lump = largest >= LUMP_SHARE * total_bytes
    at_end = in_tail >= TAIL_SHARE * total_bytes
    if lump or at_end:
        share = largest if lump else in_tail
        return Verdict(
            EXIT_BUFFERS,
            f"buffers: {share / total_bytes:.0%} of the body arrived at once after "
            f"{(last_at if at_end else first_at):.2f} s ({described})",
            evidence,
        )
    batch = _median_events_per_read(observation)
    if batch is not None:
        evidence.append(f"a read that completed events completed {batch} of them (median)")
        if batch > MAX_EVENTS_PER_READ:
            return Verdict(
                EXIT_BUFFERS,
                f"buffers: {observation.events} events arrived in {len(arrivals)} reads of up "
                f"to {largest} bytes, {batch} at a time ({described})",
                evidence,
            )
    return Verdict(
        EXIT_STREAMS,
        f"streams: {len(arrivals)} reads spread over {last_at - first_at:.2f} s after the first "
        f"byte at {first_at:.2f} s ({described})",
        evidence,
    )


def _median_events_per_read(observation: Observation) -> int | None:
    counts = sorted(count for count in observation.events_per_read or () if count)
    return counts[(len(counts) - 1) // 2] if counts else None


def _describe(observation: Observation, content_type: str) -> str:
    parts = [content_type or "no content-type"]
    encoding = observation.header("content-encoding")
    parts.append(f"content-encoding {encoding}" if encoding else "not compressed")
    return ", ".join(parts)


def hints(observation: Observation, verdict: Verdict) -> list[str]:
    """What to look at when the chain buffers."""
    if verdict.exit_code != EXIT_BUFFERS:
        return []
    found = []
    encoding = observation.header("content-encoding")
    if encoding:
        found.append(
            f"a hop compresses the stream (Content-Encoding: {encoding}); compressors buffer: "
            "exclude text/event-stream from compression (nginx: gzip_types; Starlette's "
            "GZipMiddleware already does)"
        )
    if observation.header("x-accel-buffering") is None:
        found.append(
            "behind nginx: set proxy_buffering off, or have the app send "
            "'X-Accel-Buffering: no' (StreamingMiddleware(accel_buffering_header=True)); "
            "nginx removes that header, so its absence here proves nothing"
        )
    if observation.header("content-length") is not None:
        found.append(
            "the response has a Content-Length: a hop collected the whole body before sending it"
        )
    found.append("probe the app directly, then each hop outwards: docs/buffering-chain.md")
    return found


def main(
    url: str,
    *,
    method: str | None = None,
    data: str | None = None,
    headers: Sequence[str] = (),
    timeout: float = 30.0,
    model: str = DEFAULT_MODEL,
    out: TextIO | None = None,
) -> int:
    """Run the probe and print the evidence; the verdict is the last line."""
    out = out or sys.stdout
    try:
        chosen, request_headers, body = request_for(url, method, data, headers, model)
        observation = observe(url, chosen, request_headers, body, timeout)
    except ValueError as error:
        print(f"error: {error}", file=out)
        return EXIT_ERROR
    except httpx.TimeoutException:
        print(f"error: {url} did not answer within {timeout:g} s", file=out)
        return EXIT_ERROR
    except (httpx.HTTPError, OSError) as error:
        print(f"error: cannot reach {url}: {_reason(error)}", file=out)
        return EXIT_ERROR
    verdict = judge(observation)
    print(f"{chosen} {url} -> HTTP {observation.status}", file=out)
    for name in SHOWN_HEADERS:
        value = observation.header(name)
        print(f"  {name}: {value if value is not None else '(none)'}", file=out)
    for line in verdict.evidence:
        print(f"  {line}", file=out)
    if observation.arrivals:
        print("  arrivals (s: bytes): " + _timeline(observation.arrivals), file=out)
    if observation.timed_out:
        print(f"  stopped reading after {timeout:g} s; the stream was still open", file=out)
    for hint in hints(observation, verdict):
        print(f"  hint: {hint}", file=out)
    print(verdict.line, file=out)
    return verdict.exit_code


def _timeline(arrivals: list[tuple[float, int]], shown: int = 6) -> str:
    items = [f"{at:.3f}: {size}" for at, size in arrivals]
    if len(items) > 2 * shown:
        items = [*items[:shown], f"... {len(items) - 2 * shown} more ...", *items[-shown:]]
    return ", ".join(items)


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return " ".join(text.split())
