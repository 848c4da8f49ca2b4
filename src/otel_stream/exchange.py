"""What one streamed exchange is, whatever carries it: a phase, counters, and how it ended.

A request starts; its first body byte goes out (and with it, often, the first token);
chunks flow; it ends for one of the termination reasons. That is the same on an ASGI
server, a WSGI server and an HTTP client, so it is written once, here. Each transport's
adapter feeds an :class:`Exchange` the events it sees, with clock values it read itself,
and the recorder reads the exchange once, when it ends.

Choices made on purpose (read before "fixing"):

* **Pure.** No OpenTelemetry, no asyncio, no ASGI or WSGI: the state can be tested, and
  reasoned about, alone. Times are ``perf_counter`` values handed in by the adapter.
* **One named phase.** ``WAITING`` (no body byte yet), ``STREAMING`` (the first byte
  went out; the rest of the response, body or trailers, may follow), ``COMPLETE`` (the
  final message was handed over), then ``ENDED`` (recorded). Whether the first byte was
  also the last body message (no stream to record) is ``streamed``. The peer leaving is
  not a phase but a fact with a time: a stream whose client left is still "streaming"
  in the phase reported with its termination.
* **Counts freeze when the peer leaves.** What an app sends after its client has gone
  reaches nobody, so the chunks, bytes and end time of the exchange are those at the
  moment the peer left.
* **A leave seen while the final message was being sent does not count.** A server may
  close the connection while it sends the final message (hypercorn, with
  ``Connection: close``) and report a disconnect before that send returns; the answer
  was whole. A failed send always counts: the bytes did not get out.
* **The hop.** A relay's server exchange learns, through :data:`current_exchange`, when
  the first upstream stream read inside it got its first byte; the first one counts.
"""

from __future__ import annotations

import enum
from contextvars import ContextVar

from otel_stream import termination


class Phase(enum.Enum):
    """Where an exchange is."""

    WAITING = "waiting"
    STREAMING = "streaming"
    COMPLETE = "complete"
    ENDED = "ended"


class Exchange:
    """The state of one exchange, from its start to its end.

    Args:
        started_at: Clock value when the request started.
    """

    # Slots: faster attribute access on the per-chunk path, less memory per open stream.
    __slots__ = (
        "bytes",
        "bytes_when_left",
        "chunks",
        "chunks_when_left",
        "ended_at",
        "first_byte_at",
        "first_raw_byte_at",
        "last_chunk_at",
        "left_at",
        "max_chunk_gap",
        "peer_left",
        "phase",
        "send_failed",
        "send_wait",
        "started_at",
        "streamed",
        "upstream_first_byte_at",
        "upstream_time_to_first_byte",
    )

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.phase = Phase.WAITING
        # Measurements (data, not state: the phase says what has happened).
        self.first_byte_at: float | None = None
        self.first_raw_byte_at: float | None = None
        self.ended_at = started_at
        self.last_chunk_at = started_at
        self.chunks = 0
        self.bytes = 0
        self.max_chunk_gap = 0.0
        self.send_wait = 0.0
        #: The first byte was not the last body message: there is a stream to record.
        self.streamed = False
        # The peer.
        self.peer_left = False
        self.send_failed = False
        self.left_at = 0.0
        self.chunks_when_left = 0
        self.bytes_when_left = 0
        # The first upstream stream read inside this exchange (a relay).
        self.upstream_first_byte_at: float | None = None
        self.upstream_time_to_first_byte: float | None = None

    # Events, in the order they can happen ---------------------------------------------

    def raw_chunk(self, at: float, size: int) -> None:
        """Bytes before the first byte that are not it (SSE comments while waiting)."""
        if self.first_raw_byte_at is None:
            self.first_raw_byte_at = at
        self.chunks += 1
        self.bytes += size
        self.last_chunk_at = at

    def first_byte(
        self, at: float, sent_at: float, size: int, *, more: bool, empty: bool = False
    ) -> None:
        """The first body byte was handed over at ``at``; its send returned at ``sent_at``.

        ``size`` bytes are counted (0 for a file sent by path: its size is unknown);
        ``more``: the body goes on (a stream); ``empty``: an empty final message, which
        completes the response without a chunk.
        """
        if self.first_raw_byte_at is None and not empty:
            self.first_raw_byte_at = at
        self.first_byte_at = at
        self.last_chunk_at = at
        if not empty:
            self.chunks += 1
            self.bytes += size
        self.send_wait += sent_at - at
        self.streamed = more
        self.phase = Phase.STREAMING

    def chunk(self, at: float, sent_at: float, size: int) -> None:
        """A body chunk of a stream: handed over at ``at``, its send returned at ``sent_at``."""
        gap = at - self.last_chunk_at
        if gap > self.max_chunk_gap:
            self.max_chunk_gap = gap
        self.last_chunk_at = at
        self.chunks += 1
        self.bytes += size
        self.send_wait += sent_at - at

    def empty_send(self, at: float, sent_at: float) -> None:
        """A body message without bytes, in a stream: only the time ``send`` took counts."""
        self.send_wait += sent_at - at

    def complete(self, at: float, sent_at: float) -> None:
        """The final message (body or trailers) was handed over at ``at`` and sent."""
        self.phase = Phase.COMPLETE
        self.ended_at = sent_at
        if self.peer_left and not self.send_failed and self.left_at >= at:
            self.peer_left = False  # left while the final message went out: it was whole

    def left(self, at: float) -> None:
        """The peer went away; counts freeze. Ignored once the response is complete."""
        if self.phase is Phase.COMPLETE or self.phase is Phase.ENDED:
            return
        self._freeze(at)

    def failed_send(self, at: float) -> None:
        """Handing a message to the peer failed: the peer is gone, whatever the phase."""
        self.send_failed = True
        self._freeze(at)

    def _freeze(self, at: float) -> None:
        """The peer left at ``at`` (the first time only): remember the counts then."""
        if self.peer_left:
            return
        self.peer_left = True
        self.left_at = at
        self.chunks_when_left = self.chunks
        self.bytes_when_left = self.bytes

    def upstream_first_byte(self, at: float, time_to_first_byte: float) -> None:
        """An upstream stream read inside this exchange got its first byte (first one wins)."""
        if self.upstream_first_byte_at is None:
            self.upstream_first_byte_at = at
            self.upstream_time_to_first_byte = time_to_first_byte

    def outcome(self, error: BaseException | None, *, payload_truncated: bool = False) -> str:
        """The server-side termination reason, decided before :meth:`end`."""
        return termination.classify(
            error=error,
            response_complete=self.phase is Phase.COMPLETE,
            disconnected=self.peer_left,
            send_failed=self.send_failed,
            payload_truncated=payload_truncated,
        )

    def client_outcome(
        self,
        error: BaseException | None,
        *,
        payload_truncated: bool = False,
        payload_whole: bool = False,
    ) -> str:
        """The client-side termination reason (an outgoing call), decided before :meth:`end`."""
        return termination.classify_client(
            error=error,
            body_complete=self.phase is Phase.COMPLETE,
            payload_truncated=payload_truncated,
            payload_whole=payload_whole,
        )

    def end(self, now: float) -> None:
        """The exchange is over: fix its end time and counts."""
        if self.peer_left:
            self.ended_at = self.left_at
            self.chunks = self.chunks_when_left
            self.bytes = self.bytes_when_left
        elif self.phase is not Phase.COMPLETE:
            self.ended_at = now
        self.phase = Phase.ENDED

    # Derived --------------------------------------------------------------------------

    @property
    def reported_phase(self) -> str:
        """``http.stream.phase`` at the end: waiting if no first byte went out."""
        if self.first_byte_at is None:
            return termination.PHASE_WAITING
        return termination.PHASE_STREAMING

    @property
    def time_to_first_byte(self) -> float | None:
        return None if self.first_byte_at is None else self.first_byte_at - self.started_at

    @property
    def stream_duration(self) -> float:
        """From the first byte to the end (0 when no first byte went out)."""
        if self.first_byte_at is None:
            return 0.0
        return max(0.0, self.ended_at - self.first_byte_at)


#: The server exchange whose app is running in this context (for the hop).
current_exchange: ContextVar[Exchange | None] = ContextVar(
    "otel_stream_current_exchange", default=None
)
