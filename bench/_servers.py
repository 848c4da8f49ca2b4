"""What the benchmark scripts share: starting a process in a process group of its own,
waiting for a server to accept connections, and stopping the whole group.

Choices made on purpose: every process a benchmark starts leads a new session
(``start_new_session=True``) and is stopped with ``os.killpg``, so a server that forks
workers (or a worker that outlives its parent) never keeps a loopback port after the run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from typing import Any


def start(argv: Sequence[str], **options: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(argv, **options)`` as the leader of a process group of its own."""
    return subprocess.Popen(list(argv), start_new_session=True, **options)


def stop(
    process: subprocess.Popen[Any], timeout: float = 10.0, first: int = signal.SIGTERM
) -> None:
    """Send ``first`` to the process's whole group, SIGKILL whatever is left after
    ``timeout`` (or once the leader has exited)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, first)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout)
    with contextlib.suppress(ProcessLookupError):  # the leader's children, if any remain
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(5)


def wait_ready(process: subprocess.Popen[Any], port: int, timeout: float = 30.0) -> None:
    """Return once ``process`` accepts connections on ``port``; raise if it exits or stalls."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")
