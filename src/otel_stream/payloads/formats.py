"""What the common LLM wire formats say about a stream: first token, reasons, usage, end.

``Interpreter.handle`` receives the data of every event (SSE) or every line (NDJSON).
Until a format is recognised it is ``detect``; afterwards it is the method of that
format, so each event costs one call and the checks of one format.

Choices made on purpose (read before "fixing"):

* **Byte scans decide what gets decoded.** This runs for every event of every stream,
  and ``json.loads`` costs far more than ``bytes.find``. An event is decoded only when
  it can change the summary: before the first token, or when a scan finds what a
  finish reason, usage, an end marker or an error looks like. The scans may say "yes"
  wrongly (the words occur in generated text: one wasted decode) but never "no"
  wrongly: inside a JSON string every ``"`` is escaped, so ``"finish_reason"``
  followed by ``:`` only occurs as a key, and keys are checked with optional
  whitespace around the colon (``json.dumps`` writes ``": "``). Encoders that escape
  plain ASCII letters in keys (``"\\u0064one"``) are not supported.
* **Plain deltas cost three scans.** Once the first token is known, the events that
  make up nearly all of a stream are recognised without decoding: an Anthropic or
  Responses text delta by its leading ``type``, an Ollama line by its trailing
  ``"done":false}``, an OpenAI chunk when its last ``"finish_reason"`` is null and its
  only object value is the choice's ``delta`` (one ``":{``), which leaves no room for a
  second choice, a usage or an error object. This assumes a chunk is written by one JSON
  encoder, so its object values are all spelled ``":{`` or all ``": {``, and that
  Ollama reports an error in a line of its own (``{"error": ...}``), as it does.
* **Native reason values.** Finish reasons are passed on as each format names them
  (``stop``, ``end_turn``, ``max_tokens``...), except that anything outside
  ``[A-Za-z0-9_.-]{1,64}`` becomes ``_OTHER``: the first reason is a metric attribute,
  so it must stay low-cardinality and can never carry content. The Responses API has
  no finish reason: its status (``completed``, ``failed``) or the
  ``incomplete_details.reason`` of an incomplete response stands in.
* **Errors reported in the payload** (an ``error`` event or object) add the reason
  ``error`` and are not end markers: the answer the user got is truncated. For the same
  reason ``response.failed`` is not an end marker, while ``response.incomplete`` is
  (the model stopped at a limit, like ``finish_reason: length``).
* **Oversized events** (more than ``max_event_bytes``) are never decoded; only their
  first and last few KiB are scanned with regular expressions, so a huge
  ``response.completed`` (it repeats the whole answer) or Ollama's final line with a
  long ``context`` still ends the stream and reports usage.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from otel_stream.payloads.summary import PayloadSummary

OPENAI_CHAT = "openai.chat_completions"
OPENAI_RESPONSES = "openai.responses"
ANTHROPIC = "anthropic.messages"
OLLAMA = "ollama"

#: Events read without recognising a format before the interpreter only counts.
MAX_UNRECOGNISED_EVENTS = 32
#: Distinct choices whose finish reason is kept.
MAX_CHOICES = 64

_SAFE_REASON = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_ANTHROPIC_TYPES = frozenset(
    {
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    }
)
_RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})

# Byte patterns of the prefilters.
_DONE = b"[DONE]"
_FINISH_REASON = b'"finish_reason"'
_FINISH_REASON_KEY = b'"finish_reason":'
_FINISH_REASON_NULL = b'"finish_reason":null'
_FINISH_REASON_SET = re.compile(rb'"finish_reason"\s*:\s*[^\sn]')
_USAGE = b'"usage"'
_USAGE_NULL = b'"usage":null'
_USAGE_SET = re.compile(rb'"usage"\s*:\s*[^\sn]')
_ERROR = b'"error"'
_TYPE_ERROR = re.compile(rb'"type"\s*:\s*"error"')
_RESPONSES_TEXT_DELTA = (
    b'{"type":"response.output_text.delta"',
    b'{"type": "response.output_text.delta"',
)
_ANTHROPIC_TEXT_DELTA = (b'{"type":"content_block_delta"', b'{"type": "content_block_delta"')
_OLLAMA_NOT_DONE = (b'"done":false}', b'"done": false}')
_OLLAMA_DONE_SET = re.compile(rb'"done"\s*:\s*[^\sf]')

# Regular expressions for the first and last bytes of oversized events.
_TYPE_VALUE = re.compile(rb'"type"\s*:\s*"([A-Za-z0-9_.\-]{1,64})"')
_EVENT_FIELD = re.compile(rb"(?:^|\n)event: ?([A-Za-z0-9_.\-]{1,64})\n")
_DONE_VALUE = re.compile(rb'"done"\s*:\s*(true|false)')
_FINISH_REASON_VALUE = re.compile(rb'"finish_reason"\s*:\s*"([^"\\]{1,64})"')
_DONE_REASON_VALUE = re.compile(rb'"done_reason"\s*:\s*"([^"\\]{1,64})"')
_REASON_VALUE = re.compile(rb'"reason"\s*:\s*"([^"\\]{1,64})"')
_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d{1,18})')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d{1,18})')
_INPUT_TOKENS = re.compile(rb'"input_tokens"\s*:\s*(\d{1,18})')
_OUTPUT_TOKENS = re.compile(rb'"output_tokens"\s*:\s*(\d{1,18})')
_PROMPT_EVAL_COUNT = re.compile(rb'"prompt_eval_count"\s*:\s*(\d{1,18})')
_EVAL_COUNT = re.compile(rb'"eval_count"\s*:\s*(\d{1,18})')


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def _has_value(data: bytes, key: bytes, key_null: bytes, key_set: re.Pattern[bytes]) -> bool:
    """Whether ``key`` occurs as a JSON key with a value other than null."""
    occurrences = data.count(key)
    if not occurrences or occurrences == data.count(key_null):
        return False
    return key_set.search(data) is not None


def _text(value: object) -> bool:
    """A non-empty string: generated text."""
    return isinstance(value, str) and value != ""


def _tokens(value: object) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _first(pattern: re.Pattern[bytes], *texts: bytes) -> str | None:
    for text in texts:
        match = pattern.search(text)
        if match is not None:
            return match.group(1).decode("ascii", "replace")
    return None


def _last_int(pattern: re.Pattern[bytes], text: bytes) -> int | None:
    found = pattern.findall(text)
    return int(found[-1]) if found else None


def format_of(obj: Any) -> str | None:
    """The format a decoded event belongs to, or None."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("choices"), list):
        return OPENAI_CHAT
    kind = obj.get("type")
    if isinstance(kind, str):
        if kind.startswith("response."):
            return OPENAI_RESPONSES
        if kind in _ANTHROPIC_TYPES:
            return ANTHROPIC
    if isinstance(obj.get("done"), bool) and ("message" in obj or "response" in obj):
        return OLLAMA
    return None


def _format_of_bytes(head: bytes) -> str | None:
    """The format of an oversized event, from its first bytes."""
    if b'"choices"' in head:
        return OPENAI_CHAT
    kind = _first(_EVENT_FIELD, head) or _first(_TYPE_VALUE, head)
    if kind is not None:
        if kind.startswith("response."):
            return OPENAI_RESPONSES
        if kind in _ANTHROPIC_TYPES:
            return ANTHROPIC
    if b'"done"' in head and (b'"message"' in head or b'"response"' in head):
        return OLLAMA
    return None


def _chat_choice_has_content(choice: dict[str, Any]) -> bool:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        return bool(
            _text(delta.get("content"))
            or _text(delta.get("refusal"))
            or _text(delta.get("reasoning_content"))
            or _text(delta.get("reasoning"))
            or (isinstance(delta.get("tool_calls"), list) and delta["tool_calls"])
            or (isinstance(delta.get("function_call"), dict) and delta["function_call"])
        )
    return _text(choice.get("text"))  # legacy completions


class Interpreter:
    """Reads the events of one stream; feed them to ``handle``, then call ``summary``.

    Args:
        clock: The clock whose value marks the first token.
    """

    __slots__ = (
        "chat_after_token",
        "clock",
        "ended",
        "error",
        "events",
        "first_token_at",
        "format",
        "handle",
        "input_tokens",
        "output_tokens",
        "reasons",
        "unrecognised",
    )

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.format: str | None = None
        self.events = 0
        self.unrecognised = 0
        self.first_token_at: float | None = None
        self.reasons: dict[int, str] = {}
        self.error = False
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.ended = False
        #: Called with the data of every event; replaced once the format is known.
        self.handle: Callable[[bytes], None] = self.detect
        #: OpenAI chat completions with the first token read: readers may count a plain
        #: delta themselves (``is_plain_chat_delta``) instead of calling ``handle``.
        self.chat_after_token = False

    def summary(self) -> PayloadSummary:
        reasons = tuple(self.reasons[index] for index in sorted(self.reasons))
        if self.error:
            reasons += ("error",)
        return PayloadSummary(
            events=self.events,
            first_token_at=self.first_token_at,
            finish_reasons=reasons,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            truncated=self.format is not None and not self.ended,
            format=self.format,
        )

    # Shared bookkeeping ----------------------------------------------------------------

    def token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = self.clock()
            self.chat_after_token = self.format == OPENAI_CHAT

    def reason(self, index: int, value: object) -> None:
        if index in self.reasons or len(self.reasons) >= MAX_CHOICES:
            return
        safe = isinstance(value, str) and _SAFE_REASON.fullmatch(value) is not None
        self.reasons[index] = value if safe and isinstance(value, str) else "_OTHER"

    def usage(self, input_tokens: object, output_tokens: object) -> None:
        if (count := _tokens(input_tokens)) is not None:
            self.input_tokens = count
        if (count := _tokens(output_tokens)) is not None:
            self.output_tokens = count

    def recognise(self, name: str) -> Callable[[Any], None]:
        """Switch to the format ``name``; returns its decoded-event method."""
        self.format = name
        self.chat_after_token = name == OPENAI_CHAT and self.first_token_at is not None
        handle, apply = {
            OPENAI_CHAT: (self.chat, self.chat_object),
            OPENAI_RESPONSES: (self.responses, self.responses_object),
            ANTHROPIC: (self.anthropic, self.anthropic_object),
            OLLAMA: (self.ollama, self.ollama_object),
        }[name]
        self.handle = handle
        return apply

    # Before a format is known ----------------------------------------------------------

    def detect(self, data: bytes) -> None:
        self.events += 1
        if data.startswith(_DONE):
            self.recognise(OPENAI_CHAT)
            self.ended = True
            return
        if b'"choices"' in data or b'"type"' in data or b'"done"' in data:
            obj = _loads(data)
            name = format_of(obj)
            if name is not None:
                self.recognise(name)(obj)
                return
        self.unrecognised += 1
        if self.unrecognised >= MAX_UNRECOGNISED_EVENTS:
            self.handle = self.count

    def count(self, data: bytes) -> None:
        self.events += 1

    def oversized(self, head: bytes, tail: bytes) -> None:
        """An event too large to decode: ``head`` and ``tail`` are its first/last bytes."""
        self.events += 1
        name = self.format
        if name is None:
            if self.handle == self.count:
                return
            name = _format_of_bytes(head)
            if name is None:
                self.unrecognised += 1
                return
            self.recognise(name)
        if name == OPENAI_CHAT:
            if b'"delta"' in head or b'"text"' in head:
                self.token()
            finish_reason = _first(_FINISH_REASON_VALUE, tail)
            if finish_reason is not None:
                self.reason(0, finish_reason)
            self.usage(_last_int(_PROMPT_TOKENS, tail), _last_int(_COMPLETION_TOKENS, tail))
        elif name == OPENAI_RESPONSES:
            kind = _first(_EVENT_FIELD, head) or _first(_TYPE_VALUE, head) or ""
            if kind.endswith(".delta"):
                self.token()
            elif kind == "error":
                self.error = True
            elif kind in _RESPONSES_TERMINAL:
                self.usage(_last_int(_INPUT_TOKENS, tail), _last_int(_OUTPUT_TOKENS, tail))
                if kind == "response.incomplete":
                    self.ended = True
                    self.reason(0, _first(_REASON_VALUE, head) or "incomplete")
                else:
                    self.ended = self.ended or kind == "response.completed"
                    self.reason(0, kind.removeprefix("response."))
        elif name == ANTHROPIC:
            if (_first(_EVENT_FIELD, head) or _first(_TYPE_VALUE, head)) == "content_block_delta":
                self.token()
        else:
            done = _first(_DONE_VALUE, head, tail)
            if done == "true":
                self.ended = True
                done_reason = _first(_DONE_REASON_VALUE, head, tail)
                if done_reason is not None:
                    self.reason(0, done_reason)
                self.usage(_last_int(_PROMPT_EVAL_COUNT, tail), _last_int(_EVAL_COUNT, tail))
            elif b'"content"' in head or b'"response"' in head:
                self.token()

    # OpenAI chat completions (and legacy completions) ----------------------------------

    def chat(self, data: bytes) -> None:
        self.events += 1
        if self.first_token_at is not None and is_plain_chat_delta(data):
            return
        if data.startswith(_DONE):
            self.ended = True
        elif (
            self.first_token_at is None
            or _has_value(data, _FINISH_REASON, _FINISH_REASON_NULL, _FINISH_REASON_SET)
            or _has_value(data, _USAGE, _USAGE_NULL, _USAGE_SET)
            or _ERROR in data
        ):
            self.chat_object(_loads(data))

    def chat_object(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        choices = obj.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                if self.first_token_at is None and _chat_choice_has_content(choice):
                    self.token()
                finish_reason = choice.get("finish_reason")
                if finish_reason is not None:
                    index = choice.get("index")
                    self.reason(index if type(index) is int else 0, finish_reason)
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.usage(usage.get("prompt_tokens"), usage.get("completion_tokens"))
        if obj.get("error") is not None:
            self.error = True

    # OpenAI Responses ------------------------------------------------------------------

    def responses(self, data: bytes) -> None:
        self.events += 1
        if self.first_token_at is None:
            if b'.delta"' not in data and not _responses_may_end(data):
                return
        elif data.startswith(_RESPONSES_TEXT_DELTA) or not _responses_may_end(data):
            return
        self.responses_object(_loads(data))

    def responses_object(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        kind = obj.get("type")
        if not isinstance(kind, str):
            return
        if kind.endswith(".delta"):
            if _text(obj.get("delta")):
                self.token()
        elif kind == "error":
            self.error = True
        elif kind in _RESPONSES_TERMINAL:
            response = obj.get("response")
            if not isinstance(response, dict):
                response = {}
            usage = response.get("usage")
            if isinstance(usage, dict):
                self.usage(usage.get("input_tokens"), usage.get("output_tokens"))
            if kind == "response.incomplete":
                self.ended = True
                details = response.get("incomplete_details")
                reason = details.get("reason") if isinstance(details, dict) else None
                self.reason(0, reason if isinstance(reason, str) else "incomplete")
            else:
                self.ended = self.ended or kind == "response.completed"
                self.reason(0, kind.removeprefix("response."))

    # Anthropic messages ----------------------------------------------------------------

    def anthropic(self, data: bytes) -> None:
        self.events += 1
        if data.startswith(_ANTHROPIC_TEXT_DELTA):
            if self.first_token_at is not None:
                return
        elif b'"message_' not in data and _ERROR not in data:
            return
        self.anthropic_object(_loads(data))

    def anthropic_object(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        kind = obj.get("type")
        if kind == "content_block_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and (
                _text(delta.get("text"))
                or _text(delta.get("partial_json"))
                or _text(delta.get("thinking"))
            ):
                self.token()
        elif kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                self.anthropic_usage(message.get("usage"), with_output=False)
        elif kind == "message_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason") is not None:
                self.reason(0, delta["stop_reason"])
            self.anthropic_usage(obj.get("usage"), with_output=True)
        elif kind == "message_stop":
            self.ended = True
        elif kind == "error":
            self.error = True

    def anthropic_usage(self, usage: object, *, with_output: bool) -> None:
        """Anthropic counts cached input apart; ``gen_ai.usage.input_tokens`` includes it."""
        if not isinstance(usage, dict):
            return
        input_tokens = _tokens(usage.get("input_tokens"))
        if input_tokens is not None:
            for key in ("cache_creation_input_tokens", "cache_read_input_tokens"):
                input_tokens += _tokens(usage.get(key)) or 0
        self.usage(input_tokens, usage.get("output_tokens") if with_output else None)

    # Ollama ----------------------------------------------------------------------------

    def ollama(self, data: bytes) -> None:
        self.events += 1
        if self.first_token_at is not None and (
            data.endswith(_OLLAMA_NOT_DONE)
            or (_OLLAMA_DONE_SET.search(data) is None and _ERROR not in data)
        ):
            return
        self.ollama_object(_loads(data))

    def ollama_object(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if self.first_token_at is None:
            message = obj.get("message")
            if isinstance(message, dict):
                if (
                    _text(message.get("content"))
                    or _text(message.get("thinking"))
                    or (isinstance(message.get("tool_calls"), list) and message["tool_calls"])
                ):
                    self.token()
            elif _text(obj.get("response")) or _text(obj.get("thinking")):
                self.token()
        if obj.get("done") is True:
            self.ended = True
            if obj.get("done_reason") is not None:
                self.reason(0, obj["done_reason"])
            self.usage(obj.get("prompt_eval_count"), obj.get("eval_count"))
        if obj.get("error") is not None:
            self.error = True


def is_plain_chat_delta(data: bytes) -> bool:
    """A chat chunk that cannot change the summary once the first token is known.

    Its last finish reason is null, and the only object value in it is that choice's
    delta, so there is no other choice, no usage and no error object. ``data`` may also be
    a whole one-line SSE event (``data: {...}\n\n``): the framing holds neither pattern.
    rfind: the finish reason is near the end.
    """
    at = data.rfind(_FINISH_REASON_KEY)
    if at < 0:
        return False
    if data.startswith(b"null", at + 16):
        return data.count(b'":{') == 1
    return data.startswith(b" null", at + 16) and data.count(b'": {') == 1  # json.dumps


def _responses_may_end(data: bytes) -> bool:
    """Whether a Responses event can be terminal or an error."""
    return (
        b'"response.completed"' in data
        or b'"response.incomplete"' in data
        or b'"response.failed"' in data
        or (_ERROR in data and _TYPE_ERROR.search(data) is not None)
    )
