"""A raw HTTP/1.1 client over a socket, for closing a connection at an exact moment."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from urllib.parse import urlsplit


def open_request(
    url: str, method: str = "GET", headers: dict[str, str] | None = None
) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=5)
    lines = [f"{method} {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    return sock


def read_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    """Read until ``marker`` has arrived; returns everything read."""
    received = b""
    deadline = time.monotonic() + timeout
    while marker not in received:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before {marker!r}; got {received!r}")
        received += chunk
    return received


def abort(sock: socket.socket) -> None:
    """Close at once (RST-free close; the server sees EOF)."""
    sock.close()


def read_slowly(url: str, stall: float, at_stall_end: Callable[[], None] | None = None) -> int:
    """A slow reader: a 4 KiB receive buffer, nothing read for ``stall`` seconds, then
    4 KiB at a time until the server closes (``Connection: close``). ``at_stall_end``
    runs when the stall ends, before the first read. Returns the bytes read."""
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect((host, parts.port or 80))
        request = f"GET {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close"
        sock.sendall((request + "\r\n\r\n").encode())
        time.sleep(stall)
        if at_stall_end is not None:
            at_stall_end()
        total = 0
        while data := sock.recv(4096):
            total += len(data)
    return total
