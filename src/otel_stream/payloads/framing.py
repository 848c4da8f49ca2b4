"""Cut a body, chunk by chunk, into SSE events or NDJSON lines, holding a bounded tail.

Choices made on purpose (read before "fixing"):

* **Nothing is copied in the common case.** A chunk that holds whole events is only
  scanned (``bytes.find``); the bytes of an unfinished event are kept as a list of
  pieces, joined once when the event completes, never concatenated per chunk.
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
"""

from __future__ import annotations

from collections.abc import Callable

from otel_stream import guard as telemetry
from otel_stream.payloads.formats import Interpreter, is_plain_chat_delta
from otel_stream.payloads.summary import PayloadSummary

_HEAD_BYTES = 4096
_TAIL_BYTES = 16384
_BOM = b"\xef\xbb\xbf"


class _Reader:
    """What SSE and NDJSON readers share: the held tail and the oversized-event state.

    Args:
        max_event_bytes: The longest event (or line) that is decoded; longer ones are
            skipped with bounded memory.
        clock: The clock whose value marks the first token.
    """

    __slots__ = (
        "failed",
        "head",
        "head_bytes",
        "held",
        "interpreter",
        "max_event_bytes",
        "pieces",
        "skipping",
        "tail_bytes",
        "window",
    )

    def __init__(self, max_event_bytes: int, clock: Callable[[], float]) -> None:
        self.interpreter = Interpreter(clock)
        self.max_event_bytes = max(1, max_event_bytes)
        self.head_bytes = min(_HEAD_BYTES, self.max_event_bytes)
        self.tail_bytes = min(_TAIL_BYTES, self.max_event_bytes)
        self.pieces: list[bytes] = []  # the unfinished event
        self.held = 0  # bytes in ``pieces``
        self.skipping = False  # inside an oversized event
        self.head = b""  # first bytes of the oversized event
        self.window = b""  # last bytes of the oversized event seen so far
        self.failed = False

    @property
    def first_token_at(self) -> float | None:
        """Clock value of the first event carrying generated content, once read."""
        return self.interpreter.first_token_at

    def feed(self, chunk: bytes) -> None:
        """Read one body chunk; never raises."""
        if self.failed:
            return
        try:
            self.read(chunk if type(chunk) is bytes else bytes(chunk))
        except Exception as error:
            self.failed = True
            telemetry.log_failure("payload reader", error)

    def finish(self) -> PayloadSummary:
        """The summary of everything fed so far."""
        try:
            if not self.failed:
                self.end()
            summary = self.interpreter.summary()
        except Exception as error:
            telemetry.log_failure("payload reader", error)
            return PayloadSummary()
        if self.failed and summary.truncated:
            # The reader stopped early: it cannot tell whether the end marker came.
            return PayloadSummary(
                events=summary.events,
                first_token_at=summary.first_token_at,
                finish_reasons=summary.finish_reasons,
                input_tokens=summary.input_tokens,
                output_tokens=summary.output_tokens,
                format=summary.format,
            )
        return summary

    def read(self, data: bytes) -> None:
        raise NotImplementedError

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


class SseReader(_Reader):
    """Reads ``text/event-stream`` bodies: one ``data`` per event to the interpreter."""

    __slots__ = ("after_cr", "bom", "clean", "started")

    def __init__(self, max_event_bytes: int, clock: Callable[[], float]) -> None:
        super().__init__(max_event_bytes, clock)
        self.started = False  # the first bytes were checked for a byte order mark
        self.bom = b""
        self.after_cr = False  # the last chunk ended with \r: a leading \n belongs to it
        self.clean = False  # nothing pending from earlier chunks: the fast path may run

    def feed(self, chunk: bytes) -> None:
        """Read one body chunk; never raises.

        The fast path takes a chunk that is exactly one event whose only data line is
        its last line (``data: ...\\n\\n``, optionally after ``event:``/``id:`` lines),
        the shape nearly every LLM server sends: a few ``bytes`` scans, no copy but the
        data itself. Everything else goes through ``read``.
        """
        try:
            if self.clean and type(chunk) is bytes:
                size = len(chunk)
                interpreter = self.interpreter
                if (
                    interpreter.chat_after_token
                    and chunk.find(10) == size - 2  # one line, "data: {...}\n\n"
                    and chunk.endswith(b"\n\n")
                    and chunk.startswith(b"data:")
                    and size - 1 <= self.max_event_bytes
                    and is_plain_chat_delta(chunk)
                ):
                    interpreter.events += 1  # the bulk of a chat stream: counted, not read
                    return
                if 13 in chunk:  # "\r": sse-starlette ends lines with "\r\n"
                    if (
                        chunk.find(13) == size - 4  # one line: "data: ...\r\n\r\n"
                        and chunk.find(10) == size - 3
                        and chunk.endswith(b"\r\n\r\n")
                        and chunk.startswith(b"data:")
                        and size - 3 <= self.max_event_bytes
                    ):
                        self.interpreter.handle(chunk[6:-4] if chunk[5] == 32 else chunk[5:-4])
                        return
                    chunk = chunk.replace(b"\r\n", b"\n")
                    size = len(chunk) if 13 not in chunk else 0  # a lone "\r": read()
                if chunk.endswith(b"\n\n") and size:
                    start = chunk.rfind(10, 0, size - 2) + 1  # the last line
                    if (
                        chunk.startswith(b"data:", start)
                        and (start == 0 or chunk.find(b"data", 0, start) < 0)
                        and size - 1 <= self.max_event_bytes
                    ):
                        if chunk[start + 5] == 32:
                            self.interpreter.handle(chunk[start + 6 : -2])
                        else:
                            self.interpreter.handle(chunk[start + 5 : -2])
                        return
            elif self.failed:
                return
            self.read(chunk if type(chunk) is bytes else bytes(chunk))
            self.clean = self.started and not (self.after_cr or self.skipping or self.pieces)
        except Exception as error:
            self.failed = True
            self.clean = False
            telemetry.log_failure("payload reader", error)

    def read(self, data: bytes) -> None:
        if not self.started:
            data = self.bom + data
            if len(data) < len(_BOM) and _BOM.startswith(data):
                self.bom = data  # maybe the start of a byte order mark: wait for more
                return
            self.started = True
            self.bom = b""
            if data.startswith(_BOM):
                data = data[3:]
        if self.after_cr:
            self.after_cr = False
            if data.startswith(b"\n"):
                data = data[1:]
        if b"\r" in data:
            self.after_cr = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n")
            if b"\r" in data:
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
        find = data.find
        end = find(b"\n\n", start)
        while end >= 0:
            if end > start:
                self.block(data[start : end + 1])
            start = end + 2
            end = find(b"\n\n", start)
        if start < len(data):
            self.hold(data[start:] if start else data)

    def complete(self, data: bytes) -> int:
        """Finish the held event with ``data``; where the rest of ``data`` starts, or -1."""
        if data.startswith(b"\n") and self.pieces[-1].endswith(b"\n"):
            start = 1
        else:
            end = data.find(b"\n\n")
            if end < 0:
                self.hold(data)
                return -1
            self.pieces.append(data[: end + 1])
            start = end + 2
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
        end = data.find(b"\n\n")
        if end < 0:
            self.keep_window(data)
            return -1
        self.skipped(data[: end + 1])
        return end + 2

    def block(self, block: bytes) -> None:
        """One event: its lines, each ending with ``\\n``."""
        if len(block) > self.max_event_bytes:
            self.oversized(block[: self.head_bytes], block[-self.tail_bytes :])
            return
        # The common case: one data line, the last line, and no "data" in the lines before.
        start = block.find(b"data")
        if (
            start >= 0
            and (start == 0 or block[start - 1] == 10)  # at a line start
            and block[start + 4] == 58  # "data:"
            and block.find(b"\n", start) == len(block) - 1
        ):
            value_start = start + 6 if block[start + 5] == 32 else start + 5
            self.interpreter.handle(block[value_start:-1])
            return
        values = []
        for line in block.split(b"\n"):
            if line.startswith(b"data"):
                if len(line) == 4:
                    values.append(b"")
                elif line[4] == 58:  # ":"
                    values.append(line[6:] if line[5:6] == b" " else line[5:])
        if values:
            self.interpreter.handle(b"\n".join(values))

    def oversized(self, head: bytes, tail: bytes) -> None:
        if head.startswith(b"data") or b"\ndata" in head:
            self.interpreter.oversized(head, tail)

    def end(self) -> None:
        self.pieces = []  # an event without its blank line is not dispatched


class NdjsonReader(_Reader):
    """Reads ``application/x-ndjson`` and JSON Lines bodies: one line per event."""

    __slots__ = ()

    def feed(self, chunk: bytes) -> None:
        """Read one body chunk; never raises. A chunk that is exactly one line is not copied."""
        if self.failed:
            return
        try:
            if (
                not self.pieces
                and not self.skipping
                and type(chunk) is bytes
                and chunk.find(10) == len(chunk) - 1
            ):
                self.line(chunk[:-1])
            else:
                self.read(chunk if type(chunk) is bytes else bytes(chunk))
        except Exception as error:
            self.failed = True
            telemetry.log_failure("payload reader", error)

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
