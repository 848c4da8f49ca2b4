"""The demo's fake model on a real uvicorn, spoken to by the real ``openai`` client."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest

from otel_stream.demo.model import Behaviour, RequestDeadline, create_app
from tests.servers import serve

FAST = {"x-demo-ttft": "0", "x-demo-token-interval": "0", "x-demo-tokens": "5"}
MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with serve(RequestDeadline(create_app(Behaviour(tokens=5, ttft=0, token_interval=0)))) as base:
        yield base


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="not-needed", max_retries=0)


def test_streamed_answer_with_usage(url: str) -> None:
    stream = client(url).chat.completions.create(
        model="demo",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 5
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 5)


def test_wire_format_ends_with_done(url: str) -> None:
    body = {"model": "demo", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=FAST) as response:
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        raw = response.read()
    events = [event for event in raw.split(b"\n\n") if event]
    assert events[-1] == b"data: [DONE]"
    payloads = [json.loads(event[len(b"data: ") :]) for event in events[:-1]]
    assert [p["choices"][0]["finish_reason"] for p in payloads] == [None] * 6 + ["stop"]
    assert "usage" not in payloads[-1]  # not asked for


def test_non_streamed_answer_and_max_tokens(url: str) -> None:
    completion = client(url).chat.completions.create(
        model="demo",
        messages=MESSAGES,  # type: ignore[arg-type]
        max_tokens=3,
    )
    assert completion.choices[0].finish_reason == "length"
    assert len((completion.choices[0].message.content or "").split()) == 3
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 3


def test_headers_shape_the_answer(url: str) -> None:
    body = {"model": "demo", "messages": MESSAGES, "stream": True}
    headers = {**FAST, "x-demo-tokens": "3", "x-demo-token-bytes": "100"}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as response:
        raw = response.read()
    contents = [
        json.loads(event[6:])["choices"][0]["delta"].get("content")
        for event in raw.split(b"\n\n")
        if event.startswith(b"data: {")
    ]
    assert [len(c) for c in contents if c] == [100, 100, 100]


def test_model_error_and_truncation_cut_the_connection(url: str) -> None:
    body = {"model": "demo", "messages": MESSAGES, "stream": True}
    for header in ("x-demo-fail-after", "x-demo-truncate-after"):
        headers = {**FAST, header: "2"}
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=headers) as r,
        ):
            r.read()


def test_deadline_ends_the_stream_early_or_answers_504(url: str) -> None:
    body = {"model": "demo", "messages": MESSAGES, "stream": True}
    slow = {"x-demo-ttft": "0", "x-demo-token-interval": "0.05", "x-demo-tokens": "40"}
    with httpx.stream(
        "POST",
        url + "/v1/chat/completions",
        json=body,
        headers={**slow, "x-demo-deadline": "0.3"},
    ) as response:
        raw = response.read()
    assert response.status_code == 200
    assert b"[DONE]" not in raw
    assert raw.count(b"data: ") < 40

    # A non-streamed answer has sent nothing yet when the deadline passes.
    late = {**slow, "x-demo-deadline": "0.1"}
    response = httpx.post(
        url + "/v1/chat/completions", json={**body, "stream": False}, headers=late
    )
    assert response.status_code == 504


@pytest.mark.parametrize(
    ("payload", "headers"),
    [
        (b"not json", {}),
        (b'{"model": "demo"}', {}),
        (b'{"messages": []}', {"x-demo-tokens": "-1"}),
        (b'{"messages": [], "max_tokens": "3"}', {}),
    ],
)
def test_bad_requests_get_400(url: str, payload: bytes, headers: dict[str, str]) -> None:
    response = httpx.post(url + "/v1/chat/completions", content=payload, headers=headers)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
