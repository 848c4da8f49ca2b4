"""What a payload reader learned from one stream."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PayloadSummary:
    """What a reader learned from one stream. Message content is never kept."""

    #: Data events (SSE) or non-blank lines (NDJSON) read, including oversized ones; after
    #: the first token, counted from line ends (exact when every event has the same
    #: lines, see ``framing``).
    events: int = 0
    #: Clock value (the reader's clock) of the first event carrying generated content.
    first_token_at: float | None = None
    #: Finish/stop reasons, one per generated choice (by choice index), then ``error`` if
    #: the payload reported an error. Values outside ``[A-Za-z0-9_.-]{1,64}`` read
    #: ``_OTHER``, so they stay low-cardinality and can never carry content.
    finish_reasons: tuple[str, ...] = ()
    input_tokens: int | None = None
    output_tokens: int | None = None
    #: True when a format with an end marker was recognised and the marker never came.
    truncated: bool = False
    #: The recognised wire format (``openai.chat_completions``, ``openai.responses``,
    #: ``anthropic.messages``, ``ollama``), or None.
    format: str | None = None
    #: The model the payload says answered (its first mention), for
    #: ``gen_ai.response.model``. Values outside ``[A-Za-z0-9_.:/@+-]{1,128}`` read
    #: ``_OTHER``; None when no event named one.
    model: str | None = None
    #: ``gen_ai.operation.name`` for the recognised format: ``chat`` (chat completions,
    #: Responses, Anthropic messages, Ollama ``/api/chat``) or ``text_completion``
    #: (legacy completions, Ollama ``/api/generate``); None when no format was recognised.
    operation: str | None = None
