"""Readers of LLM wire formats passing through a streaming response (SSE, NDJSON).

The middleware feeds each body chunk to a reader as it passes; the reader never holds
more than a bounded tail of the stream, and never raises on bad input. Until the first
token it reads every event; after it, only the end of the stream (tail mode, see
``framing``). When the stream ends, ``finish()`` returns a :class:`PayloadSummary`.

``framing`` cuts the bytes into events (SSE) or lines (NDJSON); ``formats`` recognises
OpenAI chat completions, OpenAI Responses, Anthropic messages and Ollama payloads and
reads from them only what the summary needs. The package imports nothing else of
``otel_stream``: a reader that fails keeps the exception in ``error`` for its caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from otel_stream.payloads.framing import NdjsonReader, SseReader
from otel_stream.payloads.summary import PayloadSummary

__all__ = ["PayloadReader", "PayloadSummary", "make_reader"]

_SSE = b"text/event-stream"
_NDJSON = frozenset({b"application/x-ndjson", b"application/jsonl", b"application/json-lines"})


class PayloadReader(Protocol):
    """What ``make_reader`` returns: feed it every body chunk, then ``finish`` it."""

    @property
    def first_token_at(self) -> float | None:
        """Clock value of the first event carrying generated content, once read."""

    @property
    def error(self) -> Exception | None:
        """The exception that stopped the reader, if one did; it then reads no more.

        Readers never raise and never log: the caller logs this once."""

    def feed(self, chunk: bytes) -> None:
        """Read one body chunk; never raises."""

    def finish(self) -> PayloadSummary:
        """The summary of everything fed so far."""


def make_reader(
    content_type: bytes, max_event_bytes: int, clock: Callable[[], float]
) -> PayloadReader | None:
    """A reader for ``content_type`` (lower-cased header value), or None if not LLM-aware."""
    media_type = content_type.split(b";", 1)[0].strip()
    if media_type == _SSE:
        return SseReader(max_event_bytes, clock)
    if media_type in _NDJSON:
        return NdjsonReader(max_event_bytes, clock)
    return None
