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
* **After the first token, an OpenAI chat event is decoded only if it can matter.**
  ``chat`` decides with byte scans that do not depend on the encoder's spelling: every
  ``"finish_reason"`` must be followed by ``:null`` or ``: null`` (or be absent, as
  gateways that leave nulls out write it), every ``"usage"`` likewise, and ``"error"``
  must not occur. Such an event is only counted. Anthropic and Responses text deltas
  are recognised by their leading ``type``, an Ollama line by its trailing
  ``"done":false}``. (Once the first token is known, the framing stops handing events
  over one by one and reads only the end of the stream: see ``framing``.)
* **What is not read, on purpose.** Two things the scans can miss, each tested: an
  Ollama line that ends ``"done":false}`` but carries an ``error`` key (Ollama reports
  errors in a line of their own, ``{"error": ...}``); and a model named only in events
  read after the first token (see the next point).
* **The model is read once.** ``model`` is taken from the first decoded event that
  names one (OpenAI chunks and Ollama lines: ``model``; Anthropic: ``message_start``'s
  ``message.model``; Responses: ``response.model``), never from a decode made for it:
  the first event of every stream is decoded to recognise its format, and it names the
  model in every format but Azure's prompt-filter chunk (whose ``model`` is empty, so
  the next decoded chunk names it). Values outside ``[A-Za-z0-9_.:/@+-]{1,128}`` read
  ``_OTHER``.
* **Operation names** (``operation``, for ``gen_ai.operation.name``): ``chat`` for chat
  completions, Anthropic messages and Ollama ``/api/chat``; ``text_completion`` for
  legacy completions (``object: text_completion`` or ``choices[].text``) and Ollama
  ``/api/generate``; ``chat`` for the Responses API too, as the GenAI conventions have
  no separate name for it.
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

#: ``gen_ai.operation.name`` values.
CHAT = "chat"
TEXT_COMPLETION = "text_completion"
#: What a reason or model name outside the safe characters reads.
OTHER = "_OTHER"

#: Events read without recognising a format before the interpreter only counts.
MAX_UNRECOGNISED_EVENTS = 32
#: Distinct choices whose finish reason is kept.
MAX_CHOICES = 64

_SAFE_REASON = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_SAFE_MODEL = re.compile(r"[A-Za-z0-9_.:/@+\-]{1,128}")
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

# Byte patterns of the prefilters. ``bytes.rfind`` rather than ``in``: on bytes, ``in``
# first tries the needle as an integer and pays for the failed conversion every time.
_DONE = b"[DONE]"
_CHOICES = b'"choices"'
_TYPE = b'"type"'
_DONE_KEY = b'"done"'
_FINISH_REASON = b'"finish_reason"'
_USAGE = b'"usage"'
_NULL_VALUES = (b":null", b": null")
_ERROR = b'"error"'
_TYPE_ERROR = re.compile(rb'"type"\s*:\s*"error"')
_DELTA_TYPE_END = b'.delta"'
_MESSAGE_TYPE = b'"message_'
_RESPONSES_ENDS = (b'"response.completed"', b'"response.incomplete"', b'"response.failed"')
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
_MODEL_VALUE = re.compile(rb'"model"\s*:\s*"([^"\\]{1,128})"')
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


def _non_null(data: bytes, key: bytes) -> bool:
    """Whether ``key`` occurs followed by anything but ``:null`` / ``: null``."""
    after = len(key)
    at = data.rfind(key)
    while at >= 0:
        if not data.startswith(_NULL_VALUES, at + after):
            return True
        at = data.rfind(key, 0, at)
    return False


def chat_may_matter(data: bytes) -> bool:
    """Whether a chat event read after the first token may change the summary.

    False only when no finish reason or usage other than null and no error key is in
    it, whatever the encoder's spelling (``:`` or ``: ``, nulls written or left out).
    """
    return _non_null(data, _FINISH_REASON) or _non_null(data, _USAGE) or data.rfind(_ERROR) >= 0


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
    if head.find(_CHOICES) >= 0:
        return OPENAI_CHAT
    kind = _first(_EVENT_FIELD, head) or _first(_TYPE_VALUE, head)
    if kind is not None:
        if kind.startswith("response."):
            return OPENAI_RESPONSES
        if kind in _ANTHROPIC_TYPES:
            return ANTHROPIC
    if head.find(_DONE_KEY) >= 0 and (
        head.find(b'"message"') >= 0 or head.find(b'"response"') >= 0
    ):
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


def _chat_operation(obj: dict[str, Any], choices: list[Any]) -> str | None:
    """``chat`` or ``text_completion`` for a chat-completions-style chunk, if it tells."""
    kind = obj.get("object")
    if kind == "text_completion":
        return TEXT_COMPLETION
    if isinstance(kind, str) and kind.startswith("chat.completion"):
        return CHAT
    for choice in choices:
        if isinstance(choice, dict):
            if "delta" in choice:
                return CHAT
            if "text" in choice:
                return TEXT_COMPLETION
    return None


class Interpreter:
    """Reads the events of one stream; feed them to ``handle``, then call ``summary``.

    Args:
        clock: The clock whose value marks the first token.
    """

    __slots__ = (
        "clock",
        "ended",
        "error",
        "events",
        "first_token_at",
        "format",
        "handle",
        "input_tokens",
        "model",
        "operation",
        "output_tokens",
        "reasons",
        "unrecognised",
    )

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.format: str | None = None
        self.operation: str | None = None
        self.model: str | None = None
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
            model=self.model,
            operation=self.operation if self.operation is not None or self.format is None else CHAT,
        )

    # Shared bookkeeping ----------------------------------------------------------------

    def token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = self.clock()

    def reason(self, index: int, value: object) -> None:
        if index in self.reasons or len(self.reasons) >= MAX_CHOICES:
            return
        safe = isinstance(value, str) and _SAFE_REASON.fullmatch(value) is not None
        self.reasons[index] = value if safe and isinstance(value, str) else OTHER

    def name_model(self, value: object) -> None:
        """Keep the first model name the payload gives (an empty one names nothing)."""
        if self.model is None and isinstance(value, str) and value:
            self.model = value if _SAFE_MODEL.fullmatch(value) is not None else OTHER

    def usage(self, input_tokens: object, output_tokens: object) -> None:
        if (count := _tokens(input_tokens)) is not None:
            self.input_tokens = count
        if (count := _tokens(output_tokens)) is not None:
            self.output_tokens = count

    def recognise(self, name: str) -> Callable[[Any], None]:
        """Switch to the format ``name``; returns its decoded-event method."""
        self.format = name
        if name == OPENAI_CHAT:
            self.handle = self.chat
            return self.chat_object
        if name == OPENAI_RESPONSES:
            self.handle = self.responses
            return self.responses_object
        if name == ANTHROPIC:
            self.handle = self.anthropic
            return self.anthropic_object
        self.handle = self.ollama
        return self.ollama_object

    # Before a format is known ----------------------------------------------------------

    def detect(self, data: bytes) -> None:
        self.events += 1
        if data.startswith(_DONE):
            self.recognise(OPENAI_CHAT)
            self.ended = True
            return
        if data.rfind(_CHOICES) >= 0 or data.rfind(_TYPE) >= 0 or data.rfind(_DONE_KEY) >= 0:
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
        if self.model is None:
            self.name_model(_first(_MODEL_VALUE, head))
        if name == OPENAI_CHAT:
            if head.find(b'"delta"') >= 0 or head.find(b'"text"') >= 0:
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
            elif head.find(b'"content"') >= 0 or head.find(b'"response"') >= 0:
                self.token()

    # OpenAI chat completions (and legacy completions) ----------------------------------

    def chat(self, data: bytes) -> None:
        self.events += 1
        if data.startswith(_DONE):
            self.ended = True
        elif self.first_token_at is None or chat_may_matter(data):
            self.chat_object(_loads(data))

    def chat_object(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if self.model is None:
            self.name_model(obj.get("model"))
        choices = obj.get("choices")
        if isinstance(choices, list):
            if self.operation is None:
                self.operation = _chat_operation(obj, choices)
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
            if data.rfind(_DELTA_TYPE_END) < 0 and not _responses_may_end(data):
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
        if self.operation is None:
            self.operation = CHAT
        if kind.endswith(".delta"):
            if _text(obj.get("delta")):
                self.token()
            return
        if kind == "error":
            self.error = True
            return
        response = obj.get("response")
        if not isinstance(response, dict):
            response = {}
        if self.model is None:
            self.name_model(response.get("model"))
        if kind in _RESPONSES_TERMINAL:
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
        elif data.rfind(_MESSAGE_TYPE) < 0 and data.rfind(_ERROR) < 0:
            return
        self.anthropic_object(_loads(data))

    def anthropic_object(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if self.operation is None:
            self.operation = CHAT
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
                if self.model is None:
                    self.name_model(message.get("model"))
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
            or (_OLLAMA_DONE_SET.search(data) is None and data.rfind(_ERROR) < 0)
        ):
            return
        self.ollama_object(_loads(data))

    def ollama_object(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        if self.model is None:
            self.name_model(obj.get("model"))
        message = obj.get("message")
        if self.operation is None:
            if isinstance(message, dict):
                self.operation = CHAT
            elif "response" in obj:
                self.operation = TEXT_COMPLETION
        if self.first_token_at is None:
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


def _responses_may_end(data: bytes) -> bool:
    """Whether a Responses event can be terminal or an error."""
    for marker in _RESPONSES_ENDS:
        if data.rfind(marker) >= 0:
            return True
    return data.rfind(_ERROR) >= 0 and _TYPE_ERROR.search(data) is not None
