"""Tail mode: once the first token is known, the readers read only the end of a stream.

What it still reads exactly, what it misses on purpose, how it counts events, and the
memory it holds (see the "Choices made on purpose" of ``otel_stream.payloads.framing``).
"""

from __future__ import annotations

import tracemalloc
from dataclasses import replace
from typing import Any

import pytest

from otel_stream.payloads import PayloadReader, PayloadSummary, framing, make_reader
from tests import payload_corpus as corpus
from tests import payload_streams as streams

SSE = b"text/event-stream"
NDJSON = b"application/x-ndjson"


def reader_for(
    content_type: bytes, *, tail: bool = True, max_event_bytes: int = 64 * 1024
) -> PayloadReader:
    if tail:
        reader = make_reader(content_type, max_event_bytes, lambda: 1.0)
        assert reader is not None
        return reader
    if content_type == SSE:
        return framing.SseReader(max_event_bytes, lambda: 1.0, tail=False)
    return framing.NdjsonReader(max_event_bytes, lambda: 1.0, tail=False)


def read(
    chunks: list[bytes], content_type: bytes = SSE, *, tail: bool = True, limit: int = 64 * 1024
) -> PayloadSummary:
    reader = reader_for(content_type, tail=tail, max_event_bytes=limit)
    for chunk in chunks:
        reader.feed(chunk)
    assert reader.error is None
    return reader.finish()


def tailing(reader: PayloadReader) -> bool:
    return bool(reader.tailing)  # type: ignore[attr-defined]


def resplit(chunks: list[bytes], size: int) -> list[bytes]:
    body = b"".join(chunks)
    return [body[at : at + size] for at in range(0, len(body), size)]


def chat(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
    return streams.sse(streams.dumps(streams.chat_chunk(choices, usage)))


def words(count: int) -> list[str]:
    return [f" w{number}" for number in range(count)]


# The switch ---------------------------------------------------------------------------


def test_the_switch_comes_after_the_first_token_even_in_the_middle_of_an_event() -> None:
    """Chunks cut anywhere: the reader switches with an event half-read, and the summary
    (events included) is the one of reading every event."""
    chunks = streams.openai_chat(words(300))
    for size in (3, 100, 333, 1000):
        pieces = resplit(chunks, size)
        reader = reader_for(SSE)
        switched_at = None
        for number, piece in enumerate(pieces):
            reader.feed(piece)
            if switched_at is None and tailing(reader):
                switched_at = number
        assert switched_at is not None, size
        assert switched_at < len(pieces) // 4, size
        assert reader.finish() == read(pieces, tail=False), size


def test_no_switch_before_a_token_or_without_a_recognised_format() -> None:
    role_only = streams.openai_chat([])[:1] * 50  # role deltas: no token yet
    reader = reader_for(SSE)
    for chunk in role_only:
        reader.feed(chunk)
    assert not tailing(reader)
    unknown = [b"data: hello\n\n"] * 100
    reader = reader_for(SSE)
    for chunk in unknown:
        reader.feed(chunk)
    assert not tailing(reader)
    assert reader.finish().events == 100  # counted exactly, event by event


def test_a_stream_with_lone_cr_line_ends_is_read_in_full() -> None:
    chunks = streams.openai_chat(words(50), sep=b"\r")
    reader = reader_for(SSE)
    for chunk in chunks:
        reader.feed(chunk)
    assert not tailing(reader)
    assert reader.finish() == read(chunks, tail=False)


@pytest.mark.parametrize("name", list(corpus.SHAPES))
@pytest.mark.parametrize("size", [1, 5, 48, 131, 512, 4096])
def test_every_shape_long_and_cut_anywhere_reads_as_when_every_event_is_read(
    name: str, size: int
) -> None:
    """A window of a few KiB out of a long stream, batches of any size: the same summary,
    event count included, as the reader that decodes every event."""
    shape = corpus.SHAPES[name](600)
    pieces = resplit(list(shape.chunks), size)
    full = read(pieces, shape.content_type, tail=False)
    assert read(pieces, shape.content_type) == full
    assert full.events == shape.events
    cut = resplit(list(shape.chunks[: shape.end_chunk]), size)
    assert read(cut, shape.content_type) == read(cut, shape.content_type, tail=False)


# What tail mode misses, on purpose ----------------------------------------------------


def test_tail_mode_misses_the_finish_reason_of_a_choice_that_finished_long_before() -> None:
    first, second = {"content": "a"}, {"content": "b"}
    content = [streams.chat_choice(first), streams.chat_choice(second, index=1)]
    chunks = [chat(content), chat([streams.chat_choice({}, "length", index=1)])]
    chunks += [chat([streams.chat_choice({"content": word})]) for word in words(200)]
    chunks += [chat([streams.chat_choice({}, "stop")]), b"data: [DONE]\n\n"]
    assert read(chunks, tail=False).finish_reasons == ("stop", "length")
    assert read(chunks).finish_reasons == ("stop",)  # choice 1 ended before the window


def test_tail_mode_misses_an_error_reported_mid_stream_when_the_stream_went_on() -> None:
    chunks = streams.openai_chat(words(200))
    error = streams.sse(streams.dumps({"error": {"message": "a hiccup"}}))
    chunks.insert(50, error)
    assert read(chunks, tail=False).finish_reasons == ("stop", "error")
    assert read(chunks).finish_reasons == ("stop",)


def test_an_error_that_ends_the_stream_is_read() -> None:
    chunks = streams.openai_chat(words(200))[:-3]
    chunks.append(streams.sse(streams.dumps({"error": {"message": "overloaded"}})))
    summary = read(chunks)
    assert (summary.finish_reasons, summary.truncated) == (("error",), True)


def test_tail_mode_misses_an_end_event_that_starts_long_before_the_last_event() -> None:
    """A finish chunk larger than the window (here its logprobs), then the usage chunk
    and ``[DONE]``: its finish reason is missed, the usage and the end are read."""
    finish = streams.chat_choice({}, "length")
    finish["logprobs"] = {"content": [{"token": "x", "logprob": -0.5}] * 400}
    chunks = streams.openai_chat(words(100))
    chunks[-3] = chat([finish])
    assert len(chunks[-3]) > 4 * framing.WINDOW_BYTES
    full, tailed = read(chunks, tail=False), read(chunks)
    assert (full.finish_reasons, tailed.finish_reasons) == (("length",), ())
    assert (tailed.input_tokens, tailed.output_tokens, tailed.truncated) == (12, 3, False)


@pytest.mark.parametrize("line_end", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("size", [700, 64 * 1024])
def test_a_last_event_larger_than_the_window_is_read_as_an_oversized_event(
    size: int, line_end: bytes
) -> None:
    """``response.completed`` repeats the answer: past ``max_event_bytes`` it is read from
    its saved first bytes and the window's end, as in full reading."""
    chunks = streams.openai_responses(["word " * 20_000], usage=(50, 20_000))
    chunks = [chunk.replace(b"\n", line_end) for chunk in chunks]
    chunks = chunks[:3] + resplit(chunks[3:], size)
    for limit in (4096, 64 * 1024):
        summary = read(chunks, limit=limit)
        assert (summary.truncated, summary.finish_reasons) == (False, ("completed",)), limit
        assert (summary.input_tokens, summary.output_tokens) == (50, 20_000), limit


def test_an_oversized_last_event_that_never_ends_is_not_dispatched() -> None:
    chunks = streams.openai_responses(["word " * 20_000])
    cut = chunks[:3] + resplit(chunks[3:], 900)[:-1]
    summary, full = read(cut, limit=4096), read(cut, tail=False, limit=4096)
    assert summary.truncated
    assert full.truncated
    assert summary.finish_reasons == full.finish_reasons == ()


# How tail mode counts events ------------------------------------------------------------


def _with(chunks: list[bytes], at: int, extra: list[bytes]) -> list[bytes]:
    return chunks[:at] + extra + chunks[at:]


def test_a_comment_after_the_switch_counts_as_an_event_in_a_stream_of_data_lines() -> None:
    chunks = _with(streams.openai_chat(words(100)), 50, [b": ping\n\n"] * 5)
    assert read(chunks).events == read(chunks, tail=False).events + 5


def test_a_comment_counts_two_thirds_of_an_event_in_a_stream_with_event_lines() -> None:
    chunks = _with(streams.anthropic(words(100)), 50, [b": ping\n\n"] * 6)
    assert read(chunks).events == read(chunks, tail=False).events + 4  # 6 x 2/3


def test_a_multi_line_data_event_counts_for_more_than_one() -> None:
    data = streams.dumps(streams.chat_chunk([streams.chat_choice({"content": "x"})]))
    two_lines = b"data: " + data.replace(b'"choices":', b'"choices":\ndata: ') + b"\n\n"
    chunks = _with(streams.openai_chat(words(100)), 50, [two_lines] * 4)
    full = read(chunks, tail=False)
    assert full.events == 4 + len(streams.openai_chat(words(100)))
    assert read(chunks).events == full.events + 2  # 4 x 1/2


def test_blank_ndjson_lines_after_the_switch_count_as_lines() -> None:
    chunks = _with(streams.ollama_chat(words(100)), 50, [b"\n", b"  \n", b"\n"])
    assert read(chunks, NDJSON).events == read(chunks, NDJSON, tail=False).events + 3


@pytest.mark.parametrize("content_type", [SSE, NDJSON])
def test_an_unfinished_last_event_is_not_counted_in_sse_and_is_read_in_ndjson(
    content_type: bytes,
) -> None:
    if content_type == SSE:
        chunks = [*streams.openai_chat(words(100))[:-1], b'data: {"choices":[{"delta"']
    else:
        chunks = streams.ollama_chat(words(100))
        chunks[-1] = chunks[-1].rstrip(b"\n")
    for size in (1, 50, 1000):
        pieces = resplit(chunks, size)
        assert read(pieces, content_type) == read(pieces, content_type, tail=False), size


# Memory ---------------------------------------------------------------------------------


def test_tail_mode_holds_a_bounded_window_of_a_long_stream() -> None:
    """20,000 events (about 4 MiB): what the reader holds stays a few batches."""
    chunks = streams.openai_chat(words(20_000))
    reader = reader_for(SSE)
    for chunk in chunks[:5]:
        reader.feed(chunk)
    assert tailing(reader)
    middle = chunks[5:-3]
    tracemalloc.start()
    try:
        for chunk in middle:
            reader.feed(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(map(len, chunks)) > 4 * 1024 * 1024
    # A batch, its joined copy, the copy that counts its line ends, the window.
    assert peak < 3 * framing.BATCH_BYTES + 2 * framing.WINDOW_BYTES + 4096, peak
    window = reader.total  # type: ignore[attr-defined]
    assert window < framing.WINDOW_BYTES + 2 * framing.BATCH_BYTES, window
    for chunk in chunks[-3:]:
        reader.feed(chunk)
    summary = reader.finish()
    assert (summary.events, summary.finish_reasons, summary.truncated) == (20_004, ("stop",), False)


def test_tail_mode_memory_with_a_huge_last_event_is_bounded_by_the_window_and_the_limit() -> None:
    limit = 64 * 1024
    reader = reader_for(SSE, max_event_bytes=limit)
    for chunk in streams.openai_chat(words(3))[:3]:
        reader.feed(chunk)
    assert tailing(reader)
    tracemalloc.start()
    try:
        reader.feed(b'data: {"choices":[{"delta":{},"logprobs":"')
        for _ in range(512):  # 32 MiB
            reader.feed(b"x" * (64 * 1024))
        _, peak = tracemalloc.get_traced_memory()
        reader.feed(b'","finish_reason":"length"}]}\n\ndata: [DONE]\n\n')
    finally:
        tracemalloc.stop()
    # The window (its bytes before the event, the event up to the limit) and a batch of
    # one chunk, joined and counted.
    assert peak < framing.WINDOW_BYTES + limit + 5 * 64 * 1024, peak
    summary = reader.finish()
    assert (summary.finish_reasons, summary.truncated) == (("length",), False)


def test_a_failure_in_tail_mode_stops_the_reader_and_frees_the_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader = reader_for(SSE)
    for chunk in streams.openai_chat(words(300))[:-3]:
        reader.feed(chunk)
    assert tailing(reader)

    def broken(self: object, *args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(framing._Reader, "keep", broken)
    for _ in range(framing.BATCH_BYTES // 10 + 1):
        reader.feed(b"data: {}\n\n")
    assert isinstance(reader.error, RuntimeError)
    assert not tailing(reader)
    assert not reader.blocks  # type: ignore[attr-defined]
    assert not reader.batch  # type: ignore[attr-defined]
    reader.feed(b"data: [DONE]\n\n")  # read no more, never raise
    summary = reader.finish()
    assert not summary.truncated  # it cannot tell whether the end came
    assert replace(summary, events=0).first_token_at == 1.0


# Found in review ------------------------------------------------------------------------


def chat_event(content: str, *, finish: str | None = None, prefix: bytes = b"") -> bytes:
    delta = {"content": content} if finish is None else {}
    return prefix + chat([{"index": 0, "delta": delta, "finish_reason": finish}])


def test_events_are_divided_by_the_lines_of_the_events_before_the_switch() -> None:
    """The last event (a bare ``[DONE]``) has other lines than the ``id:``-led events
    before it: the count still divides by the lines of those."""
    role = chat([{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}])
    body = [b"id: 0\n" + role]
    body += [chat_event(f" w{n}", prefix=b"id: %d\n" % n) for n in range(1000)]
    body += [chat_event("", finish="stop", prefix=b"id: end\n"), b"data: [DONE]\n\n"]
    full, tailed = read(body, tail=False), read(body)
    assert full.events == 1003
    assert tailed == full


def test_an_unfinished_oversized_last_event_is_no_event() -> None:
    """A stream cut inside a multi-line event larger than the limit: none of its line
    ends count, also those of its dropped middle."""
    body = streams.openai_chat(words(50))[:-1]  # no [DONE]
    body += [b"data: x\n" * 20_000]  # 160 KB of one event, never ended
    full = read(body, tail=False)
    tailed = read(body)
    assert tailed.events == full.events == len(body) - 1  # the cut one is no event
    assert tailed == full


def test_a_reused_bytearray_body_is_read_as_it_was_when_fed() -> None:
    """An app may send one bytearray, refilled for every chunk (uvicorn accepts it): the
    reader keeps what each chunk held when it was fed, not the buffer's last contents."""
    chunks = streams.openai_chat(words(50))
    reader = reader_for(SSE)
    buffer = bytearray()
    for chunk in chunks:
        buffer[:] = chunk
        reader.feed(buffer)
    buffer[:] = b"garbage\n\n"
    assert reader.finish() == read(chunks, tail=False)


def test_a_failure_while_reading_the_end_keeps_what_was_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader = reader_for(SSE)
    chunks = streams.openai_chat(words(50))
    full = read(chunks, tail=False)
    for chunk in chunks:
        reader.feed(chunk)
    assert tailing(reader)

    def broken(self: object, *args: object) -> None:
        raise RuntimeError("bug in reading the window")

    monkeypatch.setattr(framing.SseReader, "block", broken)
    summary = reader.finish()
    assert isinstance(reader.error, RuntimeError)
    assert summary.format == full.format
    assert summary.first_token_at == full.first_token_at
    assert summary.model == full.model
    assert summary.events == full.events  # counted before the end was read
    assert not summary.truncated  # it cannot tell whether the end came


def test_a_finish_event_before_a_large_last_event_is_read() -> None:
    """The window keeps the events that start up to 2 KiB before the last one, however
    large the last one is (within the limit)."""
    body = streams.openai_chat(words(300))[:-2]  # up to the finish chunk, not usage/[DONE]
    usage = {"prompt_tokens": 5, "completion_tokens": 300, "total_tokens": 305}
    big_last = streams.sse(streams.dumps({**streams.chat_chunk([], usage), "pad": "p" * 5000}))
    body.append(big_last)
    full, tailed = read(body, tail=False), read(body)
    assert full.finish_reasons
    assert full.output_tokens == 300
    assert tailed == full
