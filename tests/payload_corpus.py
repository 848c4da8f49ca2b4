"""Whole streams as real LLM servers write them, each with the summary a reader must give.

Every shape is a function of ``tokens`` (how many content deltas the stream carries)
returning a :class:`Shape`: the body chunks exactly as that server hands them to the
HTTP layer (field order, null fields written or left out, separators, ``event:`` lines,
line ends), the chunk that carries the first token, the end marker's chunk, the error
event that server writes when it fails mid-stream, and the expected summary. The tests
check the readers on every shape; ``bench/overhead.py`` times the middleware on them.

The spelling of each shape is taken from the server's source or from captures of its
output posted in its issue tracker (named in each function). Values (ids, timestamps,
model names) are made up; the layout is not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

SSE = b"text/event-stream"
NDJSON = b"application/x-ndjson"

OPENAI_CHAT = "openai.chat_completions"
OPENAI_RESPONSES = "openai.responses"
ANTHROPIC = "anthropic.messages"
OLLAMA = "ollama"

_WORDS = ("Hel", "lo", "!", " How", " can", " I", " help", " you", " today", "?")


@dataclass(frozen=True)
class Shape:
    """One whole stream and what a reader must make of it."""

    name: str
    content_type: bytes
    chunks: tuple[bytes, ...]
    #: Index of the chunk that carries the first generated content.
    first_token_chunk: int
    #: Index of the chunk that holds the end marker: the stream cut before it is truncated.
    end_chunk: int
    #: What this server writes when it fails mid-stream (an error event or line).
    error_chunk: bytes
    #: Data events (SSE) or lines (NDJSON) in the whole stream.
    events: int
    finish_reasons: tuple[str, ...]
    input_tokens: int | None
    output_tokens: int | None
    model: str | None
    format: str
    operation: str


def words(tokens: int) -> list[str]:
    return [_WORDS[index % len(_WORDS)] for index in range(tokens)]


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def spaced(obj: Any) -> bytes:
    return json.dumps(obj).encode()  # ", " and ": ", json.dumps's default


def sse(data: bytes, event: str | None = None, *, space: bool = True, end: bytes = b"\n") -> bytes:
    field = b"data: " if space else b"data:"
    head = b"event: " + event.encode() + end if event is not None else b""
    return head + field + data + end + end


def obfuscation(index: int) -> str:
    """OpenAI's random padding: a different length and value in every chunk."""
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    size = 2 + (index * 7) % 11
    return "".join(
        alphabet[(index * 31 + position * 17) % len(alphabet)] for position in range(size)
    )


def _shape(name: str, content_type: bytes, chunks: list[bytes], **fields: Any) -> Shape:
    return Shape(name=name, content_type=content_type, chunks=tuple(chunks), **fields)


# OpenAI chat completions and the servers that copy it -----------------------------------


def openai_chat(tokens: int = 3) -> Shape:
    """api.openai.com today, ``stream_options: {"include_usage": true}``.

    Source: the API reference's chunk object (``service_tier``, ``system_fingerprint``,
    ``usage: null`` on every chunk when usage is asked for, the last chunk with empty
    ``choices``) and ``obfuscation``, the random padding field the API adds to each chunk
    (``stream_options.include_obfuscation``, on by default); key order as captured in
    pydantic/pydantic-ai#797 and openai/openai-python#1677.
    """
    head = {
        "id": "chatcmpl-CBqCOFjtLS6MnIjeak1IU4lz9eX6J",
        "object": "chat.completion.chunk",
        "created": 1756938296,
        "model": "gpt-4o-2024-08-06",
        "service_tier": "default",
        "system_fingerprint": "fp_80956533cb",
    }

    def chunk(index: int, choices: list[Any], usage: Any = None) -> bytes:
        body = {**head, "choices": choices, "usage": usage, "obfuscation": obfuscation(index)}
        return sse(compact(body))

    def choice(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}

    role = {"role": "assistant", "content": "", "refusal": None}
    chunks = [chunk(0, [choice(role)])]
    chunks += [chunk(i + 1, [choice({"content": w})]) for i, w in enumerate(words(tokens))]
    chunks.append(chunk(tokens + 1, [choice({}, "stop")]))
    usage = {
        "prompt_tokens": 19,
        "completion_tokens": tokens,
        "total_tokens": 19 + tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    chunks.append(chunk(tokens + 2, [], usage))
    chunks.append(sse(b"[DONE]"))
    error = {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    return _shape(
        "openai-chat",
        SSE,
        chunks,
        first_token_chunk=1,
        end_chunk=len(chunks) - 1,
        error_chunk=sse(compact(error)),
        events=len(chunks),
        finish_reasons=("stop",),
        input_tokens=19,
        output_tokens=tokens,
        model="gpt-4o-2024-08-06",
        format=OPENAI_CHAT,
        operation="chat",
    )


def azure_openai(tokens: int = 3) -> Shape:
    """Azure OpenAI: keys sorted, content-filter results in every choice.

    Source: captures in langchain4j/langchain4j#2385 and AbanteAI/mentat#429: a first
    chunk with empty ``choices`` and ``prompt_filter_results`` (model and id empty), then
    chunks whose choice starts with ``content_filter_results`` (an object per category),
    the finish chunk with empty filter results; the usage chunk as with OpenAI.
    """
    safe = {"filtered": False, "severity": "safe"}
    filters = {"hate": safe, "self_harm": safe, "sexual": safe, "violence": safe}
    prompt_filters = {**filters, "jailbreak": {"filtered": False, "detected": False}}
    tail = {
        "created": 1736407895,
        "id": "chatcmpl-AnhIt2rw8vL8czymkCwEOKKTg7HPc",
        "model": "gpt-4o-mini-2024-07-18",
        "object": "chat.completion.chunk",
        "system_fingerprint": "fp_5154047bf2",
    }

    def choice(delta: dict[str, Any], reason: str | None = None, results: Any = None) -> Any:
        return {
            "content_filter_results": filters if results is None else results,
            "delta": delta,
            "finish_reason": reason,
            "index": 0,
            "logprobs": None,
        }

    first = {
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": prompt_filters}],
    }
    chunks = [sse(compact(first))]
    role = {"content": "", "refusal": None, "role": "assistant"}
    chunks.append(sse(compact({"choices": [choice(role, results={})], **tail})))
    chunks += [sse(compact({"choices": [choice({"content": w})], **tail})) for w in words(tokens)]
    chunks.append(sse(compact({"choices": [choice({}, "stop", results={})], **tail})))
    usage = {
        "completion_tokens": tokens,
        "completion_tokens_details": {"reasoning_tokens": 0},
        "prompt_tokens": 27,
        "prompt_tokens_details": {"cached_tokens": 0},
        "total_tokens": 27 + tokens,
    }
    chunks.append(sse(compact({"choices": [], **tail, "usage": usage})))
    chunks.append(sse(b"[DONE]"))
    error = {"error": {"code": "server_error", "message": "The service is temporarily unable."}}
    return _shape(
        "azure-openai",
        SSE,
        chunks,
        first_token_chunk=2,
        end_chunk=len(chunks) - 1,
        error_chunk=sse(compact(error)),
        events=len(chunks),
        finish_reasons=("stop",),
        input_tokens=27,
        output_tokens=tokens,
        model="gpt-4o-mini-2024-07-18",
        format=OPENAI_CHAT,
        operation="chat",
    )


def vllm(tokens: int = 3) -> Shape:
    """vLLM's OpenAI server (0.15): pydantic ``model_dump_json``, ``data: `` lines.

    Source: capture in vllm-project/vllm#35705 (role chunk, ``logprobs``/``finish_reason``
    null, the finish chunk with ``stop_reason``); the usage chunk with empty ``choices``
    for ``include_usage``. Its mid-stream error is written by ``json.dumps`` (spaced),
    not by the chunks' encoder.
    """
    head = {
        "id": "chatcmpl-8b2b91720edd4372b0579e89255b4828",
        "object": "chat.completion.chunk",
        "created": 1772423572,
        "model": "Qwen/Qwen3-8B",
    }

    def chunk(choices: list[Any], **extra: Any) -> bytes:
        return sse(compact({**head, "choices": choices, **extra}))

    def choice(delta: dict[str, Any], reason: str | None = None, **extra: Any) -> Any:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason, **extra}

    chunks = [chunk([choice({"role": "assistant", "content": ""})])]
    chunks += [chunk([choice({"content": w})]) for w in words(tokens)]
    chunks.append(chunk([choice({"content": ""}, "length", stop_reason=None)]))
    usage = {"prompt_tokens": 31, "total_tokens": 31 + tokens, "completion_tokens": tokens}
    chunks.append(chunk([], usage=usage))
    chunks.append(sse(b"[DONE]"))
    error = {
        "error": {
            "object": "error",
            "message": "The engine died unexpectedly.",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }
    return _shape(
        "vllm",
        SSE,
        chunks,
        first_token_chunk=1,
        end_chunk=len(chunks) - 1,
        error_chunk=sse(spaced(error)),
        events=len(chunks),
        finish_reasons=("length",),
        input_tokens=31,
        output_tokens=tokens,
        model="Qwen/Qwen3-8B",
        format=OPENAI_CHAT,
        operation="chat",
    )


def vllm_completions(tokens: int = 3) -> Shape:
    """vLLM's legacy ``/v1/completions``: ``choices[].text``, ``object: text_completion``.

    Source: vLLM's ``CompletionStreamResponse`` (``text``, ``logprobs``, ``finish_reason``,
    ``stop_reason`` per choice), the same framing as its chat route.
    """
    head = {
        "id": "cmpl-d99811e57dc0492fbee4e9e5082333e2",
        "object": "text_completion",
        "created": 1772423572,
        "model": "Qwen/Qwen3-8B",
    }

    def chunk(text: str, reason: str | None = None) -> bytes:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": None,
            "finish_reason": reason,
            "stop_reason": None,
        }
        return sse(compact({**head, "choices": [choice]}))

    chunks = [chunk(w) for w in words(tokens)]
    chunks.append(chunk("", "stop"))
    chunks.append(sse(b"[DONE]"))
    error = {"error": {"object": "error", "message": "boom", "type": "InternalServerError"}}
    return _shape(
        "vllm-completions",
        SSE,
        chunks,
        first_token_chunk=0,
        end_chunk=len(chunks) - 1,
        error_chunk=sse(spaced(error)),
        events=len(chunks),
        finish_reasons=("stop",),
        input_tokens=None,
        output_tokens=None,
        model="Qwen/Qwen3-8B",
        format=OPENAI_CHAT,
        operation="text_completion",
    )


def sglang(tokens: int = 3) -> Shape:
    """SGLang: every delta field written (``role``/``content``/``reasoning_content``/
    ``tool_calls``, null when unset), ``matched_stop`` per choice, ``usage: null``.

    Source: capture in sgl-project/sglang#9657 (reasoning deltas with ``content: null``,
    ``"matched_stop":null``, ``"usage":null``); the finish chunk's ``matched_stop`` holds
    the stop token id; the usage chunk has empty ``choices``.
    """
    head = {
        "id": "fea45bfa7bbd4209b1e71bdcdcc6c667",
        "object": "chat.completion.chunk",
        "created": 1756216933,
        "model": "meta-llama/Llama-3.1-8B-Instruct",
    }

    def chunk(choices: list[Any], usage: Any = None) -> bytes:
        return sse(compact({**head, "choices": choices, "usage": usage}))

    def choice(
        content: str | None,
        reasoning: str | None = None,
        reason: str | None = None,
        role: str | None = None,
        matched: int | None = None,
    ) -> Any:
        delta = {
            "role": role,
            "content": content,
            "reasoning_content": reasoning,
            "tool_calls": None,
        }
        return {
            "index": 0,
            "delta": delta,
            "logprobs": None,
            "finish_reason": reason,
            "matched_stop": matched,
        }

    chunks = [chunk([choice("", role="assistant")])]
    chunks += [chunk([choice(None, reasoning=text)]) for text in ("Let", " me")]
    chunks += [chunk([choice(w)]) for w in words(tokens)]
    chunks.append(chunk([choice(None, reason="stop", matched=128009)]))
    usage = {
        "prompt_tokens": 42,
        "total_tokens": 42 + tokens + 2,
        "completion_tokens": tokens + 2,
        "prompt_tokens_details": None,
    }
    chunks.append(chunk([], usage))
    chunks.append(sse(b"[DONE]"))
    error = {"error": {"message": "Request aborted.", "type": "BadRequestError", "code": 400}}
    return _shape(
        "sglang",
        SSE,
        chunks,
        first_token_chunk=1,  # reasoning content is generated content
        end_chunk=len(chunks) - 1,
        error_chunk=sse(compact(error)),
        events=len(chunks),
        finish_reasons=("stop",),
        input_tokens=42,
        output_tokens=tokens + 2,
        model="meta-llama/Llama-3.1-8B-Instruct",
        format=OPENAI_CHAT,
        operation="chat",
    )


def tgi(tokens: int = 3) -> Shape:
    """Text Generation Inference's ``/v1/chat/completions``: axum's ``data:`` (no space).

    Source: TGI ``router/src/chat.rs`` and ``lib.rs``: ``object`` first (a serde tag),
    an empty ``id``, ``created`` read from the clock for every chunk (it ticks during a
    stream), the role repeated in every delta, no role-only chunk, the finish reason on
    the last token's chunk, then a usage chunk with empty ``choices``; axum's
    ``Event::json_data`` writes ``data:`` followed by the JSON without a space.
    """
    base = {
        "object": "chat.completion.chunk",
        "id": "",
        "created": 1732000000,
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "system_fingerprint": "3.0.1-sha-bb9095a",
    }

    def chunk(index: int, choices: list[Any], usage: Any = None) -> bytes:
        body = {**base, "created": 1732000000 + index // 30, "choices": choices, "usage": usage}
        return sse(compact(body), space=False)

    def choice(content: str, reason: str | None = None) -> Any:
        delta = {"role": "assistant", "content": content}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}

    texts = words(tokens)
    chunks = [chunk(i, [choice(w)]) for i, w in enumerate(texts[:-1])]
    chunks.append(chunk(tokens, [choice(texts[-1], "length")]))
    usage = {"prompt_tokens": 12, "completion_tokens": tokens, "total_tokens": 12 + tokens}
    chunks.append(chunk(tokens, [], usage))
    chunks.append(sse(b"[DONE]", space=False))
    error = {"error": "Request failed during generation: Server error", "error_type": "generation"}
    return _shape(
        "tgi",
        SSE,
        chunks,
        first_token_chunk=0,
        end_chunk=len(chunks) - 1,
        error_chunk=sse(compact(error), space=False),
        events=len(chunks),
        finish_reasons=("length",),
        input_tokens=12,
        output_tokens=tokens,
        model="meta-llama/Llama-3.1-8B-Instruct",
        format=OPENAI_CHAT,
        operation="chat",
    )


def llama_cpp(tokens: int = 3) -> Shape:
    """llama.cpp's ``llama-server``: ``choices`` first, ``finish_reason`` first in the
    choice, a ``timings`` object (new numbers in every chunk) after ``object``.

    Source: capture in openai-php/client#780 (key order, ``timings``), the usage chunk
    after the finish chunk as described in strands-agents/harness-sdk#3955.
    """
    tail = {
        "created": 1781492230,
        "id": "chatcmpl-qC6laQHbZ2CmxNvJ4NoB1L93LcVF7nfe",
        "model": "gemma-3-4b-it-Q4_K_M.gguf",
        "system_fingerprint": "b9554-d403f00ec",
        "object": "chat.completion.chunk",
    }

    def timings(index: int) -> dict[str, Any]:
        predicted_ms = 14.5 * index + 0.125
        return {
            "cache_n": 7,
            "prompt_n": 10,
            "prompt_ms": 251.51,
            "prompt_per_token_ms": 25.151,
            "prompt_per_second": 39.75985050296211,
            "predicted_n": index,
            "predicted_ms": predicted_ms,
            "predicted_per_token_ms": predicted_ms / max(index, 1),
            "predicted_per_second": 1000 * max(index, 1) / predicted_ms,
        }

    def chunk(index: int, choices: list[Any], **extra: Any) -> bytes:
        return sse(compact({"choices": choices, **tail, **extra, "timings": timings(index)}))

    def choice(delta: dict[str, Any], reason: str | None = None) -> Any:
        return {"finish_reason": reason, "index": 0, "delta": delta}

    role = {"role": "assistant", "content": None}
    chunks = [sse(compact({"choices": [choice(role)], **tail}))]
    chunks += [chunk(i + 1, [choice({"content": w})]) for i, w in enumerate(words(tokens))]
    chunks.append(chunk(tokens, [choice({}, "stop")]))
    usage = {"completion_tokens": tokens, "prompt_tokens": 10, "total_tokens": 10 + tokens}
    chunks.append(chunk(tokens, [], usage=usage))
    chunks.append(sse(b"[DONE]"))
    error = {"error": {"code": 500, "message": "context shift failed", "type": "server_error"}}
    return _shape(
        "llama.cpp",
        SSE,
        chunks,
        first_token_chunk=1,
        end_chunk=len(chunks) - 1,
        error_chunk=sse(compact(error)),
        events=len(chunks),
        finish_reasons=("stop",),
        input_tokens=10,
        output_tokens=tokens,
        model="gemma-3-4b-it-Q4_K_M.gguf",
        format=OPENAI_CHAT,
        operation="chat",
    )


def ollama_openai(tokens: int = 3) -> Shape:
    """Ollama's OpenAI-compatible ``/v1/chat/completions``.

    Source: ollama ``openai/openai.go`` (``ChatCompletionChunk``: ``system_fingerprint``
    ``fp_ollama``, ``created`` from the clock per chunk, ``usage`` left out unless set,
    the role in every delta, ``finish_reason`` always written) and its middleware's
    ``data: %s\\n\\n``; the finish reason on a last chunk with empty content.
    """

    def chunk(index: int, choices: list[Any], **extra: Any) -> bytes:
        body = {
            "id": "chatcmpl-535",
            "object": "chat.completion.chunk",
            "created": 1733000000 + index // 30,
            "model": "llama3.2:3b",
            "system_fingerprint": "fp_ollama",
            "choices": choices,
            **extra,
        }
        return sse(compact(body))

    def choice(content: str, reason: str | None = None) -> Any:
        return {
            "index": 0,
            "delta": {"role": "assistant", "content": content},
            "finish_reason": reason,
        }

    chunks = [chunk(i, [choice(w)]) for i, w in enumerate(words(tokens))]
    chunks.append(chunk(tokens, [choice("", "stop")]))
    usage = {"prompt_tokens": 26, "completion_tokens": tokens, "total_tokens": 26 + tokens}
    chunks.append(chunk(tokens, [], usage=usage))
    chunks.append(sse(b"[DONE]"))
    error = {
        "error": {
            "message": "model runner stopped",
            "type": "api_error",
            "param": None,
            "code": None,
        }
    }
    return _shape(
        "ollama-openai",
        SSE,
        chunks,
        first_token_chunk=0,
        end_chunk=len(chunks) - 1,
        error_chunk=sse(compact(error)),
        events=len(chunks),
        finish_reasons=("stop",),
        input_tokens=26,
        output_tokens=tokens,
        model="llama3.2:3b",
        format=OPENAI_CHAT,
        operation="chat",
    )


def gateway_without_nulls(tokens: int = 3) -> Shape:
    """A gateway re-serialising the openai SDK's chunk objects with
    ``model_dump_json(exclude_none=True)``: every null field left out, so content deltas
    carry no ``finish_reason`` key at all.

    Source: the openai SDK's ``ChatCompletionChunk`` field order (``id``, ``choices``,
    ``created``, ``model``, ``object``, ``service_tier``, ``system_fingerprint``,
    ``usage``; a choice's ``delta``, ``finish_reason``, ``index``) and the
    ``exclude_none=True`` pattern common in proxies (``yield f"data: {chunk.model_dump_json
    (exclude_none=True)}\\n\\n"``).
    """
    head = {"id": "chatcmpl-CBqCOFjtLS6MnIjeak1IU4lz9eX6J"}
    tail = {
        "created": 1756938296,
        "model": "gpt-4o-mini-2024-07-18",
        "object": "chat.completion.chunk",
        "service_tier": "default",
        "system_fingerprint": "fp_560af6e559",
    }

    def chunk(choices: list[Any], **extra: Any) -> bytes:
        return sse(compact({**head, "choices": choices, **tail, **extra}))

    chunks = [chunk([{"delta": {"content": "", "role": "assistant"}, "index": 0}])]
    chunks += [chunk([{"delta": {"content": w}, "index": 0}]) for w in words(tokens)]
    chunks.append(chunk([{"delta": {}, "finish_reason": "stop", "index": 0}]))
    usage = {"completion_tokens": tokens, "prompt_tokens": 8, "total_tokens": 8 + tokens}
    chunks.append(chunk([], usage=usage))
    chunks.append(sse(b"[DONE]"))
    error = {"error": {"message": "upstream timed out", "type": "timeout"}}
    return _shape(
        "gateway-without-nulls",
        SSE,
        chunks,
        first_token_chunk=1,
        end_chunk=len(chunks) - 1,
        error_chunk=sse(compact(error)),
        events=len(chunks),
        finish_reasons=("stop",),
        input_tokens=8,
        output_tokens=tokens,
        model="gpt-4o-mini-2024-07-18",
        format=OPENAI_CHAT,
        operation="chat",
    )


def app_json_dumps(tokens: int = 3) -> Shape:
    """An app writing ``f"data: {json.dumps(chunk)}\\n\\n"``: ``", "`` and ``": "``, and
    the finish reason and usage in one last chunk.

    Source: the common hand-written OpenAI-compatible FastAPI endpoint (``json.dumps``
    with its default separators), as in the apps quoted in vllm-project/vllm#2686.
    """

    def chunk(choices: list[Any], **extra: Any) -> bytes:
        body = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": "my-finetune-v2",
            "choices": choices,
            **extra,
        }
        return sse(spaced(body))

    chunks = [
        chunk([{"index": 0, "delta": {"content": w}, "finish_reason": None}]) for w in words(tokens)
    ]
    usage = {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens}
    chunks.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}], usage=usage))
    chunks.append(sse(b"[DONE]"))
    error = {"error": {"message": "generation failed", "type": "internal_error"}}
    return _shape(
        "app-json-dumps",
        SSE,
        chunks,
        first_token_chunk=0,
        end_chunk=len(chunks) - 1,
        error_chunk=sse(spaced(error)),
        events=len(chunks),
        finish_reasons=("stop",),
        input_tokens=5,
        output_tokens=tokens,
        model="my-finetune-v2",
        format=OPENAI_CHAT,
        operation="chat",
    )


def sse_starlette_crlf(tokens: int = 3) -> Shape:
    """An app on sse-starlette's ``EventSourceResponse``: ``\\r\\n`` line ends (its
    default separator) and its keep-alive comment ``: ping``.

    Source: sse-starlette ``sse.py`` (``DEFAULT_SEPARATOR = "\\r\\n"``, the ping comment
    ``: ping - <time>``), the app yielding vLLM-style chunks as ``{"data": ...}``.
    """
    end = b"\r\n"
    head = {
        "id": "chatcmpl-a1b2c3",
        "object": "chat.completion.chunk",
        "created": 1760000000,
        "model": "mistral-small-3.2",
    }

    def chunk(choices: list[Any], **extra: Any) -> bytes:
        return sse(compact({**head, "choices": choices, **extra}), end=end)

    def choice(delta: dict[str, Any], reason: str | None = None) -> Any:
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}

    chunks = [chunk([choice({"role": "assistant", "content": ""})])]
    chunks.append(b": ping - 2025-10-09 09:20:00.123456+00:00\r\n\r\n")
    chunks += [chunk([choice({"content": w})]) for w in words(tokens)]
    usage = {"prompt_tokens": 9, "completion_tokens": tokens, "total_tokens": 9 + tokens}
    chunks.append(chunk([choice({}, "tool_calls")]))
    chunks.append(chunk([], usage=usage))
    chunks.append(sse(b"[DONE]", end=end))
    error = {"error": {"message": "tool server unreachable", "type": "server_error"}}
    return _shape(
        "sse-starlette-crlf",
        SSE,
        chunks,
        first_token_chunk=2,
        end_chunk=len(chunks) - 1,
        error_chunk=sse(compact(error), end=end),
        events=len(chunks) - 1,  # the ping is a comment, not an event
        finish_reasons=("tool_calls",),
        input_tokens=9,
        output_tokens=tokens,
        model="mistral-small-3.2",
        format=OPENAI_CHAT,
        operation="chat",
    )


def several_events_per_chunk(tokens: int = 3) -> Shape:
    """A server that flushes several events per body chunk (a proxy coalescing writes,
    or a server under load): vLLM's events, four to a chunk, the last chunk holding the
    finish chunk, the usage chunk and ``[DONE]`` together."""
    events = list(vllm(tokens).chunks)
    per_chunk = 4
    body, last = events[:-3], events[-3:]
    chunks = [b"".join(body[i : i + per_chunk]) for i in range(0, len(body), per_chunk)]
    chunks.append(b"".join(last))
    first = next(i for i, chunk in enumerate(chunks) if b'"content":"Hel"' in chunk)
    return _shape(
        "several-events-per-chunk",
        SSE,
        chunks,
        first_token_chunk=first,
        end_chunk=len(chunks) - 1,
        error_chunk=vllm(tokens).error_chunk,
        events=len(events),
        finish_reasons=("length",),
        input_tokens=31,
        output_tokens=tokens,
        model="Qwen/Qwen3-8B",
        format=OPENAI_CHAT,
        operation="chat",
    )


# OpenAI Responses and Anthropic messages ------------------------------------------------


def openai_responses(tokens: int = 3) -> Shape:
    """The Responses API: ``event:`` lines, a whole response object in the first two and
    the last event, text deltas with ``logprobs`` and ``obfuscation``.

    Source: the API reference's streaming events and the capture in usebruno/bruno#8762
    (``response.created`` ... with ``sequence_number`` last).
    """
    model = "gpt-4.1-2025-04-14"

    def response(status: str, output: list[Any], usage: Any) -> dict[str, Any]:
        return {
            "id": "resp_010b164d1e79f616006a632641a87c81958e0dc085416168e1",
            "object": "response",
            "created_at": 1784882753,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": None,
            "max_output_tokens": None,
            "model": model,
            "output": output,
            "parallel_tool_calls": True,
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "auto",
            "store": True,
            "temperature": 1.0,
            "text": {"format": {"type": "text"}, "verbosity": "medium"},
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
            "metadata": {},
        }

    item_id = "msg_010b164d1e79f616006a6326423b288195a4d8bb7d5f9c8d0f"
    text = "".join(words(tokens))
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    done_part = {**part, "text": text}
    item = {
        "id": item_id,
        "type": "message",
        "status": "in_progress",
        "content": [],
        "role": "assistant",
    }
    done_item = {**item, "status": "completed", "content": [done_part]}
    usage = {
        "input_tokens": 37,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 37 + tokens,
    }
    where = {"item_id": item_id, "output_index": 0, "content_index": 0}
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": response("in_progress", [], None)},
        {"type": "response.in_progress", "response": response("in_progress", [], None)},
        {"type": "response.output_item.added", "output_index": 0, "item": item},
        {"type": "response.content_part.added", **where, "part": part},
    ]
    for index, word in enumerate(words(tokens)):
        delta = {"delta": word, "logprobs": [], "obfuscation": obfuscation(index)}
        events.append({"type": "response.output_text.delta", **where, **delta})
    events += [
        {"type": "response.output_text.done", **where, "text": text, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": done_part},
        {"type": "response.output_item.done", "output_index": 0, "item": done_item},
        {"type": "response.completed", "response": response("completed", [done_item], usage)},
    ]
    chunks = [
        sse(compact({**event, "sequence_number": number}), event=event["type"])
        for number, event in enumerate(events)
    ]
    error = {
        "type": "error",
        "code": "server_error",
        "message": "Something went wrong",
        "param": None,
    }
    return _shape(
        "openai-responses",
        SSE,
        chunks,
        first_token_chunk=4,
        end_chunk=len(chunks) - 1,
        error_chunk=sse(compact(error), event="error"),
        events=len(chunks),
        finish_reasons=("completed",),
        input_tokens=37,
        output_tokens=tokens,
        model=model,
        format=OPENAI_RESPONSES,
        operation="chat",
    )


def anthropic(tokens: int = 3) -> Shape:
    """Anthropic's Messages API: ``event:`` lines, compact JSON, and ``ping`` (whose data
    the API writes with a space, ``{"type": "ping"}``).

    Source: the capture in brainlid/langchain#86 and the streaming reference
    (``message_start`` with usage and ``cache_creation``, ``content_block_*``,
    ``message_delta`` with the stop reason and cumulative usage, ``message_stop``).
    """
    model = "claude-sonnet-4-5-20250929"
    message = {
        "model": model,
        "id": "msg_01F8kFTQzuVBK3V53N36vZGN",
        "type": "message",
        "role": "assistant",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {
            "input_tokens": 25,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 100,
            "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 0},
            "output_tokens": 1,
            "service_tier": "standard",
        },
    }
    events: list[tuple[str, bytes]] = [
        ("message_start", compact({"type": "message_start", "message": message})),
        (
            "content_block_start",
            compact(
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": ""},
                }
            ),
        ),
        ("ping", b'{"type": "ping"}'),
    ]
    for word in words(tokens):
        delta = {"type": "text_delta", "text": word}
        events.append(
            (
                "content_block_delta",
                compact({"type": "content_block_delta", "index": 0, "delta": delta}),
            )
        )
    final_usage = {
        "input_tokens": 25,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 100,
        "output_tokens": tokens,
    }
    events += [
        ("content_block_stop", compact({"type": "content_block_stop", "index": 0})),
        (
            "message_delta",
            compact(
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                    "usage": final_usage,
                }
            ),
        ),
        ("message_stop", compact({"type": "message_stop"})),
    ]
    chunks = [sse(data, event=name) for name, data in events]
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    return _shape(
        "anthropic",
        SSE,
        chunks,
        first_token_chunk=3,
        end_chunk=len(chunks) - 1,
        error_chunk=sse(compact(error), event="error"),
        events=len(chunks),
        finish_reasons=("end_turn",),
        input_tokens=125,  # cached input counts, as gen_ai.usage.input_tokens asks
        output_tokens=tokens,
        model=model,
        format=ANTHROPIC,
        operation="chat",
    )


_DECODER = json.JSONDecoder()


def _relayed_spaced(shape: Shape, name: str) -> Shape:
    """``shape`` as a relay writes it when it re-serialises each event with ``json.dumps``
    (``": "`` and ``", "``) and drops the ``event:`` lines: the type is then only in the
    data, after a spaced colon."""

    def respaced(chunk: bytes) -> bytes:
        data = next(line for line in chunk.split(b"\n") if line.startswith(b"data: "))
        # A decoder of its own: the tests count json.loads calls of the readers.
        return sse(spaced(_DECODER.decode(data[len(b"data: ") :].decode())))

    return replace(
        shape,
        name=name,
        chunks=tuple(respaced(chunk) for chunk in shape.chunks),
        error_chunk=respaced(shape.error_chunk),
    )


def anthropic_relayed_spaced(tokens: int = 3) -> Shape:
    """Anthropic's events re-serialised by a relay with ``json.dumps``, no ``event:`` lines."""
    return _relayed_spaced(anthropic(tokens), "anthropic-relayed-spaced")


def openai_responses_relayed_spaced(tokens: int = 3) -> Shape:
    """OpenAI Responses events re-serialised by a relay with ``json.dumps``, no ``event:``."""
    return _relayed_spaced(openai_responses(tokens), "openai-responses-relayed-spaced")


# Ollama's native NDJSON -----------------------------------------------------------------


def ollama_chat(tokens: int = 3) -> Shape:
    """Ollama ``/api/chat``: one JSON object per line, ``created_at`` new on every line,
    the ``done`` line with the reason, durations and counts.

    Source: ollama ``api/types.go`` (``ChatResponse``: ``model``, ``created_at``,
    ``message``, ``done``, then ``done_reason`` and the metrics) and docs/api.md.
    """
    lines = []
    for index, word in enumerate(words(tokens)):
        stamp = f"2025-10-26T17:15:24.{97767 + index * 1137:06d}Z"
        message = {"role": "assistant", "content": word}
        lines.append({"model": "qwen3:8b", "created_at": stamp, "message": message, "done": False})
    lines.append(
        {
            "model": "qwen3:8b",
            "created_at": "2025-10-26T17:15:25.499127Z",
            "message": {"role": "assistant", "content": ""},
            "done_reason": "stop",
            "done": True,
            "total_duration": 4883583458,
            "load_duration": 1334875,
            "prompt_eval_count": 26,
            "prompt_eval_duration": 342546000,
            "eval_count": tokens,
            "eval_duration": 4535599000,
        }
    )
    chunks = [compact(line) + b"\n" for line in lines]
    return _shape(
        "ollama-chat",
        NDJSON,
        chunks,
        first_token_chunk=0,
        end_chunk=len(chunks) - 1,
        error_chunk=b'{"error":"model runner has unexpectedly stopped"}\n',
        events=len(chunks),
        finish_reasons=("stop",),
        input_tokens=26,
        output_tokens=tokens,
        model="qwen3:8b",
        format=OLLAMA,
        operation="chat",
    )


def ollama_generate(tokens: int = 3) -> Shape:
    """Ollama ``/api/generate``: ``response`` deltas; the ``done`` line has ``context``.

    Source: ollama ``api/types.go`` (``GenerateResponse``) and docs/api.md.
    """
    lines = []
    for index, word in enumerate(words(tokens)):
        stamp = f"2025-10-26T17:15:24.{97767 + index * 1137:06d}Z"
        lines.append({"model": "gemma3:4b", "created_at": stamp, "response": word, "done": False})
    lines.append(
        {
            "model": "gemma3:4b",
            "created_at": "2025-10-26T17:15:25.499127Z",
            "response": "",
            "done": True,
            "done_reason": "length",
            "context": list(range(128_000, 128_064)),
            "total_duration": 10706818083,
            "load_duration": 6338219291,
            "prompt_eval_count": 26,
            "prompt_eval_duration": 130079000,
            "eval_count": tokens,
            "eval_duration": 4232710000,
        }
    )
    chunks = [compact(line) + b"\n" for line in lines]
    return _shape(
        "ollama-generate",
        NDJSON,
        chunks,
        first_token_chunk=0,
        end_chunk=len(chunks) - 1,
        error_chunk=b'{"error":"an error was encountered while running the model"}\n',
        events=len(chunks),
        finish_reasons=("length",),
        input_tokens=26,
        output_tokens=tokens,
        model="gemma3:4b",
        format=OLLAMA,
        operation="text_completion",
    )


#: Every shape, by name, in the order the benchmark prints them.
SHAPES: dict[str, Callable[[int], Shape]] = {
    shape(1).name: shape
    for shape in (
        openai_chat,
        azure_openai,
        vllm,
        vllm_completions,
        sglang,
        tgi,
        llama_cpp,
        ollama_openai,
        gateway_without_nulls,
        app_json_dumps,
        sse_starlette_crlf,
        several_events_per_chunk,
        openai_responses,
        anthropic,
        anthropic_relayed_spaced,
        openai_responses_relayed_spaced,
        ollama_chat,
        ollama_generate,
    )
}
