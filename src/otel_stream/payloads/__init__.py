"""Readers of LLM wire formats passing through a streaming response (SSE, NDJSON).

The middleware feeds each body chunk to a reader as it passes; the reader never holds
more than a bounded tail of an unfinished event, and never raises on bad input. When the
stream ends, ``finish()`` returns a :class:`PayloadSummary`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class PayloadSummary:
    """What a reader learned from one stream. Message content is never kept."""

    events: int = 0
    #: Clock value (the reader's clock) of the first event carrying generated content.
    first_token_at: float | None = None
    finish_reasons: tuple[str, ...] = ()
    input_tokens: int | None = None
    output_tokens: int | None = None
    #: True when a format with an end marker was recognised and the marker never came.
    truncated: bool = False


class PayloadReader(Protocol):
    def feed(self, chunk: bytes) -> None:
        """Read one body chunk; never raises."""

    def finish(self) -> PayloadSummary:
        """The summary of everything fed so far."""


def make_reader(
    content_type: bytes, max_event_bytes: int, clock: Callable[[], float]
) -> PayloadReader | None:
    """A reader for ``content_type`` (lower-cased header value), or None if not LLM-aware."""
    return None
