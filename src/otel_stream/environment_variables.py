"""Every environment variable otel-stream reads (docs/configuration.md describes each)."""

OTEL_STREAM_ENABLED = "OTEL_STREAM_ENABLED"
"""``true`` instruments the process without a code change; ``false`` turns every
otel-stream middleware in the process into a pass-through."""

OTEL_STREAM_EXCLUDED_URLS = "OTEL_STREAM_EXCLUDED_URLS"
"""Comma-separated regular expressions searched in the request URL; falls back to
``OTEL_PYTHON_EXCLUDED_URLS``."""

OTEL_STREAM_TTFB_BUCKETS = "OTEL_STREAM_TTFB_BUCKETS"
"""Boundaries (seconds, comma-separated) of time to first byte and time to first token."""

OTEL_STREAM_DURATION_BUCKETS = "OTEL_STREAM_DURATION_BUCKETS"
"""Boundaries (seconds) of the stream duration histogram."""

OTEL_STREAM_GAP_BUCKETS = "OTEL_STREAM_GAP_BUCKETS"
"""Boundaries (seconds) of the max chunk gap and send wait histograms."""

OTEL_STREAM_CHUNKS_BUCKETS = "OTEL_STREAM_CHUNKS_BUCKETS"
"""Boundaries of the chunks-per-stream histogram."""

OTEL_STREAM_BODY_SIZE_BUCKETS = "OTEL_STREAM_BODY_SIZE_BUCKETS"
"""Boundaries (bytes) of the body size histogram."""

OTEL_STREAM_TIME_PER_OUTPUT_TOKEN_BUCKETS = "OTEL_STREAM_TIME_PER_OUTPUT_TOKEN_BUCKETS"
"""Boundaries (seconds) of the time per output token histogram."""

OTEL_STREAM_PAYLOADS = "OTEL_STREAM_PAYLOADS"
"""``false`` turns off reading SSE/NDJSON payloads (first token, finish reason, usage)."""

OTEL_STREAM_PAYLOAD_MAX_EVENT_BYTES = "OTEL_STREAM_PAYLOAD_MAX_EVENT_BYTES"
"""Largest unfinished event kept between body chunks while reading payloads (bytes)."""

OTEL_STREAM_ACCEL_BUFFERING_HEADER = "OTEL_STREAM_ACCEL_BUFFERING_HEADER"
"""``true`` adds ``X-Accel-Buffering: no`` to streaming responses that lack it."""

OTEL_STREAM_CANCEL_ON_DISCONNECT = "OTEL_STREAM_CANCEL_ON_DISCONNECT"
"""``true`` cancels the app's work when the client disconnects."""

OTEL_STREAM_SHUTDOWN_FLUSH_TIMEOUT = "OTEL_STREAM_SHUTDOWN_FLUSH_TIMEOUT"
"""Seconds allowed for flushing telemetry when the server shuts down."""
