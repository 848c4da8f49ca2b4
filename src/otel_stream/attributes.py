"""Attribute names: the stable HTTP semantic conventions, the GenAI ones, and otel-stream's."""

from __future__ import annotations

from typing import Final

# HTTP semantic conventions (stable).
HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_ROUTE: Final = "http.route"
HTTP_RESPONSE_STATUS_CODE: Final = "http.response.status_code"
URL_SCHEME: Final = "url.scheme"
URL_QUERY: Final = "url.query"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
NETWORK_PROTOCOL_VERSION: Final = "network.protocol.version"
ERROR_TYPE: Final = "error.type"

# otel-stream.
TERMINATION_REASON: Final = "http.stream.termination_reason"
PHASE: Final = "http.stream.phase"
STREAM_CHUNKS: Final = "http.stream.chunks"
STREAM_BYTES: Final = "http.stream.bytes"
STREAM_MAX_CHUNK_GAP: Final = "http.stream.max_chunk_gap"
STREAM_SEND_WAIT: Final = "http.stream.send_wait"
STREAM_TIME_TO_FIRST_BYTE: Final = "http.stream.time_to_first_byte"
STREAM_TIME_TO_FIRST_RAW_BYTE: Final = "http.stream.time_to_first_raw_byte"
STREAM_EVENTS: Final = "http.stream.events"
STREAM_TIME_TO_FIRST_TOKEN: Final = "http.stream.time_to_first_token"
STREAM_UPSTREAM_TIME_TO_FIRST_BYTE: Final = "http.stream.upstream.time_to_first_byte"

# GenAI semantic conventions (development).
GEN_AI_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_FINISH_REASON: Final = "gen_ai.response.finish_reason"
GEN_AI_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
GEN_AI_TIME_TO_FIRST_CHUNK: Final = "gen_ai.response.time_to_first_chunk"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
