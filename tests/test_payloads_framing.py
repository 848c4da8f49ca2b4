"""Cutting bodies into events: any split of the bytes reads the same, memory stays bounded."""

from __future__ import annotations

import itertools
import tracemalloc
from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otel_stream.payloads import PayloadReader, PayloadSummary, framing, make_reader
from tests import payload_streams as streams

SSE = b"text/event-stream"
NDJSON = b"application/x-ndjson"


def feed_all(
    chunks: list[bytes],
    content_type: bytes = SSE,
    max_event_bytes: int = 64 * 1024,
    *,
    tail: bool = True,
) -> PayloadSummary:
    """Feed ``chunks``; ``first_token_at`` is the body offset at the end of its chunk.

    ``tail=False``: a reader that never switches to tail mode (reads every event)."""
    offset = [0]

    def clock() -> float:
        return float(offset[0])

    reader: PayloadReader | None
    if tail:
        reader = make_reader(content_type, max_event_bytes, clock)
    elif content_type == SSE:
        reader = framing.SseReader(max_event_bytes, clock, tail=False)
    else:
        reader = framing.NdjsonReader(max_event_bytes, clock, tail=False)
    assert reader is not None
    for chunk in chunks:
        offset[0] += len(chunk)
        reader.feed(chunk)
    return reader.finish()


def without_time(summary: PayloadSummary) -> PayloadSummary:
    return replace(summary, first_token_at=summary.first_token_at is not None)  # type: ignore[arg-type]


def without_events(summary: PayloadSummary) -> PayloadSummary:
    return replace(without_time(summary), events=0)


SAMPLES: dict[str, tuple[bytes, bytes]] = {
    "openai-lf": (SSE, b"".join(streams.openai_chat(["Hi", "!"]))),
    "openai-crlf": (SSE, b"".join(streams.openai_chat(["Hi", "!"], sep=b"\r\n"))),
    "openai-cr": (SSE, b"".join(streams.openai_chat(["Hi", "!"], sep=b"\r", compact=False))),
    "responses": (SSE, b"".join(streams.openai_responses(["Hi"]))),
    "anthropic": (SSE, b"".join(streams.anthropic(["Hi"]))),
    "ollama": (NDJSON, b"".join(streams.ollama_chat(["Hi", "!"]))),
}


@pytest.mark.parametrize("name", list(SAMPLES))
def test_every_split_offset_reads_the_same(name: str) -> None:
    content_type, body = SAMPLES[name]
    whole = feed_all([body], content_type)
    assert whole.format is not None
    assert not whole.truncated
    token_end = _token_event_end(body, content_type)
    for offset in range(1, len(body)):
        split = feed_all([body[:offset], body[offset:]], content_type)
        assert without_time(split) == without_time(whole), offset
        # The first token is read when the chunk completing its event arrives.
        expected = float(offset) if offset >= token_end else float(len(body))
        assert split.first_token_at == expected, offset


def _token_event_end(body: bytes, content_type: bytes) -> int:
    """The smallest prefix of ``body`` whose feeding reads the first token."""
    for end in range(1, len(body) + 1):
        reader = make_reader(content_type, 64 * 1024, lambda: 1.0)
        assert reader is not None
        reader.feed(body[:end])
        if reader.interpreter.first_token_at is not None:  # type: ignore[attr-defined]
            return end
    raise AssertionError("no token")


def test_three_way_splits_of_a_small_stream() -> None:
    body = b'data: {"choices":[{"delta":{"content":"x"}}]}\r\n\r\ndata: [DONE]\r\n\r\n'
    whole = feed_all([body])
    assert (whole.events, whole.first_token_at is not None, whole.truncated) == (2, True, False)
    for first in range(1, len(body) - 1):
        for second in range(first + 1, len(body)):
            parts = [body[:first], body[first:second], body[second:]]
            assert without_time(feed_all(parts)) == without_time(whole), (first, second)


def test_byte_by_byte() -> None:
    for content_type, body in SAMPLES.values():
        whole = feed_all([body], content_type)
        assert without_time(feed_all([bytes([b]) for b in body], content_type)) == without_time(
            whole
        )


# SSE details ----------------------------------------------------------------------------


def data_of(chunks: list[bytes]) -> list[bytes]:
    """The data of every event the SSE reader dispatches, in order."""
    reader = make_reader(SSE, 1024, lambda: 0.0)
    assert reader is not None
    seen: list[bytes] = []
    interpreter = reader.interpreter  # type: ignore[attr-defined]
    interpreter.handle = seen.append
    for chunk in chunks:
        reader.feed(chunk)
    reader.finish()
    return seen


@pytest.mark.parametrize(
    ("chunks", "expected"),
    [
        ([b"data: a\n\n"], [b"a"]),
        ([b"data:a\n\n"], [b"a"]),  # the space after the colon is optional
        ([b"data:  a\n\n"], [b" a"]),  # only one space is removed
        ([b"data: a\ndata: b\n\n"], [b"a\nb"]),
        ([b"data\n\n"], [b""]),
        ([b"data:\n\n"], [b""]),
        ([b"event: x\nid: 1\ndata: a\nretry: 5\n\n"], [b"a"]),
        ([b": comment\n\n", b": data: no\n\n"], []),
        ([b"datum: a\n\n", b"event: data\n\n"], []),
        ([b"\n\n\ndata: a\n\n\n\ndata: b\n\n"], [b"a", b"b"]),
        ([b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"], [b"a", b"b", b"c"]),
        ([b"data: a\r", b"\n\r", b"\n"], [b"a"]),  # \r\n split across chunks is one line end
        ([b"data: a\r", b"\r"], [b"a"]),
        ([b"\xef\xbb\xbfdata: a\n\n"], [b"a"]),  # a byte order mark is dropped
        ([b"\xef", b"\xbb", b"\xbfdata: a\n\n"], [b"a"]),
        ([b"data: a\n", b"\n", b"data: b\n\n"], [b"a", b"b"]),
        ([b"data: a\n\ndata: unfinished\n"], [b"a"]),  # no blank line: not dispatched
        ([b"id: 1\ndata: a\n", b"data: b\n\n"], [b"a\nb"]),
    ],
)
def test_sse_event_data(chunks: list[bytes], expected: list[bytes]) -> None:
    assert data_of(chunks) == expected


# Oversized events -----------------------------------------------------------------------


def test_event_at_the_limit_is_read_one_byte_more_is_not() -> None:
    data = streams.dumps(streams.chat_chunk([streams.chat_choice({"content": "x" * 100})]))
    event = b"data: " + data + b"\n\n"
    limit = len(event) - 1  # the event without its blank line
    at_limit = feed_all([event, event], max_event_bytes=limit)
    assert (at_limit.format, at_limit.events) == ("openai.chat_completions", 2)
    over = feed_all([event, b"data: " + data + b"y\n\n"], max_event_bytes=limit)
    assert over.events == 2


def test_oversized_event_is_skipped_with_bounded_memory() -> None:
    """A 32 MiB event in 64 KiB chunks: counted, never buffered; the next events read."""
    limit = 64 * 1024
    reader = make_reader(SSE, limit, lambda: 1.0)
    assert reader is not None
    role = streams.openai_chat()[0]
    reader.feed(role)
    tracemalloc.start()
    try:
        reader.feed(b'data: {"choices":[{"delta":{"content":"')
        for _ in range(512):
            reader.feed(b"x" * (64 * 1024))
        _, peak = tracemalloc.get_traced_memory()
        reader.feed(b'"}}]}\n\n')
    finally:
        tracemalloc.stop()
    assert peak < 400 * 1024  # one chunk in flight + the limit + head and tail windows
    for chunk in streams.openai_chat()[2:]:
        reader.feed(chunk)
    summary = reader.finish()
    assert summary.first_token_at == 1.0  # the oversized delta was the first token
    assert (summary.events, summary.finish_reasons, summary.input_tokens) == (7, ("stop",), 12)
    assert not summary.truncated


@pytest.mark.parametrize("split", [None, 1000], ids=["one-chunk", "1000-byte-chunks"])
def test_oversized_responses_completed_still_ends_the_stream(split: int | None) -> None:
    """``response.completed`` repeats the whole answer: a long answer makes it huge."""
    chunks = streams.openai_responses(["word " * 30_000], usage=(50, 30_000))
    assert len(chunks[-1]) > 100_000
    summary = feed_all(_resplit(chunks, split), max_event_bytes=64 * 1024)
    assert (summary.truncated, summary.finish_reasons) == (False, ("completed",))
    assert (summary.input_tokens, summary.output_tokens) == (50, 30_000)
    assert summary.first_token_at is not None


def test_oversized_responses_incomplete_and_failed() -> None:
    chunks = streams.openai_responses(
        ["w " * 50_000], end="response.incomplete", incomplete_reason="max_output_tokens"
    )
    summary = feed_all(chunks, max_event_bytes=16 * 1024)
    assert (summary.truncated, summary.finish_reasons) == (False, ("max_output_tokens",))
    failed = feed_all(
        streams.openai_responses(["w " * 50_000], end="response.failed"), max_event_bytes=16 * 1024
    )
    assert (failed.truncated, failed.finish_reasons) == (True, ("failed",))


@pytest.mark.parametrize("split", [None, 4096], ids=["one-chunk", "4096-byte-chunks"])
def test_oversized_ollama_final_line_with_long_context(split: int | None) -> None:
    chunks = streams.ollama_generate(context_size=40_000, counts=(40_000, 3))
    assert len(chunks[-1]) > 200_000
    summary = feed_all(_resplit(chunks, split), NDJSON, max_event_bytes=64 * 1024)
    assert (summary.truncated, summary.finish_reasons, summary.events) == (False, ("stop",), 4)
    assert (summary.input_tokens, summary.output_tokens) == (40_000, 3)


def test_oversized_ndjson_line_at_the_end_without_newline() -> None:
    chunks = streams.ollama_generate(context_size=40_000)
    chunks[-1] = chunks[-1].rstrip(b"\n")
    summary = feed_all(_resplit(chunks, 10_000), NDJSON, max_event_bytes=4096)
    assert (summary.truncated, summary.events) == (False, 4)


def test_oversized_anthropic_delta_and_chat_finish() -> None:
    huge = {"type": "text_delta", "text": "z" * 10_000}
    summary = feed_all(streams.anthropic([], first_delta=huge), max_event_bytes=2048)
    assert summary.first_token_at is not None
    assert not summary.truncated
    finish = streams.chat_chunk([streams.chat_choice({"content": "q" * 10_000}, "length")])
    chunks = [streams.openai_chat()[0], streams.sse(streams.dumps(finish)), b"data: [DONE]\n\n"]
    summary = feed_all(chunks, max_event_bytes=2048)
    token_read_at = float(len(chunks[0]) + len(chunks[1]))
    assert (summary.finish_reasons, summary.first_token_at) == (("length",), token_read_at)


def test_oversized_comment_is_not_an_event() -> None:
    summary = feed_all([b": " + b"p" * 5000 + b"\n\n", b"data: x\n\n"], max_event_bytes=1024)
    assert summary.events == 1


def _resplit(chunks: list[bytes], size: int | None) -> list[bytes]:
    body = b"".join(chunks)
    if size is None:
        return [body]
    return [body[i : i + size] for i in range(0, len(body), size)]


# Properties -----------------------------------------------------------------------------

# Bytes that matter to the readers, so random streams hit every branch.
_PIECES = [
    b"data: ",
    b"data:",
    b"data",
    b"event: message_stop\n",
    b": ping\n",
    b"\n",
    b"\r\n",
    b"\r",
    b"\n\n",
    b"[DONE]",
    b'{"choices":[{"delta":{"content":"a"},"finish_reason":null}]}',
    b'{"choices":[{"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":3}}',
    b'{"type":"content_block_delta","delta":{"type":"text_delta","text":"b"}}',
    b'{"type":"message_stop"}',
    b'{"type":"response.completed","response":{"usage":{"output_tokens":2}}}',
    b'{"type":"response.output_text.delta","delta":"c"}',
    b'{"message":{"content":"d"},"done":false}',
    b'{"done":true,"done_reason":"stop","eval_count":4}',
    b'"error"',
    b"\xef\xbb\xbf",
    b"{",
    b'"',
    b"\xff\x00",
]


def _splits(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(body) + 1) for cut in cuts})
    edges = [0, *points, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges) if b > a]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(st.sampled_from(_PIECES) | st.binary(max_size=12), max_size=60),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    content_type=st.sampled_from([SSE, NDJSON]),
    limit=st.sampled_from([16, 64, 100, 64 * 1024]),
)
def test_random_streams_never_raise_and_read_the_same_however_split(
    pieces: list[bytes], cuts: list[int], content_type: bytes, limit: int
) -> None:
    """Framing does not depend on where the bytes are cut. Checked exactly with every
    event read (``tail=False``); in tail mode everything but the event count, which it
    approximates on purpose for streams like these (multi-line data events, comments,
    blank NDJSON lines: see ``framing``), must be the same too."""
    body = b"".join(pieces)
    whole = feed_all([body], content_type, limit)
    for chunks in (_splits(body, cuts), pieces):
        assert without_time(feed_all(chunks, content_type, limit, tail=False)) == without_time(
            whole
        )
        assert without_events(feed_all(chunks, content_type, limit)) == without_events(whole)


# The prefilters against a reference that decodes every event -------------------------

_TRICKY_TEXT = st.sampled_from(
    ["a", "", '"finish_reason":null', '"finish_reason":"stop"', '"usage":{', "{", "}]}",
     "[DONE]", '"error"', "null}]", "\\", "é"]
)  # fmt: skip


@st.composite
def chat_chunk_objects(draw: st.DrawFn) -> dict[str, object]:
    choices = []
    for index in draw(st.lists(st.integers(0, 3), max_size=3, unique=True)):
        delta: dict[str, object] = {}
        if draw(st.booleans()):
            delta["content"] = "".join(draw(st.lists(_TRICKY_TEXT, max_size=3)))
        if draw(st.booleans()):
            delta["role"] = "assistant"
        choice: dict[str, object] = {"index": index, "delta": delta}
        choice["finish_reason"] = draw(st.sampled_from([None, None, None, "stop", "length"]))
        choices.append(choice)
    chunk: dict[str, object] = {"id": "c", "choices": choices}
    usage = draw(st.sampled_from(["absent", None, {"prompt_tokens": 5, "completion_tokens": 6}]))
    if usage != "absent":
        chunk["usage"] = usage
    if draw(st.integers(0, 20)) == 0:
        chunk = {"error": {"message": "boom"}}
    keys = draw(st.permutations(list(chunk)))
    return {key: chunk[key] for key in keys}


def reference_chat(objects: list[dict[str, object]], done: bool) -> PayloadSummary:
    """Decode everything: what the reader must find, prefilters or not."""
    first_token: float | None = None
    reasons: dict[int, str] = {}
    usage: dict[str, object] = {}
    error = False
    for number, obj in enumerate(objects):
        for choice in obj.get("choices", []):  # type: ignore[attr-defined]
            if first_token is None and choice["delta"].get("content"):
                first_token = float(number)
            if choice.get("finish_reason") is not None:
                reasons.setdefault(choice["index"], choice["finish_reason"])
        if isinstance(obj.get("usage"), dict):
            usage = obj["usage"]  # type: ignore[assignment]
        error = error or obj.get("error") is not None
    return PayloadSummary(
        events=len(objects) + done,
        first_token_at=first_token,
        finish_reasons=tuple(reasons[i] for i in sorted(reasons)) + (("error",) if error else ()),
        input_tokens=usage.get("prompt_tokens"),  # type: ignore[arg-type]
        output_tokens=usage.get("completion_tokens"),  # type: ignore[arg-type]
        truncated=not done,
        format="openai.chat_completions",
        operation="chat",
    )


@settings(max_examples=300, deadline=None)
@given(
    objects=st.lists(chat_chunk_objects(), min_size=1, max_size=8),
    compact=st.booleans(),
    done=st.booleans(),
)
def test_chat_prefilters_never_skip_what_matters(
    objects: list[dict[str, object]], compact: bool, done: bool
) -> None:
    objects.insert(0, {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
    chunks = [streams.sse(streams.dumps(obj, compact)) for obj in objects]
    if done:
        chunks.append(b"data: [DONE]\n\n")
    fed = [0]
    reader = make_reader(SSE, 64 * 1024, lambda: float(fed[0]))
    assert reader is not None
    for chunk in chunks:
        reader.feed(chunk)
        fed[0] += 1
    assert reader.finish() == reference_chat(objects, done)


@settings(max_examples=100, deadline=None)
@given(texts=st.lists(_TRICKY_TEXT, min_size=1, max_size=6), cut=st.booleans())
def test_content_words_never_end_other_formats(texts: list[str], cut: bool) -> None:
    """Generated text that looks like an end marker or usage never counts as one."""
    fixtures: list[tuple[bytes, Callable[..., list[bytes]]]] = [
        (SSE, streams.anthropic),
        (SSE, streams.openai_responses),
        (NDJSON, streams.ollama_chat),
        (NDJSON, streams.ollama_generate),
    ]
    for content_type, build in fixtures:
        chunks = build(texts)
        if cut:
            chunks = chunks[:-1]
        summary = feed_all(chunks, content_type)
        assert summary.truncated is cut, build.__name__
        assert bool(summary.finish_reasons) is not cut or build is streams.anthropic
