"""What the readers take from each LLM wire format: first token, events, reasons, usage, end."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from otel_stream.payloads import PayloadSummary, make_reader
from tests import payload_streams as streams

SSE = b"text/event-stream"
NDJSON = b"application/x-ndjson"


def read(
    chunks: list[bytes], content_type: bytes = SSE, max_event_bytes: int = 64 * 1024
) -> PayloadSummary:
    """Feed ``chunks``; ``first_token_at`` is the index of the chunk that carried it."""
    fed = [0]
    reader = make_reader(content_type, max_event_bytes, lambda: float(fed[0]))
    assert reader is not None
    for chunk in chunks:
        reader.feed(chunk)
        fed[0] += 1
    return reader.finish()


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        (b"text/event-stream", "SseReader"),
        (b"text/event-stream; charset=utf-8", "SseReader"),
        (b"application/x-ndjson", "NdjsonReader"),
        (b"application/jsonl; charset=utf-8", "NdjsonReader"),
        (b"application/json-lines", "NdjsonReader"),
        (b"application/json", None),
        (b"text/plain", None),
        (b"", None),
    ],
)
def test_make_reader_picks_by_media_type(content_type: bytes, kind: str | None) -> None:
    reader = make_reader(content_type, 1024, lambda: 0.0)
    assert (type(reader).__name__ if reader is not None else None) == kind


# OpenAI chat completions ----------------------------------------------------------------


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "spaced"])
@pytest.mark.parametrize("sep", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_openai_chat(compact: bool, sep: bytes) -> None:
    summary = read(streams.openai_chat(["Hi", " you", "!"], compact=compact, sep=sep))
    assert summary == PayloadSummary(
        events=7,  # role, 3 contents, finish, usage, [DONE]
        first_token_at=1.0,  # the role-only delta is not a token
        finish_reasons=("stop",),
        input_tokens=12,
        output_tokens=3,
        truncated=False,
        format="openai.chat_completions",
        model="gpt-4o-mini",
        operation="chat",
    )


def test_openai_chat_without_usage() -> None:
    summary = read(streams.openai_chat(usage=None, finish_reason="length"))
    assert (summary.finish_reasons, summary.input_tokens, summary.output_tokens) == (
        ("length",),
        None,
        None,
    )
    assert not summary.truncated


@pytest.mark.parametrize("cut", [1, 3, 5, 6])
def test_openai_chat_cut_before_done_is_truncated(cut: int) -> None:
    chunks = streams.openai_chat()[:cut]
    summary = read(chunks)
    assert summary.truncated
    assert summary.events == cut


def test_openai_chat_done_without_blank_line_is_not_read() -> None:
    """As in browsers, an event is dispatched by its blank line; the last one never came."""
    chunks = [*streams.openai_chat()[:-1], b"data: [DONE]\n"]
    assert read(chunks).truncated


@pytest.mark.parametrize(
    "delta",
    [
        {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {}}]},
        {"refusal": "I can't help with that."},
        {"reasoning_content": "Let me think."},
        {"function_call": {"name": "lookup", "arguments": ""}},
    ],
    ids=["tool_calls", "refusal", "reasoning_content", "function_call"],
)
def test_openai_chat_content_other_than_text_is_a_token(delta: dict[str, Any]) -> None:
    chunks = streams.openai_chat(words=[])
    chunks.insert(2, streams.sse(streams.dumps(streams.chat_chunk([streams.chat_choice(delta)]))))
    assert read(chunks).first_token_at == 2.0


def test_openai_chat_empty_and_filter_only_chunks_are_not_tokens() -> None:
    azure_filter = {"id": "", "object": "", "created": 0, "model": "", "choices": []}
    azure_filter["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": {}}]
    chunks = [
        streams.sse(streams.dumps(azure_filter)),
        streams.sse(streams.dumps(streams.chat_chunk([streams.chat_choice({"content": ""})]))),
        streams.sse(streams.dumps(streams.chat_chunk([streams.chat_choice({})]))),
        *streams.openai_chat(["x"])[1:],
    ]
    assert read(chunks).first_token_at == 3.0


def test_openai_legacy_completions() -> None:
    def chunk(text: str, finish: str | None) -> bytes:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        body = {"id": "cmpl-1", "object": "text_completion", "choices": [choice]}
        return streams.sse(streams.dumps(body))

    summary = read([chunk("", None), chunk("Once", None), chunk("", "length"), b"data: [DONE]\n\n"])
    assert (summary.first_token_at, summary.finish_reasons, summary.truncated) == (
        1.0,
        ("length",),
        False,
    )


def test_openai_chat_several_choices_keep_one_reason_each_by_index() -> None:
    choice = streams.chat_choice
    chunks = [
        streams.sse(streams.dumps(streams.chat_chunk([choice({"role": "assistant"}, index=i)])))
        for i in (0, 1, 2)
    ]
    chunks += [
        streams.sse(streams.dumps(streams.chat_chunk([choice({"content": "a"}, index=1)]))),
        # One chunk, two choices: the first finishes, the second does not. The plain-delta
        # fast path sees only the last finish reason; it must not skip this chunk.
        streams.sse(
            streams.dumps(
                streams.chat_chunk([choice({}, "length", index=2), choice({"content": "b"})])
            )
        ),
        streams.sse(streams.dumps(streams.chat_chunk([choice({}, "stop", index=1)]))),
        streams.sse(streams.dumps(streams.chat_chunk([choice({}, "stop", index=1)]))),  # again
        streams.sse(streams.dumps(streams.chat_chunk([choice({}, "content_filter")]))),
        b"data: [DONE]\n\n",
    ]
    summary = read(chunks)
    assert summary.finish_reasons == ("content_filter", "stop", "length")
    assert summary.first_token_at == 3.0


@pytest.mark.parametrize(
    "template",
    [
        # keys in another order (llama.cpp sorts them), usage before the choices
        '{{"usage":{usage},"choices":[{{"delta":{{}},"finish_reason":{reason},"index":0}}]}}',
        # pretty-printed over several data lines
        '{{\n "choices": [\n  {{"delta": {{}}, "finish_reason" : {reason}}}\n ],\n'
        ' "usage": {usage}\n}}',
        # a trailing field after usage, as OpenAI's "obfuscation"
        '{{"choices":[{{"delta":{{}},"finish_reason":{reason}}}],"usage":{usage},"o":"x"}}',
    ],
    ids=["usage-first", "pretty", "trailing-field"],
)
def test_openai_chat_finish_and_usage_found_in_any_layout(template: str) -> None:
    usage = '{"prompt_tokens": 7, "completion_tokens": 2}'
    first = streams.openai_chat(["a"])[:2]
    last = template.format(usage=usage, reason='"tool_calls"').encode()
    chunks = [*first, b"data: " + last.replace(b"\n", b"\ndata: ") + b"\n\n", b"data: [DONE]\n\n"]
    summary = read(chunks)
    assert (summary.finish_reasons, summary.input_tokens, summary.output_tokens) == (
        ("tool_calls",),
        7,
        2,
    )


def test_openai_chat_words_in_content_do_not_fool_the_reader() -> None:
    tricky = ['"finish_reason":"stop"', '"usage":{"prompt_tokens":99}', "[DONE]", '"error"']
    chunks = streams.openai_chat(tricky, usage=(1, 4))
    chunks.pop()  # no [DONE]
    summary = read(chunks)
    assert summary.finish_reasons == ("stop",)
    assert (summary.input_tokens, summary.truncated) == (1, True)


def test_openai_chat_error_event() -> None:
    error = {"error": {"message": "overloaded", "type": "server_error", "code": None}}
    chunks = [*streams.openai_chat(["a"])[:2], streams.sse(streams.dumps(error))]
    summary = read(chunks)
    assert (summary.finish_reasons, summary.truncated) == (("error",), True)


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("stop", "stop"),
        ("MAX_TOKENS", "MAX_TOKENS"),
        ("tool_calls", "tool_calls"),
        ("the user asked me to stop", "_OTHER"),
        ("x" * 65, "_OTHER"),
        (42, "_OTHER"),
    ],
)
def test_finish_reasons_stay_low_cardinality(reason: object, expected: str) -> None:
    chunk = streams.chat_chunk([{"index": 0, "delta": {}, "finish_reason": reason}])
    summary = read([*streams.openai_chat()[:2], streams.sse(streams.dumps(chunk))])
    assert summary.finish_reasons == (expected,)


# OpenAI Responses -----------------------------------------------------------------------


def test_openai_responses_completed() -> None:
    summary = read(streams.openai_responses(["Hi", " there"]))
    assert summary == PayloadSummary(
        events=8,  # 4 before the text, 2 deltas, text done, completed
        first_token_at=4.0,  # created, in_progress, item added, part added, first delta
        finish_reasons=("completed",),
        input_tokens=37,
        output_tokens=11,
        truncated=False,
        format="openai.responses",
        model="gpt-4.1-2025-04-14",
        operation="chat",
    )


def test_openai_responses_incomplete_is_an_end_with_its_reason() -> None:
    chunks = streams.openai_responses(
        end="response.incomplete", incomplete_reason="max_output_tokens"
    )
    summary = read(chunks)
    assert (summary.finish_reasons, summary.truncated, summary.output_tokens) == (
        ("max_output_tokens",),
        False,
        11,
    )


def test_openai_responses_failed_is_truncated() -> None:
    summary = read(streams.openai_responses(end="response.failed"))
    assert (summary.finish_reasons, summary.truncated) == (("failed",), True)


def test_openai_responses_error_event_and_cut() -> None:
    chunks = streams.openai_responses()[:5]
    error = {"type": "error", "code": "rate_limit_exceeded", "message": "slow down"}
    summary = read([*chunks, streams.sse(streams.dumps(error), event="error")])
    assert (summary.finish_reasons, summary.truncated, summary.first_token_at) == (
        ("error",),
        True,
        4.0,
    )


@pytest.mark.parametrize(
    "kind",
    ["response.function_call_arguments.delta", "response.reasoning_summary_text.delta"],
)
def test_openai_responses_other_deltas_are_tokens(kind: str) -> None:
    chunks = streams.openai_responses(words=[])
    event = {"type": kind, "item_id": "fc_1", "output_index": 0, "delta": '{"ci'}
    chunks.insert(2, streams.sse(streams.dumps(event), event=kind))
    assert read(chunks).first_token_at == 2.0


# Anthropic messages ---------------------------------------------------------------------


def test_anthropic() -> None:
    summary = read(streams.anthropic(["Hello", "!"], cache_read=100))
    assert summary == PayloadSummary(
        events=8,  # start, block start, ping, 2 deltas, block stop, message delta, stop
        first_token_at=3.0,
        finish_reasons=("end_turn",),
        input_tokens=125,  # cached input counts, as gen_ai.usage.input_tokens asks
        output_tokens=15,
        truncated=False,
        format="anthropic.messages",
        model="claude-sonnet-4-5",
        operation="chat",
    )


@pytest.mark.parametrize(
    "delta",
    [
        {"type": "thinking_delta", "thinking": "Let me see"},
        {"type": "input_json_delta", "partial_json": '{"loc'},
    ],
    ids=["thinking", "tool-input"],
)
def test_anthropic_thinking_and_tool_input_are_tokens(delta: dict[str, Any]) -> None:
    summary = read(streams.anthropic(first_delta=delta))
    assert summary.first_token_at == 3.0


def test_anthropic_empty_json_delta_is_not_a_token() -> None:
    delta = {"type": "input_json_delta", "partial_json": ""}
    assert read(streams.anthropic(first_delta=delta)).first_token_at == 4.0


def test_anthropic_error_and_cut() -> None:
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    chunks = [*streams.anthropic()[:4], streams.sse(streams.dumps(error), event="error")]
    summary = read(chunks)
    assert (summary.finish_reasons, summary.truncated, summary.input_tokens) == (
        ("error",),
        True,
        25,
    )
    assert read(streams.anthropic()[:-1]).truncated


def test_anthropic_max_tokens() -> None:
    summary = read(streams.anthropic(stop_reason="max_tokens", output_tokens=4096))
    assert (summary.finish_reasons, summary.output_tokens) == (("max_tokens",), 4096)


# Ollama ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sep", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_ollama_chat(sep: bytes) -> None:
    chunks = [chunk.replace(b"\n", sep) for chunk in streams.ollama_chat()]
    summary = read(chunks, NDJSON)
    assert summary == PayloadSummary(
        events=5,
        first_token_at=0.0,
        finish_reasons=("stop",),
        input_tokens=26,
        output_tokens=4,
        truncated=False,
        format="ollama",
        model="llama3.2",
        operation="chat",
    )


def test_ollama_generate_and_cut() -> None:
    summary = read(streams.ollama_generate(), b"application/jsonl")
    assert (summary.events, summary.first_token_at, summary.output_tokens) == (4, 0.0, 3)
    assert not summary.truncated
    assert read(streams.ollama_generate()[:-1], NDJSON).truncated


def test_ollama_spaced_json_and_thinking() -> None:
    lines = [
        {"model": "qwen3", "message": {"role": "assistant", "content": "", "thinking": "Hm"}},
        {"model": "qwen3", "message": {"role": "assistant", "content": "Yes"}},
        {"model": "qwen3", "message": {"content": ""}, "done_reason": "length"},
    ]
    for line, done in zip(lines, (False, False, True), strict=True):
        line["done"] = done
    chunks = [json.dumps(line).encode() + b"\n" for line in lines]
    summary = read(chunks, NDJSON)
    assert (summary.first_token_at, summary.finish_reasons, summary.truncated) == (
        0.0,
        ("length",),
        False,
    )


def test_ollama_error_line() -> None:
    chunks = [*streams.ollama_chat()[:2], b'{"error":"model runner has unexpectedly stopped"}\n']
    summary = read(chunks, NDJSON)
    assert (summary.finish_reasons, summary.truncated, summary.events) == (("error",), True, 3)


def test_ndjson_last_line_without_newline_is_read() -> None:
    chunks = streams.ollama_chat()
    chunks[-1] = chunks[-1].rstrip(b"\n")
    assert not read(chunks, NDJSON).truncated


# Unknown formats ------------------------------------------------------------------------


def test_unknown_sse_counts_data_events_only() -> None:
    body = [
        b": ping - 2024-01-01 00:00:00\r\n\r\n",
        b"event: status\ndata: starting\n\n",
        b"retry: 1000\n\n",
        b"id: 7\n\n",
        b'data: {"type":"custom","text":"hi"}\n\n',
        b"data\n\n",  # a data field without a colon is an (empty) event
        b"data: a\ndata: b\n\n",
    ]
    summary = read(body * 20)
    assert summary == PayloadSummary(events=80)


def test_unknown_ndjson_counts_lines() -> None:
    body = [b'{"row": 1}\n{"row": 2}\n', b"\n", b"   \n", b'{"row": 3}\n']
    assert read(body, NDJSON) == PayloadSummary(events=3)


@pytest.mark.parametrize(
    ("garbage", "events"),
    [
        (b"data: {not json\n\n", 2),
        (b'data: {"choices": [1, "x", null]}\n\n', 2),
        (b'data: {"choices": [{"delta": "x", "finish_reason": {}}], "usage": []}\n\n', 2),
        (b'data: {"type": "message_start", "message": []}\n\n', 2),
        (b'data: {"type": "response.completed", "response": 3}\n\n', 2),
        (b'data: {"done": true, "message": 1, "eval_count": -5}\n\n', 2),
        (b"data: \xff\xfe\x00\x01\x80\n\n", 2),
        (b'data: {"choices": ' + b"[" * 100_000 + b"\n\n", 2),  # RecursionError in json
        (b"\x00\x01\x02\xff" * 1000, 0),
    ],
    ids=["bad-json", "bad-choices", "bad-types", "bad-message", "bad-response", "bad-ollama",
         "binary", "deep", "noise"],
)  # fmt: skip
def test_malformed_payloads_are_ignored(garbage: bytes, events: int) -> None:
    summary = read([garbage, garbage], max_event_bytes=1024 * 1024)
    assert summary.events == events
    assert summary.first_token_at is None
    assert summary.input_tokens is None
    assert summary.output_tokens is None


def test_reader_failure_is_contained() -> None:
    """A reader that fails keeps the exception, reads no more, and never raises or logs."""
    failure = RuntimeError("clock")

    def broken_clock() -> float:
        raise failure

    reader = make_reader(SSE, 1024, broken_clock)
    assert reader is not None
    assert reader.error is None
    for chunk in streams.openai_chat():
        reader.feed(chunk)  # the first token reads the clock, which raises
    assert reader.error is failure
    summary = reader.finish()
    assert summary.first_token_at is None
    assert summary.events == 2  # the role delta, then the content delta that failed
    assert not summary.truncated  # it stopped reading, so it cannot tell
    assert reader.error is failure


def test_summary_never_holds_content() -> None:
    secret = "SECRET-CONTENT-42"
    summaries = [
        read(streams.openai_chat([secret])),
        read(streams.anthropic([secret])),
        read(streams.openai_responses([secret])),
        read(streams.ollama_chat([secret]), NDJSON),
    ]
    for summary in summaries:
        assert secret not in repr(summary)
        assert replace(summary, first_token_at=None) != PayloadSummary()
