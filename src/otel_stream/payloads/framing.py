"""Cut a body, chunk by chunk, into SSE events or NDJSON lines, holding a bounded tail.

Choices made on purpose (read before "fixing"):

* **Nothing is copied in the common case.** A chunk that holds whole events is only
  scanned (``bytes.find``); the bytes of an unfinished event are kept as a list of
  pieces, joined once when the event completes, never concatenated per chunk.
* **Plain events are recognised by their shape.** Once the first token is known, most
  events of a stream cannot change the summary, and they are all alike: the same bytes
  before the text, the text, the same bytes after it (at most a few values change:
  OpenAI's ``obfuscation`` padding, llama.cpp's ``timings``, a ``created`` that ticks).
  When ``formats`` finds, by byte scans, that an event cannot change the summary,
  ``SseReader`` learns its shape (``_PlainShape``): the bytes up to its text (the
  ``data:`` line, an ``event:`` line before it, the JSON up to the text value) and, for
  chat chunks, the bytes from the text's closing quote to the end. A later chunk that
  starts with that head, ends with that tail, and whose text between them is the inside
  of a JSON string on one line (no unescaped quote, no raw line break) has the JSON
  structure of the event the shape was learned from, so it cannot change the summary
  either: it is counted without being cut or read, with two comparisons and one
  regular-expression match (inlined in ``feed``). When tails differ, only what they
  share before and after the varying part is kept; the varying part must then be the
  inside of a string too (OpenAI's padding), or else hold no ``"finish_reason"``,
  ``"usage"`` or ``"error"`` key at all, nor a line break (llama.cpp's ``timings``). For
  Anthropic and Responses text deltas the head runs to the end of the event's ``type``,
  which alone says the event is a text delta; the rest only has to be one line. A chunk
  that does not match goes the ordinary way, which learns its shape if it is plain. A
  chunk of several events is cut as usual and each event matched against a shape
  learned from such events (``block_shape``). This is exact, not an approximation: a
  matching chunk differs from a plain event only inside a string.
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

import re
from collections.abc import Callable

from otel_stream.payloads.formats import (
    CHAT_KEYS_THAT_MATTER,
    JSON_TEXT,
    OLLAMA,
    PLAIN_TEXT,
    Interpreter,
    plain_head,
)
from otel_stream.payloads.summary import PayloadSummary

_HEAD_BYTES = 4096
_TAIL_BYTES = 16384
_BOM = b"\xef\xbb\xbf"

_LF = 10
_CR = 13
_SPACE = 32
_COLON = 58
_QUOTE = 34
_BACKSLASH = 92
_DATA = b"data"
_DATA_FIELD = b"data:"
_DATA_FIELD_WITH_SPACE = b"data: "
_EVENT_END = b"\n\n"
_CRLF = b"\r\n"
_EVENT_END_CRLF = b"\r\n\r\n"
#: From the end of a one-line ``data: ...\r\n\r\n`` event: its first ``\r`` and ``\n``.
_CRLF_FIRST_CR_BACK = len(_EVENT_END_CRLF)
_CRLF_FIRST_LF_BACK = len(_EVENT_END_CRLF) - 1
_OLLAMA_NOT_DONE_LINES = (b'"done":false}\n', b'"done": false}\n')


def _shared_start(first: bytes, second: bytes) -> int:
    """How many leading bytes ``first`` and ``second`` have in common."""
    low, high = 0, min(len(first), len(second))
    while low < high:
        middle = (low + high + 1) // 2
        if first[:middle] == second[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


_FINISH_REASON_KEY, _USAGE_KEY, _ERROR_KEY = CHAT_KEYS_THAT_MATTER
_plain_text = PLAIN_TEXT.fullmatch
_plain_text_match = PLAIN_TEXT.match
_json_text_match = JSON_TEXT.match
_json_text = JSON_TEXT.fullmatch


def _text_end(chunk: bytes, start: int) -> int:
    """Where the JSON string whose inside starts at ``start`` ends (its closing quote,
    if it has one on this line)."""
    end = _plain_text_match(chunk, start).end()  # type: ignore[union-attr]
    if end < len(chunk) and chunk[end] == _BACKSLASH:
        end = _json_text_match(chunk, start).end()  # type: ignore[union-attr]
    return end


class _PlainShape:
    """The bytes every plain event of one stream shares, learned from one of them.

    Args:
        head: The chunk's bytes up to where it starts to vary: its text value (chat), or
            the end of its ``type`` (typed formats).
        tail: For chat events, the bytes from the text's closing quote to the end of the
            chunk (its line end included); None for typed formats.
        line_end: The event's blank-line ending (``\\n\\n`` or ``\\r\\n\\r\\n``).
    """

    __slots__ = (
        "after",
        "before",
        "cr_back",
        "exact",
        "head",
        "lf_back",
        "line_end",
        "rest_back",
        "tail",
        "text_and_hole",
        "text_at",
    )

    def __init__(self, head: bytes, tail: bytes | None, line_end: bytes) -> None:
        self.head = head
        self.text_at = len(head)
        self.tail = tail  # while it is exact: every event so far ended with these bytes
        #: ``(head, tail, text_at, len(tail))`` while the tail is exact, for ``feed``.
        self.exact = None if tail is None else (head, tail, self.text_at, len(tail))
        self.line_end = line_end
        # Where, back from the end of a chunk, its first line feed and carriage return
        # (-1: none) must be.
        self.lf_back = len(line_end) - line_end.find(b"\n")
        self.cr_back = len(line_end) - line_end.find(b"\r") if b"\r" in line_end else -1
        # Once two events' tails differed: what they share before and after the part
        # that varies (the hole), whether the hole is inside a JSON string, and how far
        # back from the hole checks for a finish reason, usage or error must start.
        self.before = b""
        self.after = b""
        #: For a hole inside a string: the whole test after the head, as one ``fullmatch``.
        self.text_and_hole: Callable[[bytes, int], re.Match[bytes] | None] | None = None
        self.rest_back = 0

    def matches(self, chunk: bytes) -> bool:
        """Whether ``chunk`` is one event of this shape (it cannot change the summary).

        ``SseReader.feed`` runs the exact-tail case inlined. One frame for every case:
        this runs for nearly every event of a stream."""
        if not chunk.startswith(self.head):
            return False
        size = len(chunk)
        text_at = self.text_at
        tail = self.tail
        if tail is not None:  # only the text may differ from the learned event
            text_end = size - len(tail)
            return (
                text_end >= text_at
                and chunk.endswith(tail)
                and (
                    _plain_text(chunk, text_at, text_end) is not None
                    or _json_text(chunk, text_at, text_end) is not None
                )
            )
        before = self.before
        text_and_hole = self.text_and_hole
        if text_and_hole is not None:  # text, shared bytes, a varying string, shared bytes
            return text_and_hole(chunk, text_at) is not None
        if before:  # a chat tail with a varying part (a hole) that is not a string
            # The text ends where ``before`` (it starts with the closing quote) must start.
            close = _plain_text_match(chunk, text_at).end()  # type: ignore[union-attr]
            if close < size and chunk[close] == _BACKSLASH:  # an escape: the slower reading
                close = _json_text_match(chunk, text_at).end()  # type: ignore[union-attr]
            hole = close + len(before)
            hole_end = size - len(self.after)
            if hole_end < hole or not chunk.startswith(before, close):
                return False
            if not chunk.endswith(self.after):
                return False
            # Not a string (llama.cpp's timings): no key that may matter, null or not,
            # may be in it; one that is sends the chunk the ordinary way.
            start = hole - self.rest_back
            if (
                chunk.rfind(_FINISH_REASON_KEY, start) >= 0
                or chunk.rfind(_USAGE_KEY, start) >= 0
                or chunk.rfind(_ERROR_KEY, start) >= 0
            ):
                return False
        else:  # typed: the type decides; the rest must be this one line
            start = text_at
        # One line from ``start`` to the line end.
        if chunk.find(_LF, start) != size - self.lf_back:
            return False
        cr = chunk.find(_CR, start)
        cr_back = self.cr_back
        return (cr < 0 if cr_back < 0 else cr == size - cr_back) and chunk.endswith(self.line_end)

    def narrow(self, tail: bytes) -> None:
        """Keep of the tail only what it shares with ``tail``, another event's."""
        old = self.tail if self.tail is not None else self.before + b"\x00" + self.after
        if tail == old:
            return
        before = old[: _shared_start(old, tail)]
        room = min(len(old), len(tail)) - len(before)
        shared_end = min(_shared_start(old[::-1], tail[::-1]), room)
        after = old[len(old) - shared_end :]
        if not before or not after.endswith(self.line_end):
            self.head = b"\x00"  # nothing to go by: match no chunk until relearned
            self.exact = None
            return
        self.tail = self.exact = None
        self.before = before
        self.after = after
        # A string that varies (OpenAI's obfuscation padding) is checked as a string;
        # anything else is scanned. Whatever looks like a finish reason, usage or error
        # starts with a quoted key: scans start at the last-but-one quote before the
        # hole, so one that straddles its start is still seen.
        self.text_and_hole = None
        if before.endswith(b'"') and after.startswith(b'"'):  # the hole is a string's inside
            # One regular expression for all of it: a third of the calls of the pieces.
            text = JSON_TEXT.pattern
            pattern = text + re.escape(before) + text + re.escape(after)
            self.text_and_hole = re.compile(pattern).fullmatch
        last = before.rfind(b'"')
        previous = before.rfind(b'"', 0, last) if last > 0 else -1
        self.rest_back = len(before) - previous if previous >= 0 else len(before)


class _Reader:
    """What SSE and NDJSON readers share: the held tail and the oversized-event state.

    Args:
        max_event_bytes: The longest event (or line) that is decoded; longer ones are
            skipped with bounded memory.
        clock: The clock whose value marks the first token.
    """

    __slots__ = (
        "error",
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
        #: The exception that stopped this reader, if one did.
        self.error: Exception | None = None

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
                self.end()
            summary = self.interpreter.summary()
        except Exception as error:
            self.failed(error)
            return PayloadSummary()
        if self.error is not None and summary.truncated:
            # The reader stopped early: it cannot tell whether the end marker came.
            return PayloadSummary(
                events=summary.events,
                first_token_at=summary.first_token_at,
                finish_reasons=summary.finish_reasons,
                input_tokens=summary.input_tokens,
                output_tokens=summary.output_tokens,
                format=summary.format,
                model=summary.model,
                operation=summary.operation,
            )
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


class SseReader(_Reader):
    """Reads ``text/event-stream`` bodies: one ``data`` per event to the interpreter."""

    __slots__ = ("after_cr", "block_shape", "bom", "clean", "fast", "shape", "started")

    def __init__(self, max_event_bytes: int, clock: Callable[[], float]) -> None:
        super().__init__(max_event_bytes, clock)
        self.started = False  # the first bytes were checked for a byte order mark
        self.bom = b""
        self.after_cr = False  # the last chunk ended with \r: a leading \n belongs to it
        self.clean = False  # nothing pending from earlier chunks: one-event paths may run
        self.shape: _PlainShape | None = None  # the plain events' shape, once learned
        self.fast: _PlainShape | None = None  # ``shape`` while nothing is pending
        #: The plain events' shape as ``read`` cuts them (``data: ...\n``), for chunks of
        #: several events.
        self.block_shape: _PlainShape | None = None

    def feed(self, chunk: bytes) -> None:
        """Read one body chunk; never raises.

        A chunk that is one plain event of the learned shape is only counted. Otherwise
        a chunk that is exactly one event whose only data line is its last line
        (``data: ...\\n\\n``, optionally after ``event:``/``id:`` lines), the shape
        nearly every LLM server sends, is read without being cut; anything else goes
        through ``read``.
        """
        fast = self.fast
        if fast is not None and type(chunk) is bytes:
            exact = fast.exact
            if exact is None:
                if fast.matches(chunk):
                    self.interpreter.events += 1
                    return
            else:  # the common case, inlined: only the text differs from the learned event
                head, tail, text_at, tail_size = exact
                text_end = len(chunk) - tail_size
                if (
                    chunk.startswith(head)
                    and text_end >= text_at
                    and chunk.endswith(tail)
                    and (
                        _plain_text(chunk, text_at, text_end) is not None
                        or _json_text(chunk, text_at, text_end) is not None
                    )
                ):
                    self.interpreter.events += 1
                    return
        if self.error is not None:
            return
        try:
            if not (self.clean and type(chunk) is bytes and self.one_event(chunk)):
                self.read(chunk if type(chunk) is bytes else bytes(chunk))
                self.clean = self.started and not (self.after_cr or self.skipping or self.pieces)
            self.fast = self.shape if self.clean else None
        except Exception as error:
            self.failed(error)
            self.clean = False
            self.shape = self.fast = self.block_shape = None

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
            self.dispatch(chunk, start, size - len(_EVENT_END_CRLF))
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
        self.dispatch(chunk, start, size - len(_EVENT_END))
        return True

    def dispatch(self, chunk: bytes, start: int, end: int) -> None:
        """Hand the data ``chunk[start:end]`` of a one-event chunk to the interpreter, and
        learn the shape of the chunk if the interpreter found it plain."""
        interpreter = self.interpreter
        interpreter.plain = False
        data = chunk[start:end]
        interpreter.handle(data)
        if interpreter.plain:
            interpreter.plain = False
            self.shape = self.learned(self.shape, chunk, start, data, chunk[end:])

    def learned(
        self, shape: _PlainShape | None, chunk: bytes, start: int, data: bytes, line_end: bytes
    ) -> _PlainShape | None:
        """``shape`` updated with ``chunk``, a plain event whose data begins at ``start``."""
        text_at, is_text = plain_head(data)
        if text_at < 0:
            return shape
        head = chunk[: start + text_at]
        if not is_text:
            return _PlainShape(head, None, line_end)
        close = _text_end(chunk, len(head))
        if close >= len(chunk) or chunk[close] != _QUOTE:
            return shape  # the text holds a raw line break: not a model to learn
        tail = chunk[close:]
        if shape is not None and shape.head == head and shape.line_end == line_end:
            shape.narrow(tail)
            return shape
        return _PlainShape(head, tail, line_end)

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
        if data.find(_CR) >= 0:
            self.after_cr = data.endswith(b"\r")
            data = data.replace(_CRLF, b"\n")
            if data.find(_CR) >= 0:
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
                block = data[start : end + 1]
                shape = self.block_shape  # several events to a chunk: their own shape
                if shape is not None and shape.matches(block):
                    self.interpreter.events += 1
                else:
                    self.block(block)
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
            interpreter = self.interpreter
            interpreter.plain = False
            data = block[value_start:-1]
            interpreter.handle(data)
            if interpreter.plain:
                interpreter.plain = False
                self.block_shape = self.learned(self.block_shape, block, value_start, data, b"\n")
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
            self.interpreter.handle(b"\n".join(values))

    def oversized(self, head: bytes, tail: bytes) -> None:
        if head.startswith(_DATA) or head.find(b"\ndata") >= 0:
            self.interpreter.oversized(head, tail)

    def end(self) -> None:
        self.pieces = []  # an event without its blank line is not dispatched


class NdjsonReader(_Reader):
    """Reads ``application/x-ndjson`` and JSON Lines bodies: one line per event."""

    __slots__ = ("fast",)

    def __init__(self, max_event_bytes: int, clock: Callable[[], float]) -> None:
        super().__init__(max_event_bytes, clock)
        #: An Ollama stream whose first token is known, with nothing pending: a chunk that
        #: is one line ending ``"done":false}`` is only counted.
        self.fast = False

    def feed(self, chunk: bytes) -> None:
        """Read one body chunk; never raises. A chunk that is exactly one line is not copied."""
        if (
            self.fast
            and type(chunk) is bytes
            and chunk.endswith(_OLLAMA_NOT_DONE_LINES)
            and chunk.find(_LF) == len(chunk) - 1
        ):
            self.interpreter.events += 1
            return
        if self.error is not None:
            return
        try:
            if (
                not self.pieces
                and not self.skipping
                and type(chunk) is bytes
                and chunk.find(_LF) == len(chunk) - 1
            ):
                self.line(chunk[:-1])
            else:
                self.read(chunk if type(chunk) is bytes else bytes(chunk))
            interpreter = self.interpreter
            self.fast = (
                interpreter.format == OLLAMA
                and interpreter.first_token_at is not None
                and not self.pieces
                and not self.skipping
            )
        except Exception as error:
            self.failed(error)
            self.fast = False

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
