"""The readers on every wire shape of the corpus: what they report, and what they skip."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_stream.payloads import PayloadReader, PayloadSummary, formats, make_reader
from tests import payload_corpus as corpus

SHAPES = list(corpus.SHAPES)
SRC = Path(__file__).resolve().parent.parent / "src"


def read(chunks: tuple[bytes, ...] | list[bytes], content_type: bytes) -> PayloadSummary:
    """Feed ``chunks``; ``first_token_at`` is the index of the chunk that carried it."""
    fed = [0]
    reader = make_reader(content_type, 64 * 1024, lambda: float(fed[0]))
    assert reader is not None
    for chunk in chunks:
        reader.feed(chunk)
        fed[0] += 1
    assert reader.error is None
    return reader.finish()


def expected(shape: corpus.Shape) -> PayloadSummary:
    return PayloadSummary(
        events=shape.events,
        first_token_at=float(shape.first_token_chunk),
        finish_reasons=shape.finish_reasons,
        input_tokens=shape.input_tokens,
        output_tokens=shape.output_tokens,
        truncated=False,
        format=shape.format,
        model=shape.model,
        operation=shape.operation,
    )


@pytest.mark.parametrize("name", SHAPES)
@pytest.mark.parametrize("tokens", [1, 3, 40])
def test_every_shape_is_read_whole(name: str, tokens: int) -> None:
    shape = corpus.SHAPES[name](tokens)
    assert read(shape.chunks, shape.content_type) == expected(shape)


@pytest.mark.parametrize("name", SHAPES)
def test_every_shape_cut_before_its_end_marker_is_truncated(name: str) -> None:
    shape = corpus.SHAPES[name](20)
    summary = read(shape.chunks[: shape.end_chunk], shape.content_type)
    assert summary.truncated
    assert summary.first_token_at == shape.first_token_chunk


@pytest.mark.parametrize("name", SHAPES)
def test_every_shape_reports_its_servers_error_event(name: str) -> None:
    shape = corpus.SHAPES[name](20)
    chunks = [*shape.chunks[: shape.first_token_chunk + 3], shape.error_chunk]
    summary = read(chunks, shape.content_type)
    assert summary.finish_reasons[-1:] == ("error",)
    assert summary.truncated


@pytest.mark.parametrize("name", SHAPES)
def test_every_shape_split_anywhere_reads_the_same(name: str) -> None:
    """Servers and proxies cut bodies anywhere: the summary does not depend on where."""
    shape = corpus.SHAPES[name](12)
    body = b"".join(shape.chunks)
    whole = read([body], shape.content_type)
    for size in (1, 7, 64, 200):
        pieces = [body[at : at + size] for at in range(0, len(body), size)]
        summary = read(pieces, shape.content_type)
        assert summary.events == whole.events
        assert summary.finish_reasons == whole.finish_reasons == shape.finish_reasons
        assert (summary.input_tokens, summary.output_tokens, summary.model) == (
            shape.input_tokens,
            shape.output_tokens,
            shape.model,
        )
        assert not summary.truncated


@pytest.mark.parametrize("name", SHAPES)
def test_every_shape_decodes_a_few_events_not_every_event(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cost claim, counted rather than timed: a 500-delta stream is decoded only
    where it can change the summary (format, first token, finish, usage), whatever the
    server's spelling."""
    decoded: list[bytes] = []
    loads = json.loads

    def counting_loads(data: bytes) -> object:
        decoded.append(data)
        return loads(data)

    monkeypatch.setattr(formats.json, "loads", counting_loads)
    shape = corpus.SHAPES[name](500)
    assert read(shape.chunks, shape.content_type) == expected(shape)
    assert len(decoded) <= 6, [event[:60] for event in decoded]


@pytest.mark.parametrize("name", SHAPES)
def test_every_shape_switches_to_tail_mode_at_its_first_token(name: str) -> None:
    """The cost claim of tail mode: after the chunk that carries the first token, no
    event of any shape is cut or read until the end."""
    shape = corpus.SHAPES[name](300)
    reader = make_reader(shape.content_type, 64 * 1024, lambda: 0.0)
    assert reader is not None
    for number, chunk in enumerate(shape.chunks):
        tailing = reader.tailing  # type: ignore[attr-defined]
        assert tailing is (number > shape.first_token_chunk), number
        reader.feed(chunk)
    assert reader.finish() == replace(expected(shape), first_token_at=0.0)


# What byte scans must never hide -----------------------------------------------------


def vllm_delta(text: str) -> bytes:
    return (
        corpus.vllm(1).chunks[1].replace(b'"content":"Hel"', b'"content":"' + text.encode() + b'"')
    )


def test_a_second_choice_finishing_inside_a_plain_looking_chunk_is_read() -> None:
    """Same head, same tail, but the text closes early: another structure, decoded."""
    shape = corpus.vllm(5)
    sneaky = vllm_delta(
        'a"},"logprobs":null,"finish_reason":"length"},{"index":1,"delta":{"content":"b'
    )
    assert json.loads(sneaky[len(b"data: ") :])["choices"][0]["finish_reason"] == "length"
    chunks = [*shape.chunks[:4], sneaky, *shape.chunks[4:]]
    summary = read(chunks, shape.content_type)
    assert summary.finish_reasons == ("length",)  # choice 0 finished in the sneaky chunk
    assert summary.events == shape.events + 1


def test_escapes_in_the_text_are_text_and_an_escaped_quote_cannot_close_it() -> None:
    shape = corpus.vllm(5)
    escaped = [
        vllm_delta(text) for text in ('say \\"hi\\"', "line\\nbreak", "\\u00e9t\\u00e9", "\\\\")
    ]
    chunks = [*shape.chunks[:4], *escaped, *shape.chunks[4:]]
    assert read(chunks, shape.content_type) == expected(shape).__class__(
        **{**expected(shape).__dict__, "events": shape.events + len(escaped)}
    )


def test_a_raw_line_break_in_the_text_cannot_hide_an_end_marker() -> None:
    """Not JSON any encoder writes, but SSE would cut it into three events, one of them
    ``[DONE]``: the learned shape must not swallow it."""
    shape = corpus.vllm(5)
    hidden = vllm_delta("x\n\ndata: [DONE]\n\ndata: y")
    chunks = [*shape.chunks[:4], hidden]  # no real end marker follows
    summary = read(chunks, shape.content_type)
    assert not summary.truncated
    assert summary.events == 4 + 3  # "data: {...x", "data: [DONE]", "data: y..."


def test_usage_appearing_in_the_varying_tail_of_a_llama_cpp_chunk_is_read() -> None:
    shape = corpus.llama_cpp(6)
    plain = shape.chunks[3]
    with_usage = plain.replace(
        b',"timings":', b',"usage":{"completion_tokens":77,"prompt_tokens":5},"timings":'
    )
    summary = read([*shape.chunks[:5], with_usage], shape.content_type)
    assert (summary.input_tokens, summary.output_tokens) == (5, 77)


def test_an_error_written_in_place_of_openai_obfuscation_padding_is_read() -> None:
    shape = corpus.openai_chat(6)
    plain = shape.chunks[3]
    at = plain.rfind(b',"obfuscation"')
    with_error = plain[:at] + b',"error":{"message":"cut off"}}\n\n'
    summary = read([*shape.chunks[:5], with_error], shape.content_type)
    assert summary.finish_reasons == ("error",)


def test_the_model_is_read_only_from_events_decoded_anyway() -> None:
    """Stated approximation: a stream that names its model only in events read after
    the first token (never decoded) reports no model."""
    shape = corpus.vllm(5)
    anonymous = [chunk.replace(b'"model":"Qwen/Qwen3-8B",', b"") for chunk in shape.chunks[:2]]
    summary = read([*anonymous, *shape.chunks[2:5]], shape.content_type)
    assert summary.first_token_at == 1
    assert summary.model is None


def test_an_error_in_an_ollama_line_that_is_not_done_is_not_seen() -> None:
    """Stated approximation: a line ending ``"done":false}`` after the first token is not
    decoded; Ollama reports errors in a line of their own."""
    shape = corpus.ollama_chat(5)
    odd = shape.chunks[2].replace(b'"message"', b'"error":"oops","message"')
    summary = read([*shape.chunks[:2], odd, *shape.chunks[2:]], shape.content_type)
    assert "error" not in summary.finish_reasons


_TRICKY = st.sampled_from(
    ['"finish_reason":"stop"', '"usage":{"prompt_tokens":1}', '"error"', "[DONE]", "a", " ",
     '\\"', "\\n", "}]}", '"},{"index":1,"delta":{"content":"', "é"]
)  # fmt: skip


_TEXT_VALUE = re.compile(rb'("(?:content|text|delta|response|reasoning_content)": ?)"[^"]+"')


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(SHAPES),
    texts=st.lists(st.lists(_TRICKY, max_size=4).map("".join), min_size=1, max_size=6),
    cut=st.booleans(),
)
def test_no_generated_text_changes_what_any_shape_reports(
    name: str, texts: list[str], cut: bool
) -> None:
    """Text that looks like a finish reason, usage, an end marker or another choice is
    text: on every shape, the summary is the one of plain words."""
    shape = corpus.SHAPES[name](len(texts) + 2)
    reference = read(shape.chunks, shape.content_type)
    replaced = list(shape.chunks)
    for number, text in enumerate(texts):
        index = shape.first_token_chunk + 1 + number
        if name == "several-events-per-chunk" or index >= shape.end_chunk - 2:
            break
        value = json.dumps(text).encode()
        replaced[index] = _TEXT_VALUE.sub(
            lambda match, value=value: match.group(1) + value,
            shape.chunks[index],
            count=1,
        )
        assert replaced[index] != shape.chunks[index] or not text
    if cut:
        replaced = replaced[: shape.end_chunk]
    summary = read(replaced, shape.content_type)
    assert summary.finish_reasons == reference.finish_reasons[: len(summary.finish_reasons)]
    assert summary.truncated is cut
    if not cut:
        assert summary == reference


# The package stands alone ----------------------------------------------------------------


def test_payloads_imports_nothing_else_of_otel_stream() -> None:
    """Imported on its own (the parent package stubbed), ``otel_stream.payloads`` loads
    only its own modules."""
    code = (
        "import sys, types\n"
        "parent = types.ModuleType('otel_stream')\n"
        f"parent.__path__ = [{str(SRC / 'otel_stream')!r}]\n"
        "sys.modules['otel_stream'] = parent\n"
        "import otel_stream.payloads\n"
        "print(sorted(name for name in sys.modules if name.startswith('otel_stream')))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    loaded = eval(completed.stdout)  # a printed list of module names
    assert "otel_stream.payloads" in loaded
    assert [name for name in loaded if not name.startswith("otel_stream.payloads")] == [
        "otel_stream"
    ]


def test_the_reader_protocol_names_error() -> None:
    assert "error" in PayloadReader.__dict__


# GenAI conventions: model and operation --------------------------------------------------


@pytest.mark.parametrize(
    ("models", "expected_model"),
    [
        (["gpt-4o-2024-08-06"], "gpt-4o-2024-08-06"),
        (["", "Qwen/Qwen3-8B"], "Qwen/Qwen3-8B"),  # Azure's first chunk names none
        (["llama3.2:3b", "other"], "llama3.2:3b"),  # the first name is kept
        (
            ["accounts/fireworks/models/llama-v3p1-8b@v2+q"],
            "accounts/fireworks/models/llama-v3p1-8b@v2+q",
        ),
        (["my model, with words"], "_OTHER"),
        (["m" * 129], "_OTHER"),
        ([42, "after-a-number"], "after-a-number"),
    ],
)
def test_the_model_is_the_first_one_named_and_stays_low_cardinality(
    models: list[object], expected_model: str
) -> None:
    def chunk(model: object, content: str) -> bytes:
        choice = {"index": 0, "delta": {"content": content}, "finish_reason": None}
        return corpus.sse(corpus.compact({"model": model, "choices": [choice]}))

    chunks = [chunk(model, "") for model in models] + [chunk("late", "hi"), b"data: [DONE]\n\n"]
    assert read(chunks, corpus.SSE).model == expected_model


@pytest.mark.parametrize(
    ("name", "operation"),
    [(name, corpus.SHAPES[name](1).operation) for name in SHAPES],
)
def test_the_operation_name_follows_the_format(name: str, operation: str) -> None:
    shape = corpus.SHAPES[name](2)
    assert read(shape.chunks, shape.content_type).operation == operation
    assert operation == (
        "text_completion" if name in ("vllm-completions", "ollama-generate") else "chat"
    )


def test_no_format_no_operation() -> None:
    summary = read([b"data: hello\n\n", b"data: world\n\n"], corpus.SSE)
    assert (summary.format, summary.operation, summary.model) == (None, None, None)
