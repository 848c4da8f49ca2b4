"""Wire-format samples for the payload tests: what real LLM servers stream, event by event.

Each builder returns the body as a list of chunks, one event (SSE) or line (NDJSON) per
chunk, the way the servers send them. Shapes follow the providers' streaming references:
OpenAI chat completions and Responses, Anthropic messages, Ollama ``/api/chat`` and
``/api/generate``.
"""

from __future__ import annotations

import json
from typing import Any

CHAT_ID = "chatcmpl-7QyqpwdfhqwajicIEznoc6Q47XAyW"


def dumps(obj: Any, compact: bool = True) -> bytes:
    if compact:
        return json.dumps(obj, separators=(",", ":")).encode()
    return json.dumps(obj).encode()  # ", " and ": ", as json.dumps writes by default


def sse(data: bytes, event: str | None = None, sep: bytes = b"\n") -> bytes:
    head = b"event: " + event.encode() + sep if event is not None else b""
    return head + b"data: " + data + sep + sep


def chat_chunk(
    choices: list[dict[str, Any]], usage: Any = None, *, with_usage_key: bool = True
) -> dict[str, Any]:
    chunk: dict[str, Any] = {
        "id": CHAT_ID,
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "system_fingerprint": "fp_44709d6fcb",
        "choices": choices,
    }
    if with_usage_key:
        chunk["usage"] = usage
    return chunk


def chat_choice(delta: dict[str, Any], finish_reason: str | None = None, index: int = 0) -> dict:
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def openai_chat(
    words: list[str] | None = None,
    *,
    finish_reason: str = "stop",
    usage: tuple[int, int] | None = (12, 3),
    compact: bool = True,
    sep: bytes = b"\n",
) -> list[bytes]:
    """Role delta, content deltas, finish chunk, usage chunk, ``[DONE]``."""
    words = ["Hello", " there", "!"] if words is None else words
    with_usage = usage is not None
    chunks = [chat_chunk([chat_choice({"role": "assistant", "content": "", "refusal": None})])]
    if not with_usage:
        chunks[0].pop("usage")
    for word in words:
        chunks.append(
            chat_chunk([chat_choice({"content": word})], with_usage_key=with_usage),
        )
    chunks.append(chat_chunk([chat_choice({}, finish_reason)], with_usage_key=with_usage))
    if usage is not None:
        prompt, completion = usage
        total = {"prompt_tokens": prompt, "completion_tokens": completion}
        total["total_tokens"] = prompt + completion
        chunks.append(chat_chunk([], total))
    body = [sse(dumps(chunk, compact), sep=sep) for chunk in chunks]
    body.append(sse(b"[DONE]", sep=sep))
    return body


def responses_event(kind: str, **fields: Any) -> dict[str, Any]:
    return {"type": kind, **fields}


def responses_object(status: str, text: str = "", **extra: Any) -> dict[str, Any]:
    output = []
    if text:
        output.append(
            {
                "id": "msg_1",
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1_741_290_958,
        "status": status,
        "error": None,
        "incomplete_details": None,
        "instructions": "You are a helpful assistant.",
        "model": "gpt-4.1-2025-04-14",
        "output": output,
        "usage": None,
        **extra,
    }


def openai_responses(
    words: list[str] | None = None,
    *,
    end: str = "response.completed",
    usage: tuple[int, int] = (37, 11),
    incomplete_reason: str | None = None,
) -> list[bytes]:
    """``response.created`` ... ``output_text.delta`` ... and a terminal event."""
    words = ["Hi", " there"] if words is None else words
    text = "".join(words)
    events: list[dict[str, Any]] = [
        responses_event("response.created", response=responses_object("in_progress")),
        responses_event("response.in_progress", response=responses_object("in_progress")),
        responses_event(
            "response.output_item.added",
            output_index=0,
            item={"id": "msg_1", "type": "message", "status": "in_progress", "content": []},
        ),
        responses_event(
            "response.content_part.added",
            item_id="msg_1",
            output_index=0,
            content_index=0,
            part={"type": "output_text", "text": "", "annotations": []},
        ),
    ]
    for word in words:
        events.append(
            responses_event(
                "response.output_text.delta",
                item_id="msg_1",
                output_index=0,
                content_index=0,
                delta=word,
            )
        )
    events.append(
        responses_event(
            "response.output_text.done", item_id="msg_1", output_index=0, content_index=0, text=text
        )
    )
    status = end.removeprefix("response.")
    final = responses_object(status, text)
    final["usage"] = {
        "input_tokens": usage[0],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage[1],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage[0] + usage[1],
    }
    if incomplete_reason is not None:
        final["incomplete_details"] = {"reason": incomplete_reason}
    if end == "response.failed":
        final["error"] = {"code": "server_error", "message": "The model failed."}
    events.append(responses_event(end, response=final))
    return [
        sse(dumps({**event, "sequence_number": number}), event=event["type"])
        for number, event in enumerate(events)
    ]


def anthropic(
    words: list[str] | None = None,
    *,
    stop_reason: str = "end_turn",
    input_tokens: int = 25,
    cache_read: int = 0,
    output_tokens: int = 15,
    first_delta: dict[str, Any] | None = None,
) -> list[bytes]:
    """``message_start``, a text block with deltas, ``message_delta``, ``message_stop``."""
    words = ["Hello", "!"] if words is None else words
    usage = {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cache_read,
        "output_tokens": 1,
    }
    message = {
        "id": "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY",
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": "claude-sonnet-4-5",
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": message},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
    ]
    if first_delta is not None:
        events.append({"type": "content_block_delta", "index": 0, "delta": first_delta})
    for word in words:
        delta = {"type": "text_delta", "text": word}
        events.append({"type": "content_block_delta", "index": 0, "delta": delta})
    events += [
        {"type": "content_block_stop", "index": 0},
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        },
        {"type": "message_stop"},
    ]
    return [sse(dumps(event), event=event["type"]) for event in events]


def ollama_chat(
    words: list[str] | None = None, *, done_reason: str = "stop", counts: tuple[int, int] = (26, 4)
) -> list[bytes]:
    """``/api/chat`` NDJSON: message deltas, then the ``done`` line with counts."""
    words = ["The", " sky", " is", " blue"] if words is None else words
    lines: list[dict[str, Any]] = []
    for word in words:
        lines.append(
            {
                "model": "llama3.2",
                "created_at": "2023-08-04T08:52:19.385406455-07:00",
                "message": {"role": "assistant", "content": word},
                "done": False,
            }
        )
    lines.append(
        {
            "model": "llama3.2",
            "created_at": "2023-08-04T19:22:45.499127Z",
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": done_reason,
            "total_duration": 4883583458,
            "load_duration": 1334875,
            "prompt_eval_count": counts[0],
            "prompt_eval_duration": 342546000,
            "eval_count": counts[1],
            "eval_duration": 4535599000,
        }
    )
    return [dumps(line) + b"\n" for line in lines]


def ollama_generate(
    words: list[str] | None = None, *, context_size: int = 8, counts: tuple[int, int] = (26, 3)
) -> list[bytes]:
    """``/api/generate`` NDJSON: ``response`` deltas; the last line carries ``context``."""
    words = ["Why", " not", "?"] if words is None else words
    lines: list[dict[str, Any]] = [
        {"model": "llama3.2", "created_at": "2023-08-04T19:22:45Z", "response": w, "done": False}
        for w in words
    ]
    lines.append(
        {
            "model": "llama3.2",
            "created_at": "2023-08-04T19:22:45.499127Z",
            "response": "",
            "done": True,
            "done_reason": "stop",
            "context": list(range(128_000, 128_000 + context_size)),
            "total_duration": 10706818083,
            "prompt_eval_count": counts[0],
            "eval_count": counts[1],
        }
    )
    return [dumps(line) + b"\n" for line in lines]
