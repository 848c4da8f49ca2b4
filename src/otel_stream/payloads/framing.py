"""Cut a body, chunk by chunk, into SSE events or NDJSON lines, holding a bounded tail.

Choices made on purpose (read before "fixing"):

* **Nothing is copied in the common case.** A chunk that holds whole events is only
  scanned (``bytes.find``); the bytes of an unfinished event are kept as a list of
  pieces, joined once when the event completes, never concatenated per chunk.
* **Tail mode: after the first token, only the end of a stream is read.** Per event,
  even a byte scan in Python costs more than a whole span of other instrumentation, and
  once the first token is known what the summary still needs lives at the end of a
  stream: finish reasons, usage, the end marker, an error. So the reader that has read
  the first token (with nothing half-read but an unfinished event: no ``\\r`` pending, no
  oversized event) turns into its tail-mode class (``_SseTail``, ``_NdjsonTail``; its
  class is swapped, so no per-chunk flag is tested). Each chunk is then only appended
  to a list and its size taken off the batch's room; once the batch holds more than
  ``BATCH_BYTES``, it is joined, its line ends are counted
  (``len(block) - len(block.replace(b"\\n", b""))``: memchr speed; ``bytes.count`` and
  any multi-byte search are several times slower) and the block joins the window. The
  window keeps at least ``WINDOW_BYTES`` before the start of the last event and the last
  event whole, up to ``WINDOW_BYTES + max_event_bytes`` in all; beyond that the last
  event's first 4 KiB are saved and it is read at the end as an oversized event (its
  saved head and the window's end). ``finish()`` frames and reads the last event and the
  events that start at most ``WINDOW_BYTES`` before it, from an event boundary, with the
  same interpreter: it already holds the format, model and first token. If that reading
  fails, the summary keeps what was read before it (and the events counted). Memory
  in tail mode: the batch (references to chunks: ``BATCH_BYTES`` and one chunk), the
  window (``WINDOW_BYTES``, the last event up to ``max_event_bytes``, and the newest
  block, which is never dropped: one batch, or one chunk larger than ``BATCH_BYTES``,
  referenced, not copied) and a 4 KiB saved head.
* **What tail mode misses, on purpose** (each proved by a test in
  ``tests/test_payloads_tail.py``): whatever only an event before the window's end
  says, namely the finish reason of a choice (``n`` > 1) that finished well before the
  others; an error reported mid-stream when the stream then went on (an error that ends
  the stream is read); an end-of-stream event that starts more than ``WINDOW_BYTES``
  before the last event (a huge finish chunk followed by a usage chunk); and a model
  named only in events after the first token (as before). Usage and end markers are
  read whenever they are in the last events, as every format writes them.
* **Tail mode counts events from line ends.** ``http.stream.events`` after the switch
  is the number of line ends divided by the line ends of the last event read before it
  (2 for ``data: ...\\n\\n``, 3 with an ``event:`` line; 1 for NDJSON), rounded to the
  nearest whole event, minus all those of an unfinished last event (an oversized one's
  dropped middle included: the count at each event's start is kept). That is exact for every
  server's stream in the test corpus, whatever the chunking, since each writes every
  event with the same lines; it is approximate when later events have other lines:
  a comment-only event (``: ping``) counts as ``2/k`` of an event (one in a stream of
  ``data:`` lines), an ``id:`` or ``retry:`` line or a multi-line ``data`` adds ``1/k``,
  and a blank or whitespace-only NDJSON line counts as a line. A stream that ends lines
  with a lone ``\\r`` is never read in tail mode (its line ends would not be counted).
  Before the switch, and for streams whose format is not recognised or that carry no
  token, every event is read and counted exactly, as before.
* **Bounded memory.** An event longer than ``max_event_bytes`` is not buffered: its first
  4 KiB and its last 16 KiB (at most ``max_event_bytes`` each) are kept and everything
  between is dropped until the event ends. The event still counts, and the interpreter
  scans those ends for the few fields an oversized event can carry (see ``formats``).
* **SSE line ends.** ``\\r\\n`` and lone ``\\r`` are rewritten to ``\\n`` only in chunks
  that contain a ``\\r`` (sse-starlette sends ``\\r\\n`` by default); a chunk that ends
  in ``\\r`` remembers it, so a ``\\r\\n`` split across two chunks is one line end.
* **The end of an SSE stream** dispatches nothing: an event without its blank line is
  discarded, as the SSE specification and browsers do. A final NDJSON line without its
  ``\\n`` is read: JSON Lines allows it.
* **A reader that fails stops.** Readers never raise: an exception inside one (a bug,
  or a clock that raises) is kept in ``error`` and the reader reads nothing more; its
  summary then never says ``truncated``, since it cannot tell whether the end came.
  Logging it is the caller's business, so this package depends on nothing else.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import replace

from otel_stream.payloads.formats import Interpreter
from otel_stream.payloads.summary import PayloadSummary

_HEAD_BYTES = 4096
_TAIL_BYTES = 16384
_BOM = b"\xef\xbb\xbf"

#: Tail mode: at least this many bytes of events before the last one are read at the end.
WINDOW_BYTES = 2048
#: Tail mode: bytes of chunks gathered before they are joined, counted and added to the
#: window.
BATCH_BYTES = 16384

_LF = 10
_CR = 13
_SPACE = 32
_COLON = 58
_DATA = b"data"
_DATA_FIELD = b"data:"
_DATA_FIELD_WITH_SPACE = b"data: "
_EVENT_END = b"\n\n"
_CRLF = b"\r\n"
_EVENT_END_CRLF = b"\r\n\r\n"
#: From the end of a one-line ``data: ...\r\n\r\n`` event: its first ``\r`` and ``\n``.
_CRLF_FIRST_CR_BACK = len(_EVENT_END_CRLF)
_CRLF_FIRST_LF_BACK = len(_EVENT_END_CRLF) - 1


def _lf(data: bytes) -> bytes:
    """``data`` with SSE's ``\\r\\n`` and lone ``\\r`` line ends written ``\\n``."""
    if data.find(b"\r") < 0:
        return data
    return data.replace(_CRLF, b"\n").replace(b"\r", b"\n")


def _last_part(window: bytes, end: bytes) -> bytes:
    """The end of ``window`` worth reading: the last event (``end``-separated) whole, and
    the events that start at most ``WINDOW_BYTES`` before it."""
    last = window.rfind(end, 0, len(window) - 1)  # where the last event begins
    if last <= WINDOW_BYTES:
        return window
    cut = window.find(end, last - WINDOW_BYTES)  # found: ``last`` is one
    return window[cut + len(end) :]


class _Reader:
    """What SSE and NDJSON readers share: the held tail, the oversized-event state and
    the state of tail mode.

    Args:
        max_event_bytes: The longest event (or line) that is decoded; longer ones are
            skipped with bounded memory.
        clock: The clock whose value marks the first token.
        tail: Whether the reader switches to tail mode once the first token is known
            (off only in tests, to compare against reading every event).
    """

    __slots__ = (
        "aligned",
        "at_switch",
        "batch",
        "batch_room",
        "blocks",
        "error",
        "evicted",
        "head",
        "head_bytes",
        "held",
        "interpreter",
        "lines",
        "lines_at_start",
        "max_event_bytes",
        "may_tail",
        "needle",
        "per_event",
        "pieces",
        "saved",
        "saved_end",
        "seq",
        "skipping",
        "start_at",
        "start_seq",
        "switch_per_event",
        "tail_bytes",
        "total",
        "window",
    )

    #: True once the reader reads only the end of the stream (its class is then the
    #: tail-mode class).
    tailing = False

    def __init__(
        self, max_event_bytes: int, clock: Callable[[], float], *, tail: bool = True
    ) -> None:
        self.interpreter = Interpreter(clock)
        self.max_event_bytes = max(1, max_event_bytes)
        self.head_bytes = min(_HEAD_BYTES, self.max_event_bytes)
        self.tail_bytes = min(_TAIL_BYTES, self.max_event_bytes)
        self.pieces: list[bytes] = []  # the unfinished event
        self.held = 0  # bytes in ``pieces``
        self.skipping = False  # inside an oversized event
        self.head = b""  # first bytes of the oversized event
        self.window = b""  # last bytes of the oversized event seen so far
        #: The exception that stopped this reader, if one did.
        self.error: Exception | None = None
        self.may_tail = tail  # the state of tail mode is set by ``tail``
        #: Line ends per event (its blank line included) of the last event read before
        #: the switch: tail mode counts events as line ends divided by it.
        self.per_event = 1

    @property
    def first_token_at(self) -> float | None:
        """Clock value of the first event carrying generated content, once read."""
        return self.interpreter.first_token_at

    def failed(self, error: Exception) -> None:
        """Stop reading: keep ``error`` for the caller."""
        self.error = error

    def finish(self) -> PayloadSummary:
        """The summary of everything fed so far."""
        try:
            if self.error is None:
                try:
                    self.end()
                except Exception as error:  # reading the end failed: keep what was read
                    self.failed(error)
            summary = self.interpreter.summary()
        except Exception as error:
            self.failed(error)
            return PayloadSummary()
        if self.error is not None and summary.truncated:
            # The reader stopped early: it cannot tell whether the end marker came.
            return replace(summary, truncated=False)
        return summary

    def end(self) -> None:
        raise NotImplementedError

    def oversized(self, head: bytes, tail: bytes) -> None:
        self.interpreter.oversized(head, tail)

    def hold(self, rest: bytes) -> None:
        """Keep the start of an unfinished event, or start skipping it if too long."""
        held = self.held + len(rest)
        if held <= self.max_event_bytes:
            self.pieces.append(rest)
            self.held = held
            return
        joined = b"".join(self.pieces) + rest if self.pieces else rest
        self.pieces = []
        self.held = 0
        self.skipping = True
        self.head = joined[: self.head_bytes]
        self.window = joined[-self.tail_bytes :]

    def keep_window(self, data: bytes) -> None:
        """Remember the last bytes of an oversized event that goes on."""
        size = self.tail_bytes
        self.window = (self.window + data[-size:])[-size:]

    def skipped(self, last: bytes) -> None:
        """An oversized event ended with ``last``: read its ends, forget it."""
        self.keep_window(last)
        head, tail = self.head, self.window
        self.skipping = False
        self.head = self.window = b""
        self.oversized(head, tail)

    # Tail mode ---------------------------------------------------------------------------

    def tail(self, needle: bytes) -> None:
        """Switch to tail mode: from now on chunks are only gathered and counted.

        ``needle`` ends an event (or line) in the raw bytes to come; the unfinished event
        held now, if any, becomes the start of the window."""
        self.at_switch = self.interpreter.events  # events counted one by one
        #: The chunks not yet joined into a block, and the bytes they may still take.
        self.batch = [b"".join(self.pieces)] if self.pieces else []
        self.batch_room = BATCH_BYTES - self.held
        self.pieces = []
        self.held = 0
        self.blocks: deque[bytes] = deque()  # the window: the last blocks
        self.total = 0  # bytes in ``blocks``
        self.seq = 0  # number of the newest block
        self.lines = 0  # line ends counted since the switch
        #: Line ends per event of the last event read before the switch: the divisor of
        #: the count (the events read at the end set ``per_event`` again).
        self.switch_per_event = self.per_event
        self.needle = needle  # what ends an event (or line) in the raw bytes
        # Where the last event begins: its block's number and offset (the window begins
        # with an event).
        self.start_seq = 1
        self.start_at = 0
        self.lines_at_start = 0  # line ends counted before the last event begins
        self.evicted = False  # a block was dropped: the window may start inside an event
        self.aligned = False  # the last block dropped ended an event: the window does not
        self.saved: bytes | None = None  # first bytes of an event begun before the window
        self.saved_end = 0  # the block where that event ended (0: not yet)

    def keep(self, block: bytes) -> None:
        """Add ``block`` to the window, then drop the oldest blocks the window can spare:
        it keeps ``WINDOW_BYTES`` before the start of the last event, and the last event
        whole unless it outgrows ``max_event_bytes`` (then only its first bytes and the
        window's end). ``lines`` already counts the line ends of ``block``."""
        seq = self.seq = self.seq + 1
        needle = self.needle
        blocks = self.blocks
        at = block.rfind(needle, 0, len(block) - 1)  # a boundary that is not the last byte
        if at >= 0:
            self.start_seq = seq
            self.start_at = at + len(needle)
            # counted from the start to the end: the last event, a few hundred bytes
            self.lines_at_start = self.lines - block.count(b"\n", self.start_at)
            if self.saved is not None and not self.saved_end:
                self.saved_end = seq  # the event whose first bytes were saved has ended
        else:  # a boundary split between the last block and this one, or none
            edge = blocks[-1][-len(needle) :] if blocks else needle
            at = (edge + block[: len(needle) - 1]).rfind(needle)
            start = at + len(needle) - len(edge)
            if at >= 0 and start < len(block):
                self.start_seq = seq
                self.start_at = start
                self.lines_at_start = self.lines - block.count(b"\n", start)
            if (
                self.saved is not None
                and not self.saved_end
                and (at >= 0 or block.endswith(needle))
            ):
                self.saved_end = seq
        blocks.append(block)
        total = self.total + len(block)
        while len(blocks) > 1:
            first = seq - len(blocks) + 1
            rest = total - len(blocks[0])  # what the window keeps without the oldest block
            if first < self.start_seq:  # the oldest block is all before the last event
                # bytes from the start of the last event to the end
                since = sum(len(blocks[k]) for k in range(self.start_seq - first, len(blocks)))
                if rest - (since - self.start_at) < WINDOW_BYTES:
                    break
            elif rest < WINDOW_BYTES:
                break
            if first == self.start_seq:  # the last event begins in the oldest block
                if rest < WINDOW_BYTES + self.max_event_bytes:
                    break
                saved = blocks[0][self.start_at :]
                if len(saved) < self.head_bytes:
                    saved += blocks[1][: self.head_bytes]
                self.saved = saved[: self.head_bytes]
                self.saved_end = seq if block.endswith(needle) else 0
            elif self.saved is not None and self.saved_end and first >= self.saved_end:
                self.saved = None  # its end is dropped too: the window starts after it
            oldest = blocks.popleft()
            self.aligned = oldest.endswith(needle)
            total -= len(oldest)
            self.evicted = True
        self.total = total

    def stop_tailing(self, error: Exception) -> None:
        """A failure in tail mode: keep it and take back the reading class, which reads
        nothing once ``error`` is set."""
        self.failed(error)
        self.batch = []
        self.blocks.clear()
        self.__class__ = _FULL[type(self)]


class SseReader(_Reader):
    """Reads ``text/event-stream`` bodies: one ``data`` per event to the interpreter."""

    __slots__ = ("after_cr", "bom", "clean", "crlf", "lone_cr", "started")

    def __init__(
        self, max_event_bytes: int, clock: Callable[[], float], *, tail: bool = True
    ) -> None:
        super().__init__(max_event_bytes, clock, tail=tail)
        self.started = False  # the first bytes were checked for a byte order mark
        self.bom = b""
        self.after_cr = False  # the last chunk ended with \r: a leading \n belongs to it
        self.clean = False  # nothing pending from earlier chunks: one-event paths may run
        self.crlf = False  # a \r\n line end was seen
        self.per_event = 2  # "data: ...\n\n", until an event says otherwise
        self.lone_cr = False  # a lone \r line end was seen: tail mode would miscount it

    def feed(self, chunk: bytes) -> None:
        """Read one body chunk; never raises.

        A chunk that is exactly one event whose only data line is its last line
        (``data: ...\\n\\n``, optionally after ``event:``/``id:`` lines), the shape nearly
        every LLM server sends, is read without being cut; anything else goes through
        ``read``. Once the first token is known, the reader switches to tail mode.
        """
        if self.error is not None:
            return
        try:
            if type(chunk) is not bytes:
                chunk = bytes(chunk)
            if not (self.clean and self.one_event(chunk)):
                self.read(chunk)
                self.clean = self.started and not (self.after_cr or self.skipping or self.pieces)
            if (
                self.may_tail
                and self.interpreter.first_token_at is not None
                and self.started
                and not (self.after_cr or self.skipping or self.lone_cr)
            ):
                # What ends an event in the raw bytes to come ("\r\n\r\n" holds "\n\r\n").
                self.tail(b"\n\r\n" if self.crlf else _EVENT_END)
                self.__class__ = _SseTail
        except Exception as error:
            self.failed(error)
            self.clean = False

    def one_event(self, chunk: bytes) -> bool:
        """Read ``chunk`` if it is one event with its data on its last line; else False."""
        size = len(chunk)
        if chunk.find(_CR) >= 0:  # sse-starlette ends lines with "\r\n"
            if not (
                chunk.find(_CR) == size - _CRLF_FIRST_CR_BACK  # one line: "data: ...\r\n\r\n"
                and chunk.find(_LF) == size - _CRLF_FIRST_LF_BACK
                and chunk.endswith(_EVENT_END_CRLF)
                and chunk.startswith(_DATA_FIELD)
                and size - len(_CRLF) - 1 <= self.max_event_bytes
            ):
                return False
            start = len(_DATA_FIELD)
            if chunk[start] == _SPACE:
                start += 1
            self.crlf = True
            self.per_event = 2
            self.interpreter.handle(chunk[start : size - len(_EVENT_END_CRLF)])
            return True
        if not chunk.endswith(_EVENT_END):
            return False
        line = chunk.rfind(_LF, 0, size - len(_EVENT_END)) + 1  # the last line
        if not (
            chunk.startswith(_DATA_FIELD, line)
            and (line == 0 or chunk.find(_DATA, 0, line) < 0)
            and size - 1 <= self.max_event_bytes
        ):
            return False
        start = line + len(_DATA_FIELD)
        if chunk[start] == _SPACE:
            start += 1
        self.per_event = chunk.count(b"\n", 0, line) + 2
        self.interpreter.handle(chunk[start : size - len(_EVENT_END)])
        return True

    def read(self, data: bytes) -> None:
        if not self.started:
            data = self.bom + data
            if len(data) < len(_BOM) and _BOM.startswith(data):
                self.bom = data  # maybe the start of a byte order mark: wait for more
                return
            self.started = True
            self.bom = b""
            if data.startswith(_BOM):
                data = data[len(_BOM) :]
        if self.after_cr:
            self.after_cr = False
            if data.startswith(b"\n"):
                data = data[1:]
            else:
                self.lone_cr = True
        if data.find(_CR) >= 0:
            self.after_cr = data.endswith(b"\r")
            self.crlf = self.crlf or data.find(_CRLF) >= 0
            data = data.replace(_CRLF, b"\n")
            if data.find(_CR) >= 0:
                self.lone_cr = self.lone_cr or data.find(_CR, 0, len(data) - 1) >= 0
                data = data.replace(b"\r", b"\n")
        if not data:
            return
        start = 0
        if self.skipping:
            start = self.skip(data)
        elif self.pieces:
            start = self.complete(data)
        if start < 0:
            return
        # Events end at a blank line: a line feed followed by another. Searched for one
        # line feed at a time (``memchr``): a two-byte search is several times slower.
        find = data.find
        size = len(data)
        end = find(_LF, start)
        while end >= 0:
            if end + 1 == size or data[end + 1] != _LF:
                end = find(_LF, end + 1)
                continue
            if end > start:
                self.block(data[start : end + 1])
            start = end + len(_EVENT_END)
            end = find(_LF, start)
        if start < size:
            self.hold(data[start:] if start else data)

    def complete(self, data: bytes) -> int:
        """Finish the held event with ``data``; where the rest of ``data`` starts, or -1."""
        if data.startswith(b"\n") and self.pieces[-1].endswith(b"\n"):
            start = 1
        else:
            end = data.find(_EVENT_END)
            if end < 0:
                self.hold(data)
                return -1
            self.pieces.append(data[: end + 1])
            start = end + len(_EVENT_END)
        block = b"".join(self.pieces)
        self.pieces = []
        self.held = 0
        self.block(block)
        return start

    def skip(self, data: bytes) -> int:
        """Drop the oversized event up to its end; where the rest of ``data`` starts, or -1."""
        if data.startswith(b"\n") and self.window.endswith(b"\n"):
            self.skipped(b"")
            return 1
        end = data.find(_EVENT_END)
        if end < 0:
            self.keep_window(data)
            return -1
        self.skipped(data[: end + 1])
        return end + len(_EVENT_END)

    def block(self, block: bytes) -> None:
        """One event: its lines, each ending with ``\\n``."""
        if len(block) > self.max_event_bytes:
            self.oversized(block[: self.head_bytes], block[-self.tail_bytes :])
            return
        # The common case: one data line, the last line, and no "data" in the lines before.
        start = block.find(_DATA)
        if (
            start >= 0
            and (start == 0 or block[start - 1] == _LF)  # at a line start
            and block[start + len(_DATA)] == _COLON
            and block.find(b"\n", start) == len(block) - 1
        ):
            value_start = start + len(_DATA_FIELD)
            if block[value_start] == _SPACE:
                value_start += 1
            self.per_event = block.count(b"\n", 0, start) + 2
            self.interpreter.handle(block[value_start:-1])
            return
        values = []
        for line in block.split(b"\n"):
            if line.startswith(_DATA):
                if len(line) == len(_DATA):
                    values.append(b"")
                elif line[len(_DATA)] == _COLON:
                    with_space = line.startswith(_DATA_FIELD_WITH_SPACE)
                    values.append(
                        line[len(_DATA_FIELD_WITH_SPACE if with_space else _DATA_FIELD) :]
                    )
        if values:
            self.per_event = block.count(b"\n") + 1
            self.interpreter.handle(b"\n".join(values))

    def oversized(self, head: bytes, tail: bytes) -> None:
        if head.startswith(_DATA) or head.find(b"\ndata") >= 0:
            self.interpreter.oversized(head, tail)

    def end(self) -> None:
        self.pieces = []  # an event without its blank line is not dispatched


class _Tail(_Reader):
    """Tail mode's reading of chunks, the same for SSE and NDJSON."""

    __slots__ = ()
    tailing = True

    def feed(self, chunk: bytes) -> None:
        """Gather one body chunk; never raises."""
        if type(chunk) is not bytes:  # a bytearray the app may reuse, a memoryview
            chunk = bytes(chunk)
        self.batch.append(chunk)
        self.batch_room -= len(chunk)
        if self.batch_room < 0:
            self.flush()

    def flush(self) -> None:
        """Join the gathered chunks, count their line ends, add them to the window."""
        if not self.batch:
            return
        try:
            block = b"".join(self.batch)
            self.batch = []
            self.batch_room = BATCH_BYTES
            # Deleting one byte value runs at memchr speed; ``count`` is several times
            # slower (and a multi-byte ``count``, such as of data lines, slower still).
            self.lines += len(block) - len(block.replace(b"\n", b""))
            self.keep(block)
        except Exception as error:
            self.stop_tailing(error)


class _SseTail(_Tail, SseReader):
    """An ``SseReader`` in tail mode: the end of the stream is read by ``end``."""

    __slots__ = ()

    def end(self) -> None:
        """Read the events of the window's end; count what tail mode gathered."""
        self.flush()
        if self.error is not None:
            return
        per_event = self.switch_per_event

        def count(lines: int) -> int:  # rounded to the nearest whole event
            return self.at_switch + (2 * max(0, lines) + per_event) // (2 * per_event)

        self.interpreter.events = count(self.lines)  # kept if reading the end fails
        window = _lf(b"".join(self.blocks))
        self.blocks.clear()
        unfinished = False  # the stream ends inside an event: it is no event
        saved = self.saved
        if saved is not None:  # the window starts inside an oversized event
            saved = _lf(saved)
            at = window.find(_EVENT_END)
            if at < 0:  # it never ended: not dispatched
                unfinished = True
                window = b""
            else:
                self.oversized(saved, window[: at + 1][-self.tail_bytes :])
                window = window[at + len(_EVENT_END) :]
        elif self.evicted and not self.aligned:  # it starts inside an event: skip it
            at = window.find(_EVENT_END)
            window = window[at + len(_EVENT_END) :] if at >= 0 else b""
        self.after_cr = self.skipping = False
        self.read(_last_part(window, _EVENT_END))
        if self.pieces or self.skipping:
            unfinished = True
        self.pieces = []
        # An unfinished last event's line ends were counted: all of them, also those of
        # an oversized one whose middle was dropped, came after its start.
        self.interpreter.events = count(self.lines_at_start if unfinished else self.lines)


class NdjsonReader(_Reader):
    """Reads ``application/x-ndjson`` and JSON Lines bodies: one line per event."""

    __slots__ = ()

    def feed(self, chunk: bytes) -> None:
        """Read one body chunk; never raises. A chunk that is exactly one line is not copied.

        Once the first token is known, the reader switches to tail mode."""
        if self.error is not None:
            return
        try:
            if type(chunk) is not bytes:
                chunk = bytes(chunk)
            if not self.pieces and not self.skipping and chunk.find(_LF) == len(chunk) - 1:
                self.line(chunk[:-1])
            else:
                self.read(chunk)
            if self.may_tail and self.interpreter.first_token_at is not None and not self.skipping:
                self.tail(b"\n")
                self.__class__ = _NdjsonTail
        except Exception as error:
            self.failed(error)

    def read(self, data: bytes) -> None:
        start = 0
        if self.skipping:
            end = data.find(b"\n")
            if end < 0:
                self.keep_window(data)
                return
            self.skipped(data[:end])
            start = end + 1
        elif self.pieces:
            end = data.find(b"\n")
            if end < 0:
                self.hold(data)
                return
            self.pieces.append(data[:end])
            line = b"".join(self.pieces)
            self.pieces = []
            self.held = 0
            self.line(line)
            start = end + 1
        find = data.find
        end = find(b"\n", start)
        while end >= 0:
            if end > start:
                self.line(data[start:end])
            start = end + 1
            end = find(b"\n", start)
        if start < len(data):
            self.hold(data[start:] if start else data)

    def line(self, line: bytes) -> None:
        if len(line) > self.max_event_bytes:
            self.oversized(line[: self.head_bytes], line[-self.tail_bytes :])
            return
        if line.endswith((b"\r", b" ", b"\t")):
            line = line.rstrip()
        if line and not line.isspace():
            self.interpreter.handle(line)

    def end(self) -> None:
        if self.skipping:
            self.skipped(b"")
        elif self.pieces:
            line = b"".join(self.pieces)
            self.pieces = []
            self.held = 0
            self.line(line)


class _NdjsonTail(_Tail, NdjsonReader):
    """An ``NdjsonReader`` in tail mode: the end of the stream is read by ``end``."""

    __slots__ = ()

    def end(self) -> None:
        """Read the lines of the window's end; count what tail mode gathered."""
        self.flush()
        if self.error is not None:
            return
        window = b"".join(self.blocks)
        self.blocks.clear()
        last = window[window.rfind(b"\n") + 1 :]  # a final line without its line end
        lines = self.lines + (1 if last.strip() else 0)
        self.interpreter.events = self.at_switch + lines  # kept if reading the end fails
        saved = self.saved
        if saved is not None:  # the window starts inside an oversized line
            at = window.find(b"\n")
            if at < 0:
                self.oversized(saved, window[-self.tail_bytes :])
                window = b""
            else:
                self.oversized(saved, window[:at][-self.tail_bytes :])
                window = window[at + 1 :]
        elif self.evicted and not self.aligned:  # it starts inside a line: skip it
            at = window.find(b"\n")
            window = window[at + 1 :] if at >= 0 else b""
        self.skipping = False
        self.read(_last_part(window, b"\n"))
        NdjsonReader.end(self)
        self.interpreter.events = self.at_switch + lines


#: The reading class of each tail-mode class, taken back when tail mode fails.
_FULL: dict[type[_Reader], type[_Reader]] = {_SseTail: SseReader, _NdjsonTail: NdjsonReader}
