"""Whether an SSE chunk carries an event: what decides the first byte of an SSE stream."""

from __future__ import annotations

_LINE_ENDS = (b"\n", b"\r")
_BOM = b"\xef\xbb\xbf"
_DATA = b"data"
_DATA_FIELD = b"data:"


def sse_chunk_has_event(body: bytes) -> bool:
    """False when an SSE chunk holds only comments (``: ping``) or fields other than data."""
    if not body.endswith(_LINE_ENDS):
        return True  # an unfinished line may be the start of a data field
    body = body.removeprefix(_BOM)  # a stream may begin with a byte order mark
    return any(line == _DATA or line.startswith(_DATA_FIELD) for line in body.splitlines())
